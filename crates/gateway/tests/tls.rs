//! `wss://` on the public listener, over real sockets: a CA and server certificates made in
//! the test with rcgen, clients that verify the chain against that CA only (rustls +
//! tokio-tungstenite), JSON and raw sessions, messages of many TLS records, clients that
//! must fail (untrusted CA, plain `ws://`, a silent TCP peer), certificate rotation (polled
//! and SIGHUP, a bad file keeping the old certificate), a stalled TLS reader under the
//! slow-consumer policy, the start-up checks of `[tls]`, a TLS alert (not HTTP) for a client
//! refused at accept, one handshake deadline for a slow client, and frames (and a
//! close_notify, a forged record) in the same TLS record as the upgrade request.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald_gateway::Config;
use herald_testkit::fleet::TempDir;
use herald_testkit::node::{http_request, TestNode};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const WAIT: Duration = Duration::from_secs(5);

/// A certificate authority made for one test.
struct Ca {
    der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1: (chain PEM, key PEM, leaf DER).
    fn leaf(&self, cn: &str) -> (String, String, CertificateDer<'static>) {
        let mut params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().clone())
    }

    fn client(&self) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
    }
}

/// The node's certificate files in a temp dir.
struct Files {
    _dir: TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl Files {
    fn new(cert: &str, key: &str) -> Self {
        let dir = TempDir::new("tls").unwrap();
        let f = Self {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            _dir: dir,
        };
        f.write(cert, key);
        f
    }
    /// As docs/operations.md advises: each changed file is written whole under a temporary
    /// name and renamed over the old one (the key first), so the node, which polls, never
    /// reads half a file. Between the two renames it may see the new key with the old chain
    /// (a mismatch, counted as a reload error); the rotation test allows for that.
    fn write(&self, cert: &str, key: &str) {
        for (path, text) in [(&self.key, key), (&self.cert, cert)] {
            if std::fs::read(path).is_ok_and(|old| old == text.as_bytes()) {
                continue;
            }
            let tmp = path.with_extension("pem.tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
    }
    fn apply(&self, c: &mut Config, reload_ms: u64) {
        c.tls.cert_file = self.cert.display().to_string();
        c.tls.key_file = self.key.display().to_string();
        c.tls.reload_interval_ms = reload_ms;
    }
}

async fn tls_connect(node: &TestNode, ca: &Ca) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(node.ws_addr()).await?;
    ca.client()
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

type Wss = WebSocketStream<TlsStream<TcpStream>>;

/// A verified `wss://localhost:PORT{path}` WebSocket.
async fn wss(node: &TestNode, ca: &Ca, path: &str) -> Wss {
    let tls = tls_connect(node, ca).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let url = format!("wss://localhost:{}{}", node.ws_addr().port(), path);
    let (ws, resp) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    assert_eq!(resp.status(), 101);
    ws
}

async fn next(ws: &mut Wss) -> Message {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(m))) => return m,
            other => panic!("no message: {other:?}"),
        }
    }
}

async fn next_json(ws: &mut Wss) -> Value {
    serde_json::from_str(next(ws).await.to_text().unwrap()).unwrap()
}

/// The certificate the node served on this connection.
fn served(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned()
}

async fn tls_node(files: &Files, reload_ms: u64, adjust: impl FnOnce(&mut Config)) -> TestNode {
    TestNode::start_with(|c| {
        files.apply(c, reload_ms);
        adjust(c);
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verifying_client_subscribes_publishes_and_receives_over_wss() {
    let ca = Ca::new("test ca");
    let (cert, key, _) = ca.leaf("node-1");
    let files = Files::new(&cert, &key);
    let node = tls_node(&files, 1000, |_| {}).await;

    let mut a = wss(&node, &ca, "/ws?topics=prices").await;
    let welcome = next_json(&mut a).await;
    assert_eq!(welcome["type"], "welcome");
    let mut b = wss(&node, &ca, "/ws").await;
    next_json(&mut b).await;
    b.send(Message::text(r#"{"op":"subscribe","topics":["prices"],"id":"s"}"#))
        .await
        .unwrap();
    assert_eq!(next_json(&mut b).await, json!({"type":"ack","id":"s"}));
    a.send(Message::text(
        r#"{"op":"publish","topic":"prices","data":{"btc":1},"id":1}"#,
    ))
    .await
    .unwrap();
    let m = next_json(&mut b).await;
    assert_eq!(m, json!({"type":"message","topic":"prices","data":{"btc":1}}));
    // The publisher gets its ack and (echo on) its own message.
    let mut got = [next_json(&mut a).await, next_json(&mut a).await];
    got.sort_by_key(|v| v["type"].as_str().unwrap().to_owned());
    assert_eq!(got[0]["type"], "ack");
    assert_eq!(got[1]["data"], json!({"btc":1}));

    // A clean close: the close handshake completes, then the TLS stream ends.
    a.close(None).await.unwrap();
    while let Some(Ok(_)) = tokio::time::timeout(WAIT, a.next()).await.unwrap() {}
    node.metric_reaches(r#"herald_connections_closed_total{reason="client_close"}"#, 1.0)
        .await
        .unwrap();
    assert_eq!(
        node.metric(r#"herald_tls_handshake_failures_total{reason="protocol"}"#)
            .await
            .unwrap(),
        0.0
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_mode_over_wss_carries_messages_of_many_tls_records_both_ways() {
    let ca = Ca::new("test ca");
    let (cert, key, _) = ca.leaf("node-1");
    let files = Files::new(&cert, &key);
    let node = tls_node(&files, 1000, |c| c.limits.max_message_bytes = 4 << 20).await;

    let mut sub = wss(&node, &ca, "/raw/chat?echo=false").await;
    let mut publ = wss(&node, &ca, "/raw/chat?echo=false").await;
    // Several sizes, up to 3 MiB (about 190 TLS records of 16 KiB).
    for (i, size) in [10usize, 16 * 1024 + 1, 100_000, 3 << 20].into_iter().enumerate() {
        let payload: Vec<u8> = (0..size).map(|j| ((i + j) % 251) as u8).collect();
        publ.send(Message::binary(payload.clone())).await.unwrap();
        match next(&mut sub).await {
            Message::Binary(b) => assert!(b[..] == payload[..], "size {size} arrived intact"),
            other => panic!("size {size}: {other:?}"),
        }
    }
    // And text, many at once (several frames per TLS record).
    for i in 0..200 {
        publ.send(Message::text(format!("m{i}"))).await.unwrap();
    }
    for i in 0..200 {
        assert_eq!(next(&mut sub).await.to_text().unwrap(), format!("m{i}"));
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_do_not_trust_the_ca_or_speak_plain_ws_fail_cleanly_and_are_counted() {
    let ca = Ca::new("test ca");
    let (cert, key, _) = ca.leaf("node-1");
    let files = Files::new(&cert, &key);
    let node = tls_node(&files, 1000, |c| c.limits.handshake_timeout_ms = 500).await;

    // A client whose only root is another CA refuses the node's certificate.
    let other = Ca::new("other ca");
    let err = tls_connect(&node, &other).await.unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    node.metric_reaches(r#"herald_tls_handshake_failures_total{reason="protocol"}"#, 1.0)
        .await
        .unwrap();

    // Plain ws:// to the TLS listener: no upgrade, the connection just ends.
    let plain = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(node.url("/ws")))
        .await
        .expect("the node answers or closes");
    assert!(plain.is_err(), "a plain WebSocket must not connect");
    node.metric_reaches(r#"herald_tls_handshake_failures_total{reason="protocol"}"#, 2.0)
        .await
        .unwrap();

    // A TCP peer that never starts a handshake is dropped at the handshake timeout.
    let mut silent = TcpStream::connect(node.ws_addr()).await.unwrap();
    let mut buf = [0u8; 64];
    let end = tokio::time::timeout(WAIT, silent.read(&mut buf))
        .await
        .expect("closed by the node");
    assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
    node.metric_reaches(r#"herald_tls_handshake_failures_total{reason="timeout"}"#, 1.0)
        .await
        .unwrap();

    // None of that hurt the node: a trusting client still works.
    let mut ok = wss(&node, &ca, "/ws").await;
    assert_eq!(next_json(&mut ok).await["type"], "welcome");
    assert_eq!(node.metric("herald_pending_handshakes").await.unwrap(), 0.0);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_serves_new_connections_while_old_ones_keep_working() {
    let ca = Ca::new("test ca");
    let (cert1, key1, der1) = ca.leaf("first");
    let files = Files::new(&cert1, &key1);
    let node = tls_node(&files, 100, |_| {}).await;

    let tls = tls_connect(&node, &ca).await.unwrap();
    assert_eq!(served(&tls), der1);
    let url = format!("wss://localhost:{}/raw/rot", node.ws_addr().port());
    let (mut old, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();

    let (cert2, key2, der2) = ca.leaf("second");
    assert_ne!(der1, der2);
    files.write(&cert2, &key2);
    node.metric_reaches(r#"herald_tls_reloads_total{result="ok"}"#, 1.0)
        .await
        .unwrap();
    let fresh = tls_connect(&node, &ca).await.unwrap();
    assert_eq!(served(&fresh), der2, "a new handshake gets the new certificate");
    let url = format!("wss://localhost:{}/raw/rot?echo=false", node.ws_addr().port());
    let (mut new, _) = tokio_tungstenite::client_async(url, fresh).await.unwrap();
    // The old connection (first certificate) and the new one talk through the node.
    new.send(Message::text("from new")).await.unwrap();
    assert_eq!(next(&mut old).await.to_text().unwrap(), "from new");
    old.send(Message::text("from old")).await.unwrap();
    assert_eq!(next(&mut new).await.to_text().unwrap(), "from old");

    // A broken file keeps the current certificate, and is reported once. (A poll between
    // the rotation's two renames may have counted one error already: count from here.)
    let errors = r#"herald_tls_reloads_total{result="error"}"#;
    let before = node.metric(errors).await.unwrap();
    assert!(before <= 1.0, "{before}");
    files.write(
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
        &key2,
    );
    node.metric_reaches(errors, before + 1.0).await.unwrap();
    let still = tls_connect(&node, &ca).await.unwrap();
    assert_eq!(served(&still), der2);
    // A key that belongs to another certificate is refused too.
    let (cert3, _, _) = ca.leaf("third");
    files.write(&cert3, &key2);
    node.metric_reaches(errors, before + 2.0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        node.metric(errors).await.unwrap(),
        before + 2.0,
        "each bad change is counted once, not at every poll"
    );
    assert_eq!(served(&tls_connect(&node, &ca).await.unwrap()), der2);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_when_polling_is_off() {
    let ca = Ca::new("test ca");
    let (cert1, key1, der1) = ca.leaf("first");
    let files = Files::new(&cert1, &key1);
    let node = tls_node(&files, 0, |_| {}).await;
    assert_eq!(served(&tls_connect(&node, &ca).await.unwrap()), der1);

    let (cert2, key2, der2) = ca.leaf("second");
    files.write(&cert2, &key2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(served(&tls_connect(&node, &ca).await.unwrap()), der1, "no polling");
    // The node's SIGHUP handler is installed (it started), so the signal only reloads.
    assert_eq!(unsafe { libc::raise(libc::SIGHUP) }, 0);
    node.metric_reaches(r#"herald_tls_reloads_total{result="ok"}"#, 1.0)
        .await
        .unwrap();
    assert_eq!(served(&tls_connect(&node, &ca).await.unwrap()), der2);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_tls_reader_is_disconnected_by_the_slow_consumer_policy() {
    let ca = Ca::new("test ca");
    let (cert, key, _) = ca.leaf("node-1");
    let files = Files::new(&cert, &key);
    let node = tls_node(&files, 1000, |c| {
        c.outbox.slow_consumer = "disconnect".into();
        c.outbox.max_bytes = 1 << 20;
        c.limits.write_timeout_ms = 1000;
    })
    .await;

    // Subscribes, then never reads again.
    let _stalled = wss(&node, &ca, "/raw/flood").await;
    let mut healthy = wss(&node, &ca, "/raw/flood").await;
    let body = json!({"topic":"flood","data":"x".repeat(60_000)}).to_string();
    let headers = [("content-type", "application/json")];
    for i in 0..200 {
        let (status, _) = http_request(node.admin_addr(), "POST", "/api/publish", &headers, body.as_bytes())
            .await
            .unwrap();
        assert_eq!(status, 200, "publish {i}");
        // The healthy subscriber keeps up.
        assert!(matches!(next(&mut healthy).await, Message::Text(_)));
    }
    node.metric_reaches(r#"herald_connections_closed_total{reason="slow_consumer"}"#, 1.0)
        .await
        .unwrap();
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_to_start_with_half_or_broken_tls_settings() {
    let ca = Ca::new("test ca");
    let (cert, key, _) = ca.leaf("node-1");
    let files = Files::new(&cert, &key);
    let check = |adjust: &dyn Fn(&mut Config)| {
        let mut c = Config::default();
        adjust(&mut c);
        c.validate().err().map(|e| e.to_string()).unwrap_or_default()
    };
    assert_eq!(check(&|c| files.apply(c, 1000)), "");
    let only_cert = check(&|c| c.tls.cert_file = files.cert.display().to_string());
    assert!(only_cert.contains("set both"), "{only_cert}");
    let missing = check(&|c| {
        files.apply(c, 1000);
        c.tls.key_file = "/nonexistent/key.pem".into();
    });
    assert!(missing.contains("cannot read /nonexistent/key.pem"), "{missing}");
    let swapped = check(&|c| {
        files.apply(c, 1000);
        std::mem::swap(&mut c.tls.cert_file, &mut c.tls.key_file);
    });
    assert!(swapped.contains("tls:"), "{swapped}");
    let (other_cert, _, _) = ca.leaf("other");
    let mismatch_dir = Files::new(&other_cert, &key);
    let mismatch = check(&|c| mismatch_dir.apply(c, 1000));
    assert!(mismatch.contains("does not belong"), "{mismatch}");
    // Polling: 0 (SIGHUP only) or at least 100 ms.
    assert_eq!(check(&|c| files.apply(c, 0)), "");
    assert_eq!(check(&|c| files.apply(c, 100)), "");
    let fast = check(&|c| files.apply(c, 10));
    assert!(fast.contains("tls.reload_interval_ms"), "{fast}");
    // Node::start (which embedders call without validate) refuses too.
    let mut c = herald_testkit::node::test_config("bad-tls");
    mismatch_dir.apply(&mut c, 1000);
    let err = TestNode::start_config(c, None).await.err().expect("refused");
    assert!(format!("{err:#}").contains("does not belong"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_a_refused_tls_client_gets_a_tls_alert_not_plaintext_http() {
    let ca = Ca::new("test ca");
    let (cert, key, _) = ca.leaf("node-1");
    let files = Files::new(&cert, &key);
    let node = tls_node(&files, 1000, |c| c.limits.max_pending_handshakes = 1).await;

    // A silent peer holds the only handshake place.
    let _holder = TcpStream::connect(node.ws_addr()).await.unwrap();
    node.metric_reaches("herald_pending_handshakes", 1.0).await.unwrap();
    let err = tls_connect(&node, &ca).await.unwrap_err();
    let inner = err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
    assert!(
        matches!(
            inner,
            Some(rustls::Error::AlertReceived(rustls::AlertDescription::InternalError))
        ),
        "a refused TLS client should get a TLS alert, got: {err}"
    );
    // The bytes on the wire: that alert record and nothing else.
    let mut raw = TcpStream::connect(node.ws_addr()).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, raw.read_to_end(&mut got))
        .await
        .unwrap()
        .ok();
    assert_eq!(got, [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x50]);
    node.metric_reaches(r#"herald_connections_rejected_total{reason="handshake_limit"}"#, 2.0)
        .await
        .unwrap();
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_a_slow_tls_client_holds_its_handshake_place_no_longer_than_the_timeout() {
    let ca = Ca::new("test ca");
    let (cert, key, _) = ca.leaf("node-1");
    let files = Files::new(&cert, &key);
    let node = tls_node(&files, 1000, |c| c.limits.handshake_timeout_ms = 600).await;

    // Connects, waits 400 ms, completes the TLS handshake, then never sends a request: one
    // deadline from accept ends it at 600 ms, not 400 + 600.
    let start = std::time::Instant::now();
    let tcp = TcpStream::connect(node.ws_addr()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut tls = ca
        .client()
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("handshake within the timeout");
    let mut buf = [0u8; 64];
    let end = tokio::time::timeout(WAIT, tls.read(&mut buf))
        .await
        .expect("closed by the node");
    let held = start.elapsed();
    assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
    assert!(
        held < Duration::from_millis(900),
        "a TLS client held its handshake place for {held:?} with a 600 ms handshake timeout"
    );
    assert!(held >= Duration::from_millis(550), "closed early: {held:?}");
    assert_eq!(node.metric("herald_pending_handshakes").await.unwrap(), 0.0);
    node.shutdown().await;
}

/// A client that writes TLS records itself (rustls without tokio-rustls after the
/// handshake), so that an upgrade request, the frames after it and a close_notify can
/// travel in one record, one TCP write.
struct RawTls {
    tcp: TcpStream,
    conn: rustls::ClientConnection,
    plain: Vec<u8>,
}

impl RawTls {
    async fn connect(node: &TestNode, ca: &Ca) -> Self {
        let (tcp, conn) = tls_connect(node, ca).await.unwrap().into_inner();
        Self {
            tcp,
            conn,
            plain: Vec::new(),
        }
    }

    /// Encrypts `plaintext` (one record if under 16 KiB), optionally a close_notify after
    /// it, and `extra` raw bytes, and sends it all with one write.
    async fn send(&mut self, plaintext: &[u8], close_notify: bool, extra: &[u8]) {
        use std::io::Write;
        use tokio::io::AsyncWriteExt;
        self.conn.writer().write_all(plaintext).unwrap();
        if close_notify {
            self.conn.send_close_notify();
        }
        let mut wire = Vec::new();
        while self.conn.wants_write() {
            self.conn.write_tls(&mut wire).unwrap();
        }
        wire.extend_from_slice(extra);
        self.tcp.write_all(&wire).await.unwrap();
    }

    /// Reads until `plain` holds at least `n` bytes; false at the end of the stream.
    async fn fill(&mut self, n: usize) -> bool {
        use std::io::Read;
        while self.plain.len() < n {
            let mut buf = vec![0u8; 16 * 1024];
            let got = tokio::time::timeout(WAIT, self.tcp.read(&mut buf))
                .await
                .expect("the node answers")
                .unwrap_or(0);
            if got == 0 {
                return false;
            }
            self.conn.read_tls(&mut &buf[..got]).unwrap();
            self.conn.process_new_packets().unwrap();
            let mut out = Vec::new();
            match self.conn.reader().read_to_end(&mut out) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            self.plain.extend_from_slice(&out);
        }
        true
    }

    /// The HTTP response head.
    async fn head(&mut self) -> String {
        loop {
            if let Some(i) = self.plain.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(self.plain.drain(..i + 4).collect()).unwrap();
                return head;
            }
            let want = self.plain.len() + 1;
            assert!(self.fill(want).await, "no response head");
        }
    }

    /// The next server frame (opcode, payload); `None` at the end of the stream.
    async fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        if !self.fill(2).await {
            return None;
        }
        let (op, len7) = (self.plain[0] & 0x0f, (self.plain[1] & 0x7f) as usize);
        let (start, len) = match len7 {
            126 => {
                assert!(self.fill(4).await);
                (4, u16::from_be_bytes([self.plain[2], self.plain[3]]) as usize)
            }
            127 => panic!("no frame this big here"),
            n => (2, n),
        };
        assert!(self.fill(start + len).await, "a whole frame");
        let payload = self.plain[start..start + len].to_vec();
        self.plain.drain(..start + len);
        Some((op, payload))
    }

    async fn text(&mut self) -> Value {
        loop {
            let (op, payload) = self.frame().await.expect("a frame");
            if op == 0x9 || op == 0xA {
                continue;
            }
            assert_eq!(op, 0x1, "a text frame");
            return serde_json::from_slice(&payload).unwrap();
        }
    }
}

/// A masked client text frame.
fn client_text(text: &str) -> Vec<u8> {
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut f = vec![0x81];
    assert!(text.len() < 126);
    f.push(0x80 | text.len() as u8);
    f.extend_from_slice(&mask);
    f.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_in_the_same_tls_record_as_the_upgrade_request_are_served_and_a_close_notify_with_them_ends_the_session()
{
    let ca = Ca::new("test ca");
    let (cert, key, _) = ca.leaf("node-1");
    let files = Files::new(&cert, &key);
    let node = tls_node(&files, 1000, |_| {}).await;
    let requests = || {
        let mut all = upgrade_request("/ws").into_bytes();
        all.extend(client_text(r#"{"op":"subscribe","topics":["t"],"id":"s"}"#));
        all.extend(client_text(r#"{"op":"publish","topic":"t","data":1,"id":"p"}"#));
        all
    };
    let types = |got: Vec<Value>| {
        let mut t: Vec<String> = got
            .iter()
            .map(|v| format!("{}:{}", v["type"].as_str().unwrap(), v["id"].as_str().unwrap_or("")))
            .collect();
        t.sort();
        t
    };
    let answers = ["ack:p", "ack:s", "message:", "welcome:"];

    // The request and two frames in one record: every frame is answered.
    let mut a = RawTls::connect(&node, &ca).await;
    a.send(&requests(), false, &[]).await;
    assert!(a.head().await.starts_with("HTTP/1.1 101"));
    let got = vec![a.text().await, a.text().await, a.text().await, a.text().await];
    assert_eq!(types(got), answers);

    // The same, with the client's close_notify in the same write (TCP stays open): the
    // node reads the frames, then the end of the client's stream, like a FIN after them:
    // the session ends at once (not at the idle timeout) with a close frame, close_notify
    // and FIN. Answers still waiting then may be dropped, as after a FIN.
    let mut b = RawTls::connect(&node, &ca).await;
    b.send(&requests(), true, &[]).await;
    assert!(b.head().await.starts_with("HTTP/1.1 101"));
    assert_eq!(b.text().await["type"], "welcome");
    loop {
        match b.frame().await.expect("a close frame before the end") {
            (0x8, _) => break,
            (op, _) => assert!(matches!(op, 0x1 | 0x9), "{op}"),
        }
    }
    assert!(b.frame().await.is_none(), "then the end of the stream");
    node.metric_reaches(r#"herald_connections_closed_total{reason="client_gone"}"#, 1.0)
        .await
        .unwrap();

    // A record that does not decrypt ends a session as a TLS error (the node's alert
    // follows: bad_record_mac).
    let mut c = RawTls::connect(&node, &ca).await;
    c.send(&requests(), false, &[]).await;
    assert!(c.head().await.starts_with("HTTP/1.1 101"));
    assert_eq!(c.text().await["type"], "welcome");
    let forged = [0x17, 0x03, 0x03, 0x00, 0x20]
        .into_iter()
        .chain([0xAB; 32])
        .collect::<Vec<u8>>();
    c.send(&[], false, &forged).await;
    node.metric_reaches(r#"herald_connections_closed_total{reason="tls_error"}"#, 1.0)
        .await
        .unwrap();
    drop(a);
    node.shutdown().await;
}
