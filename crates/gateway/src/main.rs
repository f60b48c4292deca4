//! The `herald` binary: parse the command line, load and validate the configuration (exit
//! 64 on any problem, listing all of them), raise the open-file limit to its hard maximum
//! (the node derives its connection budget from it), start a node, and drain it on
//! SIGINT/SIGTERM (a second one during the drain stops the process at once, with status 1).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use herald_gateway::{CliOverrides, Config, Node};

/// Herald: a horizontally scalable WebSocket pub/sub broker.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML configuration file.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Public listener address (overrides `listen`).
    #[arg(long, global = true, value_name = "ADDR")]
    listen: Option<String>,
    /// Admin listener address (overrides `admin.listen`).
    #[arg(long, global = true, value_name = "ADDR")]
    admin_listen: Option<String>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long, global = true)]
    print_config: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a gateway node (the default).
    Serve,
}

/// BSD `EX_CONFIG`-style usage error, as documented.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = CliOverrides {
        listen: cli.listen.clone(),
        admin_listen: cli.admin_listen.clone(),
    };
    let (config, warnings) = match Config::load(cli.config.as_deref(), std::env::vars(), &overrides) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("herald: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if cli.print_config {
        for w in &warnings {
            eprintln!("herald: warning: {w}");
        }
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
    for w in warnings {
        tracing::warn!("{w}");
    }
    // Before the runtime: every descriptor the node opens counts against this limit.
    match herald_gateway::fd_budget::raise_nofile() {
        Ok(r) if r.now > r.before => tracing::info!("open-file limit raised from {} to {}", r.before, r.now),
        Ok(r) => tracing::info!("open-file limit is {}", r.now),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit; keeping the current one"),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("herald: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        let node = match Node::start(config).await {
            Ok(n) => n,
            Err(e) => {
                eprintln!("herald: {e}");
                return ExitCode::FAILURE;
            }
        };
        // One line on stdout, for people and for scripts that start a node on port 0.
        println!(
            "herald listening on ws://{} admin http://{}",
            node.ws_addr(),
            node.admin_addr()
        );
        tokio::select! {
            _ = shutdown_signal() => tracing::info!("signal received; draining (a second signal stops at once)"),
            _ = node.stopped() => {}
        }
        // An operator who does not want to wait for the drain sends the signal again.
        tokio::select! {
            _ = node.shutdown() => ExitCode::SUCCESS,
            _ = shutdown_signal() => {
                tracing::warn!("second signal: stopping now, without finishing the drain");
                ExitCode::FAILURE
            }
        }
    });
    // After a forced stop, tasks still running are not waited for.
    runtime.shutdown_background();
    code
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
