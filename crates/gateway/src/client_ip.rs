//! Which address a public connection comes from, behind load balancers: the `[proxy]`
//! configuration as a policy ([`ClientAddrs`]).
//!
//! - PROXY protocol (`proxy.proxy_protocol`): a connection whose direct peer is in
//!   `proxy.trusted` must start with a PROXY header (v1 or v2, `proxy_protocol.rs`), read at
//!   accept before hyper, within the handshake timeout; its source address is the client's.
//!   A missing or bad header closes the connection (counted in
//!   `herald_proxy_protocol_errors_total`). Untrusted peers are served as they are: a header
//!   they send is not HTTP, and hyper answers 400.
//! - `X-Forwarded-For` (`proxy.forwarded_for`): believed only when the address the
//!   connection came from (after PROXY) is trusted. The client is the rightmost entry that
//!   is not itself trusted: every proxy appends the address it saw, so the entries on the
//!   right were written by our proxies, and everything left of the first untrusted one was
//!   written by whoever that is (the leftmost entry is whatever the client chose to send).
//!
//! The admin listener does not take part: it serves operators and load-balancer health
//! checks (HAProxy sends no PROXY header to a `check port`), and its peers are what they are.
//! All addresses are compared in canonical form (an IPv4-mapped IPv6 address is IPv4).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hyper::header::HeaderMap;
use ipnet::IpNet;
use prometheus::{IntCounter, IntCounterVec};
use tokio::net::TcpStream;

use crate::config::ProxyConfig;
use crate::proxy_protocol;

/// Entries of `X-Forwarded-For` looked at, at most (from the right): deeper chains of
/// trusted proxies do not exist in practice, and the work stays bounded.
const MAX_HOPS: usize = 16;

/// See the module docs.
pub struct ClientAddrs {
    trusted: Vec<IpNet>,
    proxy_protocol: bool,
    forwarded_for: bool,
    /// `herald_proxy_protocol_headers_total`: headers accepted.
    headers: IntCounter,
    /// `herald_proxy_protocol_errors_total{reason}`: connections closed for their header.
    errors: IntCounterVec,
}

/// Parses an entry of `proxy.trusted` or `limits.per_ip_exempt`: an address (`10.0.0.1`,
/// `::1`) or a CIDR range (`10.0.0.0/8`; host bits are ignored).
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(canonical_net(net.trunc()));
    }
    s.parse::<IpAddr>()
        .map(|ip| IpNet::from(ip.to_canonical()))
        .map_err(|_| format!("{s:?} is neither an address nor a CIDR range like 10.0.0.0/8"))
}

/// `::ffff:10.0.0.0/104` is `10.0.0.0/8`, so mapped client addresses match it.
fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        other => other,
    }
}

/// Parses a list of [`parse_net`] entries; the first bad one is the error.
pub fn parse_nets(list: &[String]) -> Result<Vec<IpNet>, String> {
    list.iter().map(|s| parse_net(s)).collect()
}

/// `a` with its address in canonical form.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

impl ClientAddrs {
    /// The policy of a validated `[proxy]` section.
    pub fn new(c: &ProxyConfig, metrics: &herald_broker::BrokerMetrics) -> Self {
        Self {
            trusted: parse_nets(&c.trusted).unwrap_or_default(),
            proxy_protocol: c.proxy_protocol,
            forwarded_for: c.forwarded_for,
            headers: metrics.proxy_headers.clone(),
            errors: metrics.proxy_header_errors.clone(),
        }
    }

    /// `ip` is one of `proxy.trusted`.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// A connection from `peer` must start with a PROXY header.
    pub fn expects_header(&self, peer: IpAddr) -> bool {
        self.proxy_protocol && self.is_trusted(peer)
    }

    /// The address a connection from `peer` comes from: `peer` itself, or, when `peer` must
    /// send a PROXY header, the header's source. `None`: the header was missing or bad (or
    /// late), counted and logged; close the connection.
    pub async fn accept(&self, tcp: &mut TcpStream, peer: SocketAddr, deadline: Duration) -> Option<SocketAddr> {
        let peer = canonical(peer);
        if !self.expects_header(peer.ip()) {
            return Some(peer);
        }
        match proxy_protocol::read_header(tcp, deadline).await {
            Ok(source) => {
                self.headers.inc();
                Some(source.map_or(peer, canonical))
            }
            Err(e) => {
                self.errors.with_label_values(&[e.label()]).inc();
                tracing::debug!(%peer, error = %e, "closing a trusted peer's connection: bad PROXY header");
                None
            }
        }
    }

    /// The client address of a request that came from `from` (after PROXY): `from`, or the
    /// rightmost untrusted `X-Forwarded-For` entry when `from` is trusted and
    /// `proxy.forwarded_for` is on (port 0: the header carries none). An entry that is not
    /// an address ends the walk at the last address believed.
    pub fn resolve(&self, from: SocketAddr, headers: &HeaderMap) -> SocketAddr {
        let from = canonical(from);
        if !self.forwarded_for || !self.is_trusted(from.ip()) {
            return from;
        }
        // Several X-Forwarded-For fields form one list, in order (RFC 9110 §5.3).
        // Split the raw bytes, not the decoded text: a client's non-ASCII garbage must not
        // make a proxy's appended entries (to the right of it) unreadable.
        let values: Vec<&[u8]> = headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        let mut client = from;
        let hops = values
            .iter()
            .rev()
            .flat_map(|v| v.rsplit(|b| *b == b','))
            .take(MAX_HOPS);
        for hop in hops {
            let Some(ip) = std::str::from_utf8(hop).ok().and_then(|h| parse_hop(h.trim())) else {
                break;
            };
            client = SocketAddr::new(ip, 0);
            if !self.is_trusted(ip) {
                break;
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: `1.2.3.4`, `2001:db8::1`, `1.2.3.4:5678`, `[2001:db8::1]:80`.
fn parse_hop(s: &str) -> Option<IpAddr> {
    let ip = s
        .parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(trusted: &[&str], xff: bool) -> ClientAddrs {
        let c = ProxyConfig {
            trusted: trusted.iter().map(|s| s.to_string()).collect(),
            proxy_protocol: false,
            forwarded_for: xff,
        };
        ClientAddrs::new(&c, &herald_broker::BrokerMetrics::new())
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn trusted_entries_parse_as_addresses_or_ranges() {
        assert_eq!(parse_net("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_net("::1").unwrap().to_string(), "::1/128");
        assert_eq!(parse_net("::ffff:10.0.0.0/104").unwrap().to_string(), "10.0.0.0/8");
        assert!(parse_net("10.0.0.0/33").is_err() && parse_net("lb.local").is_err());
        let p = policy(&["10.0.0.0/8"], true);
        assert!(
            p.is_trusted("::ffff:10.9.9.9".parse().unwrap()),
            "IPv4-mapped peers match"
        );
        assert!(!p.is_trusted("11.0.0.1".parse().unwrap()));
    }

    #[test]
    fn the_rightmost_untrusted_entry_is_the_client() {
        let p = policy(&["10.0.0.0/8"], true);
        let lb: SocketAddr = "10.0.0.5:4000".parse().unwrap();
        let got = |h: &[&str]| p.resolve(lb, &xff(h)).ip().to_string();
        // The client forged the first entry; the LB appended what it saw.
        assert_eq!(got(&["6.6.6.6, 203.0.113.9"]), "203.0.113.9");
        assert_eq!(got(&["6.6.6.6", "203.0.113.9, 10.0.0.7"]), "203.0.113.9");
        assert_eq!(got(&["[2001:db8::9]:443"]), "2001:db8::9");
        assert_eq!(got(&["10.0.0.8, 10.0.0.7"]), "10.0.0.8", "all trusted: the leftmost");
        assert_eq!(got(&["203.0.113.9, garbage, 10.0.0.7"]), "10.0.0.7", "stops at garbage");
        assert_eq!(got(&[]), "10.0.0.5");
        let direct: SocketAddr = "198.51.100.1:5000".parse().unwrap();
        assert_eq!(p.resolve(direct, &xff(&["1.1.1.1"])), direct, "untrusted peer: ignored");
        let off = policy(&["10.0.0.0/8"], false);
        assert_eq!(off.resolve(lb, &xff(&["1.1.1.1"])), lb, "forwarded_for off");
    }

    #[test]
    fn a_bad_byte_left_of_the_proxys_entry_does_not_hide_it() {
        let cfg = crate::config::ProxyConfig {
            trusted: vec!["127.0.0.1".into()],
            proxy_protocol: false,
            forwarded_for: true,
        };
        let addrs = ClientAddrs::new(&cfg, &herald_broker::BrokerMetrics::new());
        let mut headers = HeaderMap::new();
        // One line, as a proxy that appends to the client's value writes it.
        headers.insert(
            "x-forwarded-for",
            hyper::header::HeaderValue::from_bytes(b"\xff, 203.0.113.9").unwrap(),
        );
        let got = addrs.resolve("127.0.0.1:4000".parse().unwrap(), &headers);
        assert_eq!(got.ip(), "203.0.113.9".parse::<IpAddr>().unwrap());
    }
}
