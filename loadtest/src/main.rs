//! The `herald-loadtest` binary: parse the command line, build a runtime with the chosen
//! number of worker threads, run the scenario (Ctrl-C ends it early and still reports),
//! print the summary (or JSON) and exit 0, 1 on error, 2 when `--check` found problems.

use std::process::ExitCode;

use clap::Parser;
use herald_loadtest::Args;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let args = Args::parse();
    let threads = args.threads;
    let cfg = match args.resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("herald-loadtest: {e:#}");
            return ExitCode::from(64);
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        builder.worker_threads(n.max(1));
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("herald-loadtest: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (json, check) = (cfg.json, cfg.check);
    let result = runtime.block_on(async move {
        let abort = CancellationToken::new();
        let on_signal = abort.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\nherald-loadtest: interrupted; finishing the report (Ctrl-C again to quit)");
                on_signal.cancel();
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        });
        herald_loadtest::run(cfg, abort).await
    });
    match result {
        Ok(report) => {
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.render());
            }
            if check && !report.passed() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("herald-loadtest: {e:#}");
            ExitCode::FAILURE
        }
    }
}
