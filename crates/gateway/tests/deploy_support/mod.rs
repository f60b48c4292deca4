//! Shared by the `deploy_*` test binaries: reading `deploy/`, YAML to JSON (with Compose's
//! merge keys), the configuration key list, loading a configuration the way the binary
//! does, and the small parsers the checks need (durations, HAProxy's server lines).
//! Test plumbing only.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use herald_gateway::{CliOverrides, Config};
use herald_testkit::fleet::repo_root;
use serde_json::{Map, Value};
use yaml_rust2::{Yaml, YamlLoader};

pub fn deploy() -> PathBuf {
    repo_root().join("deploy")
}

pub fn read(rel: &str) -> String {
    let p = deploy().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// YAML to JSON, resolving Compose's merge keys (`<<: *anchor`); aliases are resolved by the
/// loader.
pub fn to_json(y: &Yaml) -> Value {
    match y {
        Yaml::Real(s) => s.parse::<f64>().map(Value::from).unwrap_or(Value::Null),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::String(s) => Value::from(s.clone()),
        Yaml::Boolean(b) => Value::from(*b),
        Yaml::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        Yaml::Hash(h) => {
            let mut m = Map::new();
            if let Some(base) = h.get(&Yaml::String("<<".into())) {
                let bases = match base {
                    Yaml::Array(a) => a.clone(),
                    one => vec![one.clone()],
                };
                for b in &bases {
                    if let Value::Object(bm) = to_json(b) {
                        m.extend(bm);
                    }
                }
            }
            for (k, v) in h {
                let key = match k {
                    Yaml::String(s) if s == "<<" => continue,
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    other => panic!("unsupported YAML key {other:?}"),
                };
                m.insert(key, to_json(v));
            }
            Value::Object(m)
        }
        _ => Value::Null,
    }
}

pub fn yaml_docs(rel: &str) -> Vec<Value> {
    YamlLoader::load_from_str(&read(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
        .iter()
        .map(to_json)
        .collect()
}

pub fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

/// Every configuration key (`admin.listen`, ...): the reference the config loader uses.
pub fn known_keys() -> BTreeSet<String> {
    herald_gateway::config::known_keys().into_keys().collect()
}

/// A stand-in for secrets (API keys need 16+ characters).
pub const SECRET: &str = "deploy-test-secret-0123456789";

/// Compose-style interpolation: `${VAR:-default}` becomes the default, `${VAR}` and
/// `${VAR:?message}` (required, e.g. the API key) a stand-in secret.
pub fn interpolate(v: &str) -> String {
    let mut out = String::new();
    let mut rest = v;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closing brace") + start;
        let inner = &rest[start + 2..end];
        match inner.split_once(":-") {
            Some((_, default)) => out.push_str(default),
            None => out.push_str(SECRET),
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Loads a configuration the way the binary does from `env` (and `file`), after checking
/// that every `HERALD_*` name is a real key; fails on any warning.
pub fn load(what: &str, env: &[(String, String)], file: Option<&Path>) -> Config {
    let known = known_keys();
    for (name, _) in env {
        if let Some(rest) = name.strip_prefix("HERALD_") {
            let key = rest.to_ascii_lowercase().replace("__", ".");
            assert!(
                known.contains(&key),
                "{what}: {name} names no configuration key ({key})"
            );
        }
    }
    let (config, warnings) = Config::load(file, env.iter().cloned(), &CliOverrides::default())
        .unwrap_or_else(|e| panic!("{what}: the configuration does not load: {e}"));
    assert!(warnings.is_empty(), "{what}: {warnings:?}");
    config
}

pub fn port(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("no port in {addr}"))
}

/// The longest a node takes to exit after SIGTERM.
pub fn drain_bound(c: &Config) -> Duration {
    c.drain_delay() + c.close_window() + 2 * c.grace()
}

/// `30s`, `1m30s`, `35` (seconds) and the like.
pub fn seconds(v: &str) -> Duration {
    let v = v.trim();
    if let Ok(n) = v.parse::<u64>() {
        return Duration::from_secs(n);
    }
    let mut total = 0u64;
    let mut num = String::new();
    for c in v.chars() {
        if c.is_ascii_digit() {
            num.push(c);
        } else {
            let n: u64 = num.parse().unwrap_or_else(|_| panic!("bad duration {v}"));
            total += match c {
                's' => n,
                'm' => 60 * n,
                'h' => 3600 * n,
                _ => panic!("bad duration {v}"),
            };
            num.clear();
        }
    }
    assert!(num.is_empty(), "bad duration {v}");
    Duration::from_secs(total)
}

/// Configuration lines of HAProxy's deploy file (comments and blank lines dropped).
pub fn haproxy_lines() -> Vec<String> {
    read("haproxy/haproxy.cfg")
        .lines()
        .map(|l| l.split('#').next().unwrap().trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// HAProxy's `server NAME HOST:PORT check port ADMIN` lines: name -> (host, port, admin).
pub fn haproxy_servers() -> BTreeMap<String, (String, u16, u16)> {
    haproxy_lines()
        .iter()
        .filter(|l| l.starts_with("server "))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let (host, p) = w[2].rsplit_once(':').unwrap();
            let admin = w.iter().position(|x| *x == "port").map(|i| w[i + 1].parse().unwrap());
            (
                w[1].to_owned(),
                (host.to_owned(), p.parse().unwrap(), admin.expect("check port")),
            )
        })
        .collect()
}
