//! After its close frame the node lingers: it shuts its write side and reads what the peer
//! still sends until the peer closes (briefly), instead of dropping the socket with unread
//! bytes, which makes the kernel answer with a TCP reset that can destroy the close frame
//! before the client reads it.

use std::time::Duration;

use herald_protocol::ws_frame::masked_client_frame;
use herald_testkit::node::TestNode;
use herald_testkit::wire::WireClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_still_sending_when_it_is_closed_reads_the_close_frame() {
    let node = TestNode::start_with(|c| c.limits.max_message_bytes = 1024)
        .await
        .unwrap();
    for round in 0..5 {
        let mut c = WireClient::connect(node.ws_addr(), "/ws").await.unwrap();
        c.read_text(Duration::from_secs(5)).await.unwrap();
        // A frame over the limit: refused from its header with 1009, while the rest of it
        // (and more) is still on its way to the node.
        let big = masked_client_frame(0x81, &vec![b'a'; 256 * 1024], [1, 2, 3, 4]);
        c.stream.write_all(&big).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (code, reason) = c
            .expect_close(Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("round {round}: no close frame: {e:#}"));
        assert_eq!(code, 1009, "{reason}");
        // Then a clean end of stream (the node's FIN), not a reset for the bytes it had
        // not read.
        let mut rest = [0u8; 1024];
        let end = tokio::time::timeout(Duration::from_secs(5), c.stream.read(&mut rest))
            .await
            .expect("the node closes");
        assert!(matches!(end, Ok(0)), "round {round}: {end:?}");
    }
    node.shutdown().await;
}
