//! Where the load goes: `ws://` node URLs and `http://` admin URLs, parsed and resolved once
//! before a run, and the loopback rule that keeps the tool from flooding anything its
//! operator does not own.
//!
//! No TLS: `wss://` and `https://` are refused (terminate TLS in front of the nodes, or point
//! the tool at the nodes themselves).

use std::net::SocketAddr;

use anyhow::{bail, Context, Result};

/// A parsed and resolved URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The URL as given, for reports.
    pub url: String,
    /// `Host` header value (`host:port`).
    pub host: String,
    /// Request target, e.g. `/ws` or `/ws?x=1`; for admin URLs the base path without a
    /// trailing slash (usually empty).
    pub path: String,
    /// The first address the host resolved to.
    pub addr: SocketAddr,
}

impl Target {
    /// `path` plus a query parameter, keeping an existing query.
    pub fn path_with_query(&self, key: &str, value: &str) -> String {
        let sep = if self.path.contains('?') { '&' } else { '?' };
        format!("{}{sep}{key}={value}", self.path)
    }

    /// An admin endpoint under this base URL, e.g. `/metrics`.
    pub fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.path)
    }
}

/// Splits `scheme://authority/path` and checks the scheme.
fn split(url: &str, scheme: &str, default_port: u16) -> Result<(String, String)> {
    let Some((s, rest)) = url.split_once("://") else {
        bail!("{url:?} is not a {scheme}:// URL");
    };
    if !s.eq_ignore_ascii_case(scheme) {
        bail!("{url:?}: only {scheme}:// is supported (no TLS)");
    }
    let cut = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(cut);
    if authority.is_empty() || authority.contains('@') {
        bail!("{url:?}: bad host");
    }
    let has_port = authority.rfind(':').is_some_and(|i| !authority[i..].contains(']'));
    let host = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:{default_port}")
    };
    Ok((host, path.to_owned()))
}

async fn resolve(url: &str, host: String, path: String) -> Result<Target> {
    let addr = tokio::net::lookup_host(&host)
        .await
        .with_context(|| format!("resolving {host}"))?
        .next()
        .with_context(|| format!("{host} resolved to no address"))?;
    Ok(Target {
        url: url.to_owned(),
        host,
        path,
        addr,
    })
}

/// Parses and resolves a `ws://host[:port]/path` URL (port 80 by default, path `/ws`
/// when empty).
pub async fn ws(url: &str) -> Result<Target> {
    let (host, mut path) = split(url, "ws", 80)?;
    if path.is_empty() || path.starts_with('?') {
        path = format!("/ws{path}");
    }
    resolve(url, host, path).await
}

/// Parses and resolves an `http://host[:port][/base]` admin URL (port 80 by default).
pub async fn http(url: &str) -> Result<Target> {
    let (host, path) = split(url, "http", 80)?;
    if path.contains('?') {
        bail!("{url:?}: an admin base URL takes no query");
    }
    resolve(url, host, path.trim_end_matches('/').to_owned()).await
}

/// Refuses any target that is not a loopback address unless the operator said they own
/// it. This tool generates enough traffic to hurt a service; aiming it is a deliberate act.
pub fn check_loopback(targets: &[&Target], i_own_the_target: bool) -> Result<()> {
    if i_own_the_target {
        return Ok(());
    }
    for t in targets {
        if !t.addr.ip().is_loopback() {
            bail!(
                "{} resolves to {}, which is not a loopback address; herald-loadtest only floods \
                 machines you own: pass --i-own-the-target if this one is yours",
                t.url,
                t.addr.ip()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parses_urls() {
        let t = ws("ws://127.0.0.1:8080").await.unwrap();
        assert_eq!((t.host.as_str(), t.path.as_str()), ("127.0.0.1:8080", "/ws"));
        assert_eq!(t.path_with_query("topics", "a"), "/ws?topics=a");
        let t = ws("ws://localhost:9/ws?x=1").await.unwrap();
        assert_eq!(t.path_with_query("topics", "a"), "/ws?x=1&topics=a");
        assert!(t.addr.ip().is_loopback());
        let a = http("http://127.0.0.1:9090/").await.unwrap();
        assert_eq!(a.endpoint("/metrics"), "/metrics");
        assert!(ws("wss://127.0.0.1/ws").await.is_err());
        assert!(ws("http://127.0.0.1/ws").await.is_err());
        assert!(http("http://u@127.0.0.1/").await.is_err());
    }

    #[tokio::test]
    async fn refuses_non_loopback_unless_owned() {
        let mut t = ws("ws://127.0.0.1:1/ws").await.unwrap();
        assert!(check_loopback(&[&t], false).is_ok());
        t.addr = "192.0.2.1:80".parse().unwrap();
        let e = check_loopback(&[&t], false).unwrap_err().to_string();
        assert!(e.contains("--i-own-the-target"), "{e}");
        assert!(check_loopback(&[&t], true).is_ok());
    }
}
