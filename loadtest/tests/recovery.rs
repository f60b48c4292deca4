//! Recovery mode (`--drop-every`) against real nodes started in this process: subscribers
//! drop their connections on a schedule, resubscribe with `since`, and the report proves
//! (by offset) that nothing was lost, duplicated or reordered.

use std::time::Duration;

use herald_loadtest::{run, Config, Report};
use herald_testkit::node::TestNode;

fn config(args: &[&str]) -> Config {
    let mut argv = vec!["herald-loadtest"];
    argv.extend_from_slice(args);
    argv.push("--quiet");
    Config::from_args(argv).expect("valid arguments")
}

async fn run_ok(cfg: Config) -> Report {
    let report = tokio::time::timeout(Duration::from_secs(60), run(cfg, Default::default()))
        .await
        .expect("the run stops by itself")
        .expect("the run succeeds");
    eprintln!("{}", report.render());
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_without_history_are_reported_not_waited_for() {
    let node = TestNode::start().await.unwrap();
    let url = node.url("/ws");
    let cfg = config(&[
        "fanout",
        "--url",
        &url,
        "-s",
        "3",
        "-r",
        "100",
        "-d",
        "500ms",
        "--settle",
        "0s",
        "--drain",
        "200ms",
        "--drop-every",
        "200ms",
    ]);
    let r = run_ok(cfg).await;
    let rc = r.recovery.as_ref().expect("a recovery section");
    assert_eq!(rc.no_history, 3, "{rc:?}");
    assert_eq!(rc.drops, 0);
    assert!(!r.passed());
    assert!(
        r.warnings.iter().any(|w| w.contains("has no history")),
        "{:?}",
        r.warnings
    );
    assert!(r.render().contains("no history 3"));
    node.shutdown().await;
}
