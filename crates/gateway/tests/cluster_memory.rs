//! Many nodes in one process joined by the in-process hub: fast checks of cluster
//! semantics (fan-out over every node, no duplicates, echo rules, relay outage reported to
//! the publisher) without Redis.

use std::time::Duration;

use herald_client::{Client, ClientError, RawClient, RawFrame};
use herald_testkit::node::MemoryCluster;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_over_six_nodes_reaches_everyone_once() {
    let c = MemoryCluster::start(6).await.unwrap();
    let mut subs = Vec::new();
    for n in &c.nodes {
        for _ in 0..3 {
            subs.push(Client::connect(&n.url("/ws?topics=wide")).await.unwrap());
        }
    }
    for (i, n) in c.nodes.iter().enumerate() {
        let p = Client::connect(&n.url("/ws")).await.unwrap();
        p.publish("wide", &json!(i)).await.unwrap();
    }
    for s in subs.iter_mut() {
        let mut got: Vec<String> = Vec::new();
        for _ in 0..6 {
            got.push(s.next_message_timeout(WAIT).await.unwrap().data_json().to_owned());
        }
        got.sort();
        assert_eq!(got, (0..6).map(|i| i.to_string()).collect::<Vec<_>>());
        assert!(
            s.next_message_timeout(Duration::from_millis(100)).await.is_err(),
            "no duplicates"
        );
    }
    let delivered: f64 = {
        let mut sum = 0.0;
        for n in &c.nodes {
            sum += n.metric("herald_messages_delivered_total").await.unwrap();
        }
        sum
    };
    assert_eq!(delivered, 6.0 * 18.0);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_off_applies_to_the_sender_only_across_nodes() {
    let c = MemoryCluster::start(2).await.unwrap();
    let mut sender = RawClient::connect(&c.nodes[0].url("/raw/chat?echo=false"))
        .await
        .unwrap();
    let mut peer_same_node = RawClient::connect(&c.nodes[0].url("/raw/chat")).await.unwrap();
    let mut peer_other_node = RawClient::connect(&c.nodes[1].url("/raw/chat")).await.unwrap();
    sender.send_text("hi all").await.unwrap();
    assert_eq!(
        peer_same_node.next_timeout(WAIT).await.unwrap(),
        RawFrame::Text("hi all".into())
    );
    assert_eq!(
        peer_other_node.next_timeout(WAIT).await.unwrap(),
        RawFrame::Text("hi all".into())
    );
    assert!(sender.next_timeout(Duration::from_millis(200)).await.is_err());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_outage_is_reported_to_acked_publishers() {
    let c = MemoryCluster::start(2).await.unwrap();
    let mut local = Client::connect(&c.nodes[0].url("/ws?topics=o")).await.unwrap();
    let mut remote = Client::connect(&c.nodes[1].url("/ws?topics=o")).await.unwrap();
    let p = Client::connect(&c.nodes[0].url("/ws")).await.unwrap();
    c.hub.set_up(false);
    match p.publish("o", &json!(1)).await {
        Err(ClientError::Server { code, message }) => {
            assert_eq!(code, "relay_unavailable");
            assert!(message.contains("1 local subscriber"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(local.next_message_timeout(WAIT).await.unwrap().data_json(), "1");
    assert!(remote.next_message_timeout(Duration::from_millis(200)).await.is_err());
    c.hub.set_up(true);
    p.publish("o", &json!(2)).await.unwrap();
    assert_eq!(remote.next_message_timeout(WAIT).await.unwrap().data_json(), "2");
    c.shutdown().await;
}
