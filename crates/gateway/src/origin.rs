//! The Origin allow-list of the public listener (`auth.allowed_origins`,
//! `auth.allow_missing_origin`): a defence against cross-site WebSocket hijacking. Browsers
//! send the page's origin with every WebSocket upgrade and let any page open a WebSocket to
//! any host, so without this check a page on another site could connect with the user's
//! cookies or network position. An upgrade whose `Origin` is not allowed gets 403
//! `origin_not_allowed` before anything else of the request is looked at (see `public.rs`).
//!
//! Entries are parsed once at start ([`OriginPolicy::new`]; `Config::validate` reports bad
//! ones): `scheme://host[:port]`, no path, where the host may start with `*.` to allow every
//! subdomain of the rest (`https://*.example.com` allows `https://a.example.com` and
//! `https://a.b.example.com`, not `https://example.com`). Scheme and host compare
//! case-insensitively; the port exactly, with the scheme's default (80 for `http` and
//! `ws`, 443 for `https` and `wss`) standing in for an absent one, so `https://a.com` and
//! `https://a.com:443` are the same origin. An empty list allows every origin. `null` (the
//! origin of sandboxed frames and `file:` pages) is never allowed by a non-empty list.
//! Requests without an `Origin` (non-browser clients) pass unless `allow_missing_origin`
//! is false. An `Origin` header that is not a valid origin, or more than one, is refused.

use hyper::header::ORIGIN;
use hyper::HeaderMap;

use crate::config::AuthConfig;

/// A configured entry that is not an origin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{entry:?} is not an origin like https://app.example.com or https://*.example.com: {why}")]
pub struct OriginError {
    pub entry: String,
    pub why: &'static str,
}

/// An origin, normalised: lower-case scheme and host, explicit port (0: the scheme has no
/// default and none was given).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Parsed {
    scheme: String,
    host: String,
    port: u16,
}

fn default_port(scheme: &str) -> u16 {
    match scheme {
        "http" | "ws" => 80,
        "https" | "wss" => 443,
        _ => 0,
    }
}

/// Parses `scheme://host[:port]`. `wildcard` allows a leading `*.` on the host.
fn parse(s: &str, wildcard: bool) -> Result<Parsed, &'static str> {
    let (scheme, rest) = s.split_once("://").ok_or("no scheme:// at the start")?;
    if scheme.is_empty()
        || !scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        || !scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        return Err("the scheme must be letters, digits, + - .");
    }
    let scheme = scheme.to_ascii_lowercase();
    if rest.contains(['/', '?', '#', '@']) {
        return Err("an origin has no path, query, fragment or user");
    }
    // `[v6]:port`, `[v6]`, `host:port`, `host`.
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or("an IPv6 host needs its closing ]")?;
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("not an IPv6 address between [ ]");
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("junk after the IPv6 host")?),
        };
        (format!("[{}]", addr.to_ascii_lowercase()), port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_ascii_lowercase(), Some(p)),
            None => (rest.to_ascii_lowercase(), None),
        }
    };
    let port = match port {
        None => default_port(&scheme),
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && !p.starts_with('+') => n,
            _ => return Err("the port must be a number from 1 to 65535"),
        },
    };
    let name = match host.strip_prefix("*.") {
        Some(rest) if wildcard => rest,
        Some(_) => return Err("a wildcard host"),
        None => host.as_str(),
    };
    let name_ok = name.starts_with('[')
        || (!name.is_empty()
            && name
                .split('.')
                .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')));
    if !name_ok {
        return Err("the host must be a DNS name, an IPv4 address or [IPv6], optionally after *.");
    }
    Ok(Parsed { scheme, host, port })
}

/// Why an upgrade's origin was refused (the 403 message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginRefusal {
    #[error("this node only accepts WebSocket upgrades that carry an Origin header")]
    Missing,
    #[error("the Origin header is not a single valid origin")]
    Invalid,
    #[error("WebSocket upgrades from this origin are not allowed (auth.allowed_origins)")]
    NotAllowed,
}

/// See the module docs.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    exact: Vec<Parsed>,
    /// Host holds the suffix after `*`, with its dot: `.example.com`.
    wildcard: Vec<Parsed>,
    allow_missing: bool,
}

impl OriginPolicy {
    /// Parses the configured list; every bad entry is reported.
    pub fn new(allowed: &[String], allow_missing: bool) -> Result<Self, Vec<OriginError>> {
        let mut policy = Self {
            allow_missing,
            ..Default::default()
        };
        let mut errors = Vec::new();
        for entry in allowed {
            match parse(entry.trim(), true) {
                Ok(mut p) => match p.host.strip_prefix('*') {
                    Some(suffix) => {
                        p.host = suffix.to_owned();
                        policy.wildcard.push(p);
                    }
                    None => policy.exact.push(p),
                },
                Err(why) => errors.push(OriginError {
                    entry: entry.clone(),
                    why,
                }),
            }
        }
        if errors.is_empty() {
            Ok(policy)
        } else {
            Err(errors)
        }
    }

    pub fn from_config(auth: &AuthConfig) -> Result<Self, Vec<OriginError>> {
        Self::new(&auth.allowed_origins, auth.allow_missing_origin)
    }

    /// True when any origin may connect.
    fn any(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }

    /// Checks an upgrade request's `Origin` header(s).
    pub fn check(&self, headers: &HeaderMap) -> Result<(), OriginRefusal> {
        let mut all = headers.get_all(ORIGIN).iter();
        let Some(value) = all.next() else {
            return if self.allow_missing {
                Ok(())
            } else {
                Err(OriginRefusal::Missing)
            };
        };
        if all.next().is_some() {
            return Err(OriginRefusal::Invalid);
        }
        if self.any() {
            return Ok(());
        }
        let origin = value
            .to_str()
            .ok()
            .and_then(|s| parse(s, false).ok())
            .ok_or(OriginRefusal::Invalid)?;
        if self.allows(&origin) {
            Ok(())
        } else {
            Err(OriginRefusal::NotAllowed)
        }
    }

    fn allows(&self, o: &Parsed) -> bool {
        self.exact.iter().any(|e| e == o)
            || self.wildcard.iter().any(|w| {
                w.scheme == o.scheme && w.port == o.port && o.host.len() > w.host.len() && o.host.ends_with(&w.host)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn policy(list: &[&str], allow_missing: bool) -> OriginPolicy {
        OriginPolicy::new(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>(), allow_missing).unwrap()
    }

    fn check(p: &OriginPolicy, origin: Option<&str>) -> Result<(), OriginRefusal> {
        let mut h = HeaderMap::new();
        if let Some(o) = origin {
            h.insert(ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        p.check(&h)
    }

    #[test]
    fn exact_origins_compare_scheme_and_host_case_insensitively_and_ports_exactly() {
        let p = policy(
            &["https://App.Example.com", "http://localhost:3000", "http://[::1]:8080"],
            true,
        );
        assert_eq!(check(&p, Some("https://app.example.com")), Ok(()));
        assert_eq!(check(&p, Some("HTTPS://APP.EXAMPLE.COM:443")), Ok(()));
        assert_eq!(check(&p, Some("http://localhost:3000")), Ok(()));
        assert_eq!(check(&p, Some("http://[::1]:8080")), Ok(()));
        for refused in [
            "http://app.example.com",
            "https://app.example.com:8443",
            "https://app.example.com.evil.com",
            "https://evilapp.example.com",
            "http://localhost",
            "http://localhost:3001",
            "null",
        ] {
            assert!(check(&p, Some(refused)).is_err(), "{refused}");
        }
        assert_eq!(check(&p, Some("null")), Err(OriginRefusal::Invalid));
        assert_eq!(check(&p, Some("https://a.com/path")), Err(OriginRefusal::Invalid));
    }

    #[test]
    fn wildcards_allow_subdomains_only() {
        let p = policy(&["https://*.example.com"], true);
        assert_eq!(check(&p, Some("https://a.example.com")), Ok(()));
        assert_eq!(check(&p, Some("https://a.b.Example.COM")), Ok(()));
        assert_eq!(check(&p, Some("https://example.com")), Err(OriginRefusal::NotAllowed));
        assert_eq!(check(&p, Some("https://aexample.com")), Err(OriginRefusal::NotAllowed));
        assert_eq!(check(&p, Some("http://a.example.com")), Err(OriginRefusal::NotAllowed));
        assert_eq!(
            check(&p, Some("https://a.example.com:444")),
            Err(OriginRefusal::NotAllowed)
        );
        assert_eq!(
            check(&p, Some("https://a.example.com.evil.org")),
            Err(OriginRefusal::NotAllowed)
        );
    }

    #[test]
    fn missing_and_empty_lists() {
        assert_eq!(check(&policy(&[], true), Some("https://anything.test")), Ok(()));
        assert_eq!(check(&policy(&[], true), None), Ok(()));
        assert_eq!(check(&policy(&[], false), None), Err(OriginRefusal::Missing));
        assert_eq!(check(&policy(&["https://a.com"], true), None), Ok(()));
        assert_eq!(
            check(&policy(&["https://a.com"], false), None),
            Err(OriginRefusal::Missing)
        );
        let mut h = HeaderMap::new();
        h.append(ORIGIN, HeaderValue::from_static("https://a.com"));
        h.append(ORIGIN, HeaderValue::from_static("https://a.com"));
        assert_eq!(policy(&["https://a.com"], true).check(&h), Err(OriginRefusal::Invalid));
    }

    #[test]
    fn bad_entries_are_all_reported() {
        let list: Vec<String> = [
            "https://ok.com",
            "example.com",
            "https://a.com/",
            "https://a.com:0",
            "https://a.com:99999",
            "https://*",
            "https://a.*.com",
            "https://[zz]",
            "null",
            "https://user@a.com",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let errors = OriginPolicy::new(&list, true).unwrap_err();
        assert_eq!(errors.len(), list.len() - 1, "{errors:?}");
        assert!(errors[0].to_string().contains("\"example.com\""));
    }
}
