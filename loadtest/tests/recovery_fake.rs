//! Recovery mode against a stand-in history node on a real socket: a small WebSocket
//! server (tokio-tungstenite) that keeps every topic's messages, answers `subscribe` with
//! `positions` and `recovered`, replays after `since`, then goes live. Its seam can be made
//! wrong on purpose (one duplicate, one gap), so these tests show the report catches both,
//! independently of the real node (tests/recovery.rs).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald_loadtest::{run, Config, Report};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// Where a resubscribe's replay starts, relative to the correct `since + 1`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Seam {
    Exact,
    /// Replays `since` itself again (a duplicate at every seam).
    Duplicate,
    /// Skips `since + 1` (one message lost at every seam).
    Gap,
}

const EPOCH: &str = "fake1";

#[derive(Default)]
struct Topic {
    /// Message data by offset − 1.
    log: Vec<String>,
    subscribers: Vec<mpsc::UnboundedSender<String>>,
}

type State = Arc<Mutex<HashMap<String, Topic>>>;

/// Keys in an order the real node does not use: the generator must not depend on it.
fn delivery(topic: &str, offset: usize, data: &str) -> String {
    format!(r#"{{"type":"message","offset":{offset},"topic":"{topic}","data":{data},"epoch":"{EPOCH}"}}"#)
}

async fn serve(seam: Seam) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state: State = Arc::default();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let state = state.clone();
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let (mut write, mut read) = ws.split();
                let (tx, mut rx) = mpsc::unbounded_channel::<String>();
                let _ = tx.send(r#"{"type":"welcome"}"#.to_owned());
                tokio::spawn(async move {
                    while let Some(text) = rx.recv().await {
                        if write.send(Message::text(text)).await.is_err() {
                            return;
                        }
                    }
                });
                while let Some(Ok(msg)) = read.next().await {
                    let Message::Text(text) = msg else { continue };
                    let Ok(req) = serde_json::from_str::<Value>(&text) else {
                        continue;
                    };
                    handle(&state, &tx, &req, seam);
                }
            });
        }
    });
    addr
}

fn handle(state: &State, tx: &mpsc::UnboundedSender<String>, req: &Value, seam: Seam) {
    let mut topics = state.lock().unwrap();
    match req["op"].as_str() {
        Some("publish") => {
            let name = req["topic"].as_str().unwrap_or_default();
            let t = topics.entry(name.to_owned()).or_default();
            t.log.push(req["data"].to_string());
            let frame = delivery(name, t.log.len(), t.log.last().unwrap());
            t.subscribers.retain(|s| s.send(frame.clone()).is_ok());
        }
        Some("subscribe") => {
            // Under the lock: the ack, the replay and the live registration are one step,
            // so nothing published meanwhile falls between them.
            let (mut recovered, mut positions, mut replay) = (json!({}), json!({}), Vec::new());
            for name in req["topics"].as_array().into_iter().flatten() {
                let name = name.as_str().unwrap_or_default();
                let t = topics.entry(name.to_owned()).or_default();
                let since = &req["since"][name];
                let from = match since["offset"].as_u64() {
                    Some(o) if since["epoch"] == EPOCH && o as usize <= t.log.len() => {
                        recovered[name] = true.into();
                        positions[name] = json!({"offset": o, "epoch": EPOCH});
                        Some(o as usize)
                    }
                    Some(_) => {
                        recovered[name] = false.into();
                        positions[name] = json!({"offset": t.log.len(), "epoch": EPOCH});
                        None
                    }
                    None => {
                        positions[name] = json!({"offset": t.log.len(), "epoch": EPOCH});
                        None
                    }
                };
                if let Some(o) = from {
                    let start = match seam {
                        Seam::Exact => o + 1,
                        Seam::Duplicate => o.max(1),
                        Seam::Gap => o + 2,
                    };
                    for offset in start..=t.log.len() {
                        replay.push(delivery(name, offset, &t.log[offset - 1]));
                    }
                }
                t.subscribers.push(tx.clone());
            }
            let mut ack = json!({"type": "ack", "id": req["id"], "positions": positions});
            if req.get("since").is_some() {
                ack["recovered"] = recovered;
            }
            let _ = tx.send(ack.to_string());
            for f in replay {
                let _ = tx.send(f);
            }
        }
        _ => {}
    }
}

async fn run_against(seam: Seam) -> Report {
    let addr = serve(seam).await;
    let url = format!("ws://{addr}/ws");
    let argv = [
        "herald-loadtest",
        "fanout",
        "--url",
        &url,
        "-s",
        "8",
        "-r",
        "400",
        "-d",
        "2s",
        "--settle",
        "50ms",
        "--drop-every",
        "300ms",
        "--away",
        "30ms",
        "--quiet",
    ];
    let cfg = Config::from_args(argv).unwrap();
    let report = tokio::time::timeout(Duration::from_secs(30), run(cfg, Default::default()))
        .await
        .expect("the run stops by itself")
        .expect("the run succeeds");
    eprintln!("{}", report.render());
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correct_seam_passes_with_every_offset_once() {
    let r = run_against(Seam::Exact).await;
    let rc = r.recovery.as_ref().unwrap();
    let m = r.messages.as_ref().unwrap();
    assert!(rc.drops >= 8 * 4, "{}", rc.drops);
    assert_eq!(rc.reconnects, rc.drops);
    assert!(rc.heads_known);
    assert_eq!(rc.owed, m.published * 8);
    assert_eq!(
        (rc.received, rc.missing, rc.duplicates, rc.out_of_order),
        (rc.owed, 0, 0, 0)
    );
    assert_eq!((rc.pairs, rc.complete_pairs, rc.not_recovered), (8, 8, 0));
    let replay = rc.replay_us.unwrap();
    assert!(replay.samples >= rc.reconnects / 2, "{replay:?}");
    assert_eq!((m.lost, m.duplicates), (0, 0));
    assert!(r.passed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_at_the_seam_is_counted() {
    let r = run_against(Seam::Duplicate).await;
    let rc = r.recovery.as_ref().unwrap();
    assert!(rc.reconnects > 0);
    // Every reconnect after the subscriber had a message replays one offset twice.
    assert!(rc.duplicates > 0 && rc.duplicates <= rc.reconnects, "{rc:?}");
    assert_eq!(rc.missing, 0);
    assert_eq!(
        r.messages.as_ref().unwrap().duplicates,
        rc.duplicates,
        "the stamps agree"
    );
    assert!(!r.passed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_at_the_seam_is_counted() {
    let r = run_against(Seam::Gap).await;
    let rc = r.recovery.as_ref().unwrap();
    assert!(rc.reconnects > 0);
    assert!(rc.missing > 0 && rc.missing <= rc.reconnects, "{rc:?}");
    assert_eq!(rc.duplicates, 0);
    assert!(rc.complete_pairs < rc.pairs);
    assert_eq!(r.messages.as_ref().unwrap().lost, rc.missing, "the stamps agree");
    assert!(!r.passed());
}
