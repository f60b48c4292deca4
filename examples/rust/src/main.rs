//! Example: connect to a Herald node with `herald-client`, subscribe a topic, publish one
//! message to it and print it when it comes back. Exits 0 once its own message arrived,
//! 1 on any error or after 10 s without it.
//!
//! Run: `HERALD_URL=ws://127.0.0.1:8080 cargo run -p herald-example`
//! (`HERALD_TOPIC` picks the topic, default `examples.rust`).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use herald_client::Client;

const TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let base = std::env::var("HERALD_URL").unwrap_or_else(|_| "ws://127.0.0.1:8080".into());
    let topic = std::env::var("HERALD_TOPIC").unwrap_or_else(|_| "examples.rust".into());
    // herald-client wants the full URL with the /ws path.
    let base = base.trim_end_matches('/');
    let url = if base.ends_with("/ws") {
        base.to_string()
    } else {
        format!("{base}/ws")
    };

    let mut client = Client::connect(&url).await?;
    println!(
        "connected to node {} as connection {}",
        client.node(),
        client.connection_id()
    );
    client.subscribe(&[&topic]).await?;
    println!("subscribed {topic}");

    let nonce = format!("rust-{}", std::process::id());
    let data = serde_json::json!({ "from": "rust", "nonce": nonce, "text": "hello" });
    client.publish(&topic, &data).await?;
    println!("published {data}");

    let deadline = Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no message of ours within {TIMEOUT:?}").into());
        }
        let msg = client.next_message_timeout(left).await?;
        println!("received on {}: {}", msg.topic, msg.data_json());
        let got: serde_json::Value = msg.json()?;
        if got["nonce"] == nonce {
            println!("got our own message back");
            return Ok(());
        }
    }
}
