//! Short, bounded scenarios against real nodes started in this process (127.0.0.1:0), checking
//! that the report's counts add up: with nothing dropped, every published message reaches
//! every subscriber of its topic exactly once and in order, and the node agrees.

use std::time::Duration;

use herald_loadtest::{run, Config, Report};
use herald_testkit::node::{MemoryCluster, TestNode};

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

/// The invariants of a pub/sub run in which nothing was dropped.
fn assert_complete(r: &Report, subscribers_per_message: Option<u64>) {
    let m = r.messages.as_ref().expect("pub/sub figures");
    assert!(m.published > 0, "published something");
    if let Some(n) = subscribers_per_message {
        assert_eq!(m.expected, m.published * n, "expected = published × subscribers");
    }
    assert_eq!(m.received, m.expected, "every expected delivery arrived");
    assert_eq!((m.lost, m.duplicates, m.out_of_order, m.foreign), (0, 0, 0, 0));
    assert_eq!(m.publish_errors, 0);
    assert!(r.connections.failed.is_empty(), "{:?}", r.connections.failed);
    assert!(r.connections.ended_early.is_empty(), "{:?}", r.connections.ended_early);
    let lat = r.latency_us.expect("latency recorded");
    assert_eq!(lat.samples, m.received);
    assert!(lat.p50 <= lat.p99 && lat.p99 <= lat.max);
    assert!(r.passed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_at_a_fixed_rate_delivers_everything_once() {
    let node = TestNode::start().await.unwrap();
    let (url, admin) = (node.url("/ws"), format!("http://{}", node.admin_addr()));
    let cfg = config(&[
        "fanout", "--url", &url, "--admin", &admin, "-s", "20", "-p", "2", "-r", "400", "-d", "1s", "--settle", "100ms",
    ]);
    let r = run_ok(cfg).await;
    assert_complete(&r, Some(20));
    assert_eq!(r.connections.established, 22);
    let m = r.messages.as_ref().unwrap();
    assert!(
        (350..=400).contains(&m.published),
        "400 scheduled in 1 s: {}",
        m.published
    );
    assert!(r.send_lag_us.is_some(), "fixed rate reports send lag");
    // The node's own count of deliveries during the measured phase agrees.
    let server = &r.servers[0];
    assert_eq!(server.error, None);
    assert_eq!(server.delivered, m.received);
    assert!(server.dropped.is_empty(), "{:?}", server.dropped);
    assert_eq!(server.connections_after, 22);
    assert!(r.generator.cpu_s > 0.0);
    let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    assert_eq!(json["messages"]["received"], m.received);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_topics_at_max_rate_with_a_message_cap() {
    let node = TestNode::start().await.unwrap();
    let url = node.url("/ws");
    let cfg = config(&[
        "many-topics",
        "--url",
        &url,
        "-s",
        "60",
        "-p",
        "3",
        "-t",
        "12",
        "--distribution",
        "zipf",
        "--topics-per-subscriber",
        "2",
        "--subscribe-via",
        "query",
        "-r",
        "max",
        "--messages",
        "3000",
        "-d",
        "20s",
        "--settle",
        "0s",
    ]);
    let r = run_ok(cfg).await;
    assert_complete(&r, None);
    assert_eq!(r.messages.as_ref().unwrap().published, 3000, "the cap stops the run");
    assert!(r.phases.measured_s < 20.0);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_node_through_the_relay() {
    let cluster = MemoryCluster::start(2).await.unwrap();
    let (a, b) = (cluster.nodes[0].url("/ws"), cluster.nodes[1].url("/ws"));
    let cfg = config(&[
        "cross-node",
        "--url",
        &a,
        "--url",
        &b,
        "-s",
        "10",
        "-r",
        "200",
        "-d",
        "1s",
        "--settle",
        "200ms",
    ]);
    let r = run_ok(cfg).await;
    assert_eq!(r.plan.pub_urls, vec![a]);
    assert_eq!(r.plan.sub_urls, vec![b]);
    assert_complete(&r, Some(10));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_over_the_admin_api() {
    let node = TestNode::start().await.unwrap();
    let (url, admin) = (node.url("/ws"), format!("http://{}", node.admin_addr()));
    let cfg = config(&[
        "fanout",
        "--url",
        &url,
        "--admin",
        &admin,
        "--publish-via",
        "http",
        "-s",
        "5",
        "-r",
        "200",
        "-d",
        "1s",
        "--settle",
        "100ms",
    ]);
    let r = run_ok(cfg).await;
    assert_complete(&r, Some(5));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_counts_cycles_and_idle_measures_memory() {
    let node = TestNode::start().await.unwrap();
    let (url, admin) = (node.url("/ws"), format!("http://{}", node.admin_addr()));
    let r = run_ok(config(&["churn", "--url", &url, "-s", "4", "-d", "1s"])).await;
    let churn = r.churn.as_ref().unwrap();
    assert!(churn.cycles > 10, "{churn:?}");
    assert!(churn.failures.is_empty(), "{:?}", churn.failures);
    assert!(churn.connect_us.is_some());

    let r = run_ok(config(&[
        "idle", "--url", &url, "--admin", &admin, "-s", "200", "-d", "500ms",
    ]))
    .await;
    assert_eq!(r.connections.established, 200);
    let idle = r.idle.as_ref().unwrap();
    assert_eq!(idle.connections, 200);
    assert!(idle.server_bytes_per_connection.is_some());
    assert_eq!(r.servers[0].connections_after, 200);
    assert!(r.passed());
    node.shutdown().await;
}

#[tokio::test]
async fn refuses_targets_that_are_not_loopback() {
    let cfg = config(&["fanout", "--url", "ws://192.0.2.1:8080/ws", "-s", "1"]);
    let e = run(cfg, Default::default()).await.unwrap_err().to_string();
    assert!(e.contains("--i-own-the-target"), "{e}");
}
