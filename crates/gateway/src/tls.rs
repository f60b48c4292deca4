//! TLS on the public listener (`wss://`): the certificate and key from `tls.cert_file` and
//! `tls.key_file`, the rustls server configuration (TLS 1.3 and 1.2, ALPN `http/1.1`, the
//! `ring` provider), the handshake of each accepted connection (bounded by the handshake
//! timeout, failures counted) and the reload of the two files.
//!
//! Reload: the files are read again every `tls.reload_interval_ms` and on SIGHUP; when their
//! contents changed and parse into a certificate chain with its matching key, new handshakes
//! use it. Connections already established keep the certificate they were served (rustls
//! resolves it once per handshake). A file that does not parse, or a key that does not match
//! the chain, keeps the old certificate; the error is logged and counted once per change.
//! Changes are detected by a SHA-256 of the two files, so the key's PEM is not kept.
//!
//! What happens after the handshake (the session's encrypted socket) is
//! `session/tls_socket.rs`; this module does not see a WebSocket byte.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use prometheus::{IntCounterVec, Opts};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::config::TlsConfig;

/// Why the certificate or key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: no PEM certificate in it")]
    NoCertificate { path: PathBuf },
    #[error("{path}: not a PEM certificate chain: {source}")]
    Certificate {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{path}: not a PEM private key (PKCS#8, PKCS#1 or SEC1): {source}")]
    Key {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{path}: unsupported private key: {source}")]
    UnsupportedKey { path: PathBuf, source: rustls::Error },
    #[error("the key in {key} does not belong to the first certificate of {cert}: {source}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The crypto provider every TLS object of the node uses (never the process default, which
/// another crate in the binary could set differently).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The two files' contents, as read.
type Contents = (Vec<u8>, Vec<u8>);

/// The shortest `tls.reload_interval_ms` other than 0 (`Config::validate`; the reload loop
/// polls no faster whatever it is given).
pub const MIN_RELOAD_INTERVAL_MS: u64 = 100;

/// A SHA-256 of the two files' contents: what a reload compares with, so the private key's
/// PEM is not kept in memory between reloads.
type Digest = [u8; 32];

/// What a client refused at accept on a TLS listener gets instead of the HTTP 503: a
/// plaintext TLS record, a fatal `internal_error` alert (level 2, description 80), which a
/// client in its handshake reports as such ("received fatal alert: InternalError").
pub const REFUSAL_ALERT: &[u8] = &[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x50];

fn digest(contents: &Contents) -> Digest {
    // rustls' own SHA-256 (ring), reached through a cipher suite: no other hash crate.
    let sha256 = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .expect("a TLS 1.3 suite")
        .common
        .hash_provider;
    let mut ctx = sha256.start();
    // The length first, so moving bytes from one file to the other changes the digest.
    ctx.update(&(contents.0.len() as u64).to_be_bytes());
    ctx.update(&contents.0);
    ctx.update(&contents.1);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Parses a PEM chain and key into what rustls serves, checking that they belong together.
fn certified_key(cert: &Path, key: &Path, contents: &Contents) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(&contents.0)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Certificate {
            path: cert.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: cert.to_owned() });
    }
    let der = PrivateKeyDer::from_pem_slice(&contents.1).map_err(|source| TlsError::Key {
        path: key.to_owned(),
        source,
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|source| TlsError::UnsupportedKey {
            path: key.to_owned(),
            source,
        })?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|source| TlsError::Mismatch {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    })?;
    Ok(ck)
}

/// Reads and checks the configured files (what `Config::validate` does at start).
pub fn check_files(cfg: &TlsConfig) -> Result<(), TlsError> {
    let (cert, key) = (Path::new(&cfg.cert_file), Path::new(&cfg.key_file));
    certified_key(cert, key, &(read(cert)?, read(key)?)).map(|_| ())
}

/// The certificate new handshakes get; swapped by a reload.
#[derive(Debug)]
struct Resolver(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// The TLS counters (no labels beyond a fixed reason or result).
#[derive(Clone)]
struct TlsMetrics {
    /// `herald_tls_handshake_failures_total{reason}`: `timeout`, `protocol` (not TLS, a
    /// refused version or cipher, an alert), `io` (the client went away).
    handshake_failures: IntCounterVec,
    /// `herald_tls_reloads_total{result}`: `ok`, `error`.
    reloads: IntCounterVec,
}

impl TlsMetrics {
    fn new(registry: &prometheus::Registry) -> Self {
        let vec = |name: &str, help: &str, label: &str, values: &[&str]| {
            let v = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            // Registered once per node; a second node in the same process (tests) has its
            // own registry.
            let _ = registry.register(Box::new(v.clone()));
            for value in values {
                v.with_label_values(&[value]);
            }
            v
        };
        Self {
            handshake_failures: vec(
                "herald_tls_handshake_failures_total",
                "TLS handshakes on the public listener that failed, by reason",
                "reason",
                &["timeout", "protocol", "io"],
            ),
            reloads: vec(
                "herald_tls_reloads_total",
                "Certificate reloads after the files changed (or SIGHUP), by result",
                "result",
                &["ok", "error"],
            ),
        }
    }
}

/// The public listener's TLS: see the module docs. Shared by the accept loop and the
/// reload task.
pub struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    resolver: Arc<Resolver>,
    cert_file: PathBuf,
    key_file: PathBuf,
    /// The digest of what the files held when last read (loaded or refused): a change is
    /// acted on, and reported, once.
    seen: Mutex<Option<Digest>>,
    metrics: TlsMetrics,
}

/// How a handshake failed, for the metric.
fn failure_reason(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::InvalidData => "protocol",
        _ => "io",
    }
}

impl Tls {
    /// Loads the configured files; `None` when TLS is not configured.
    pub fn from_config(cfg: &TlsConfig, registry: &prometheus::Registry) -> Result<Option<Arc<Self>>, TlsError> {
        if cfg.cert_file.is_empty() && cfg.key_file.is_empty() {
            return Ok(None);
        }
        let (cert_file, key_file) = (PathBuf::from(&cfg.cert_file), PathBuf::from(&cfg.key_file));
        let contents = (read(&cert_file)?, read(&key_file)?);
        let ck = certified_key(&cert_file, &key_file, &contents)?;
        let resolver = Arc::new(Resolver(RwLock::new(Arc::new(ck))));
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(Arc::new(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            resolver,
            cert_file,
            key_file,
            seen: Mutex::new(Some(digest(&contents))),
            metrics: TlsMetrics::new(registry),
        })))
    }

    /// Runs the TLS handshake on an accepted connection, to be done by `deadline`; a failure
    /// is counted, logged at debug, and the connection dropped. `stop` abandons it (not
    /// counted).
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        deadline: tokio::time::Instant,
        stop: &CancellationToken,
    ) -> Option<TlsStream<TcpStream>> {
        let peer = tcp.peer_addr().ok();
        let accept = tokio::time::timeout_at(deadline, self.acceptor.accept(tcp));
        let done = tokio::select! {
            r = accept => r,
            _ = stop.cancelled() => return None,
        };
        let reason = match done {
            Ok(Ok(stream)) => return Some(stream),
            Ok(Err(e)) => {
                tracing::debug!(?peer, error = %e, "TLS handshake failed");
                failure_reason(&e)
            }
            Err(_) => {
                tracing::debug!(?peer, "TLS handshake timed out");
                "timeout"
            }
        };
        self.metrics.handshake_failures.with_label_values(&[reason]).inc();
        None
    }

    /// Reads the files again; with `force` (SIGHUP) even when they look unchanged.
    pub fn reload(&self, force: bool) {
        let contents = read(&self.cert_file).and_then(|c| Ok((c, read(&self.key_file)?)));
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let contents = match contents {
            Ok(c) => c,
            Err(e) => {
                // Once per disappearance, not at every poll.
                if seen.take().is_some() || force {
                    self.metrics.reloads.with_label_values(&["error"]).inc();
                    tracing::error!(error = %e, "TLS certificate not reloaded; the old one stays in use");
                }
                return;
            }
        };
        let d = digest(&contents);
        if !force && seen.as_ref() == Some(&d) {
            return;
        }
        *seen = Some(d);
        drop(seen);
        let result = certified_key(&self.cert_file, &self.key_file, &contents);
        drop(contents);
        match result {
            Ok(ck) => {
                *self.resolver.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ck);
                self.metrics.reloads.with_label_values(&["ok"]).inc();
                tracing::info!(cert = %self.cert_file.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                self.metrics.reloads.with_label_values(&["error"]).inc();
                tracing::error!(error = %e, "TLS certificate not reloaded; the old one stays in use");
            }
        }
    }

    /// Polls the files every `interval` (never when zero, no faster than every
    /// [`MIN_RELOAD_INTERVAL_MS`]) and reloads on SIGHUP, until `stop`.
    pub async fn reload_loop(self: Arc<Self>, interval: Duration, stop: CancellationToken) {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no SIGHUP handler: TLS files reload by polling only");
                None
            }
        };
        let poll = !interval.is_zero();
        let mut tick = tokio::time::interval(interval.max(Duration::from_millis(MIN_RELOAD_INTERVAL_MS)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.reset();
        loop {
            let force = tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick(), if poll => false,
                Some(()) = async { hangup.as_mut()?.recv().await } => true,
            };
            // Two small files: read on a blocking thread, off the runtime's workers.
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || me.reload(force)).await;
        }
    }
}
