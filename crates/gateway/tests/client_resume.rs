//! `herald-client`'s `ResumingClient` against a real node with history: the node drops the
//! subscriber's connection (admin API `POST /api/topics/{topic}/disconnect`) three times
//! while another connection publishes, and the client reconnects, resubscribes with
//! `since` by itself and delivers every message exactly once, in order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald_client::{Client, ClientOptions, ReconnectOptions, ResumeEvent, ResumingClient, StreamPos};
use herald_gateway::config::HistoryEntry;
use herald_testkit::node::{http_request, TestNode};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);
const MESSAGES: u64 = 600;
const KICKS: u64 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_client_gets_every_message_once_across_kicks() {
    let node = TestNode::start_with(|c| {
        c.history.push(HistoryEntry {
            topics: "feed".into(),
            size: 10_000,
            ..Default::default()
        });
        c.limits.publish_per_second = 0;
        c.limits.publish_bytes_per_second = 0;
    })
    .await
    .unwrap();
    let opts = ClientOptions {
        reconnect: ReconnectOptions {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
            max_attempts: Some(50),
        },
        ..Default::default()
    };
    let mut sub = ResumingClient::connect_with(&node.url("/ws"), opts).await.unwrap();
    sub.subscribe(&["feed"]).await.unwrap();
    // No message yet: the position comes from the ack, so the first drop recovers too.
    let head = sub.position("feed").unwrap();
    assert_eq!(head.offset, 0);

    let published = Arc::new(AtomicU64::new(0));
    let publisher = {
        let published = published.clone();
        let p = Client::connect(&node.url("/ws")).await.unwrap();
        tokio::spawn(async move {
            for n in 0..MESSAGES {
                let pos = p.publish("feed", &json!({ "n": n })).await.unwrap();
                assert_eq!(pos, Some(StreamPos::new(n + 1, head.epoch.clone())));
                published.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let kicker = {
        let (published, handle, admin) = (published.clone(), sub.handle(), node.admin_addr());
        tokio::spawn(async move {
            let mut at = Vec::new();
            for k in 0..KICKS {
                // Kick only a live connection: wait for the previous reconnect, then a bit.
                while handle.stats().reconnects < k {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                let body = json!({"code": 4000, "reason": "kicked by the test"}).to_string();
                let (status, answer) = http_request(
                    admin,
                    "POST",
                    "/api/topics/feed/disconnect",
                    &[("Content-Type", "application/json")],
                    body.as_bytes(),
                )
                .await
                .unwrap();
                assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
                at.push(published.load(Ordering::SeqCst));
            }
            at
        })
    };

    let (mut next, mut disconnects, mut resubscribes) = (0u64, 0, 0);
    while next < MESSAGES {
        match sub.next_event_timeout(WAIT).await.unwrap() {
            ResumeEvent::Message(m) => {
                assert_eq!(m.json::<serde_json::Value>().unwrap()["n"], next, "order, no gap");
                assert_eq!(m.position.unwrap().offset, next + 1);
                next += 1;
            }
            ResumeEvent::Disconnected(info) => {
                assert_eq!((info.code, info.reason.as_str()), (4000, "kicked by the test"));
                disconnects += 1;
            }
            ResumeEvent::Resubscribed { recovered, .. } => {
                assert_eq!(recovered.get("feed"), Some(&true), "{recovered:?}");
                resubscribes += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    publisher.await.unwrap();
    let kicked_at = kicker.await.unwrap();
    assert_eq!((disconnects, resubscribes), (KICKS, KICKS));
    // Every kick came while the publisher was still publishing.
    assert!(kicked_at.iter().all(|n| (1..MESSAGES).contains(n)), "{kicked_at:?}");
    // Nothing more: no duplicate after the last message.
    assert!(sub.next_message_timeout(Duration::from_millis(300)).await.is_err());
    let stats = sub.stats();
    assert_eq!((stats.reconnects, stats.duplicates_dropped), (KICKS, 0));
    sub.close(1000, "done").await.unwrap();
    node.shutdown().await;
}
