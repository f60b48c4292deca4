//! `deploy/` checked without a container engine, part 2: the Kubernetes manifests, the
//! systemd unit and the Dockerfile agree with the configuration reference (every `HERALD_*`
//! variable is a real key and the configuration each produces loads without a warning;
//! container ports, probes and Service targets match the listen settings; stop timeouts
//! cover the drain's worst case). `deploy_files.rs` has the rest.

mod deploy_support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use deploy_support::*;
use herald_testkit::fleet::{repo_root, TempDir};
use serde_json::Value;

#[test]
fn kubernetes_manifests_agree_with_the_config_reference() {
    let mut objects: BTreeMap<(String, String), Value> = BTreeMap::new();
    let mut files = BTreeSet::new();
    for e in std::fs::read_dir(deploy().join("k8s")).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if name == "kustomization.yaml" {
            continue;
        }
        files.insert(name.clone());
        for doc in yaml_docs(&format!("k8s/{name}")) {
            let key = (s(&doc["kind"]).to_owned(), s(&doc["metadata"]["name"]).to_owned());
            objects.insert(key, doc);
        }
    }
    let kust = yaml_docs("k8s/kustomization.yaml").remove(0);
    let listed: BTreeSet<String> = kust["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| s(r).to_owned())
        .collect();
    assert_eq!(listed, files, "kustomization.yaml lists every manifest");
    let get = |kind: &str, name: &str| {
        objects
            .get(&(kind.to_owned(), name.to_owned()))
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };

    let deployment = get("Deployment", "herald");
    let pod = &deployment["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    let toml_text = s(&get("ConfigMap", "herald-config")["data"]["herald.toml"]);
    let dir = TempDir::new("k8s-config").unwrap();
    let file = dir.join("herald.toml");
    std::fs::write(&file, toml_text).unwrap();
    let env: Vec<(String, String)> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let value = if let Some(v) = e["value"].as_str() {
                v.to_owned()
            } else if e["valueFrom"]["secretKeyRef"].is_object() {
                SECRET.to_owned()
            } else if e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name" {
                "herald-5d9c7b6f4-x2x7q".to_owned()
            } else {
                panic!("unexpected env entry {e}")
            };
            (s(&e["name"]).to_owned(), value)
        })
        .collect();
    let c = load("k8s", &env, Some(&file));
    assert_eq!(c.relay.kind, "redis");

    // The config file is mounted where the container's args point.
    let args: Vec<&str> = container["args"].as_array().unwrap().iter().map(s).collect();
    let cfg_path = args[args.iter().position(|a| *a == "--config").unwrap() + 1];
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| cfg_path.starts_with(s(&m["mountPath"])))
        .expect("config volume mounted");
    let volume = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert_eq!(s(&volume["configMap"]["name"]), "herald-config");
    assert!(cfg_path.ends_with("/herald.toml"));

    // Ports and probes.
    let ports: BTreeMap<&str, u16> = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (s(&p["name"]), p["containerPort"].as_u64().unwrap() as u16))
        .collect();
    assert_eq!(ports["ws"], port(&c.listen));
    assert_eq!(ports["admin"], port(&c.admin.listen));
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let g = &container[probe]["httpGet"];
        assert_eq!((s(&g["path"]), s(&g["port"])), (path, "admin"), "{probe}");
    }

    // Stopping: preStop, then the drain, within the grace period.
    let pre_stop: Vec<&str> = container["lifecycle"]["preStop"]["exec"]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(s)
        .collect();
    assert_eq!(pre_stop[0], "/bin/sleep");
    let pre_stop = Duration::from_secs(pre_stop[1].parse().unwrap());
    let grace = Duration::from_secs(pod["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap());
    assert!(
        grace > pre_stop + drain_bound(&c),
        "terminationGracePeriodSeconds {grace:?} must exceed preStop {pre_stop:?} + drain {:?}",
        drain_bound(&c)
    );

    // Selectors and named ports line up.
    let pod_labels = pod["metadata"]["labels"].as_object().unwrap();
    let matches = |selector: &Value| {
        selector
            .as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| pod_labels.get(k) == Some(v))
    };
    for svc in ["herald", "herald-admin"] {
        let spec = &get("Service", svc)["spec"];
        assert!(matches(&spec["selector"]), "Service {svc} selects the pods");
        for p in spec["ports"].as_array().unwrap() {
            assert!(ports.contains_key(s(&p["targetPort"])), "Service {svc}: {p}");
        }
    }
    assert!(matches(
        &get("PodDisruptionBudget", "herald")["spec"]["selector"]["matchLabels"]
    ));
    assert!(matches(&deployment["spec"]["selector"]["matchLabels"]));
    let hpa = &get("HorizontalPodAutoscaler", "herald")["spec"];
    assert_eq!(
        (s(&hpa["scaleTargetRef"]["kind"]), s(&hpa["scaleTargetRef"]["name"])),
        ("Deployment", "herald")
    );
    let monitor = &get("ServiceMonitor", "herald")["spec"];
    let admin_svc = get("Service", "herald-admin");
    for (k, v) in monitor["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            &admin_svc["metadata"]["labels"][k], v,
            "ServiceMonitor selects herald-admin"
        );
    }
    let endpoint = &monitor["endpoints"][0];
    assert_eq!(s(&endpoint["path"]), "/metrics");
    assert!(admin_svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == endpoint["port"]));

    // redis.url names the example Redis Service and its port.
    let redis_svc = get("Service", "herald-redis");
    let redis_port = redis_svc["spec"]["ports"][0]["port"].as_u64().unwrap();
    assert_eq!(c.redis.url, format!("redis://herald-redis:{redis_port}/"));
    // The pod runs as the image's user.
    assert_eq!(pod["spec"]["securityContext"]["runAsUser"].as_u64(), Some(10001));
    assert!(read("docker/Dockerfile").contains("--uid 10001"));
}

/// `Key=value` lines of a systemd unit, by key.
fn unit_keys(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in text.lines().map(str::trim) {
        if l.starts_with('#') || l.starts_with('[') || l.is_empty() {
            continue;
        }
        if let Some((k, v)) = l.split_once('=') {
            out.entry(k.to_owned()).or_default().push(v.to_owned());
        }
    }
    out
}

#[test]
fn systemd_unit_agrees_with_its_config() {
    let text = read("systemd/herald.service");
    let keys = unit_keys(&text);
    let one = |k: &str| keys.get(k).and_then(|v| v.last()).unwrap_or_else(|| panic!("no {k}="));
    let exec = one("ExecStart");
    assert!(exec.contains("--config /etc/herald/herald.toml"), "{exec}");
    let env: Vec<(String, String)> = keys
        .get("Environment")
        .into_iter()
        .flatten()
        .filter_map(|e| e.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let c = load("systemd", &env, Some(&deploy().join("systemd/herald.toml")));
    assert_eq!(one("KillSignal"), "SIGTERM");
    let stop = seconds(one("TimeoutStopSec"));
    assert!(
        stop > drain_bound(&c),
        "TimeoutStopSec {stop:?} must exceed the drain's {:?}",
        drain_bound(&c)
    );
    for hardening in [
        "NoNewPrivileges",
        "ProtectSystem",
        "DynamicUser",
        "CapabilityBoundingSet",
    ] {
        assert!(keys.contains_key(hardening), "no {hardening}=");
    }
    // systemd's own checker, where it exists, on a copy that runs the binary just built.
    let has_analyze = Command::new("systemd-analyze").arg("--version").output().is_ok();
    if has_analyze {
        let dir = TempDir::new("systemd").unwrap();
        let unit = dir.join("herald.service");
        std::fs::write(
            &unit,
            text.replace("/usr/local/bin/herald", env!("CARGO_BIN_EXE_herald")),
        )
        .unwrap();
        let o = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&unit)
            .output()
            .unwrap();
        assert!(
            o.status.success() && o.stderr.is_empty(),
            "systemd-analyze verify: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    } else {
        eprintln!("systemd-analyze not installed: skipped `systemd-analyze verify`");
    }
}

/// Dockerfile instructions with continuation lines joined.
fn dockerfile() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for l in read("docker/Dockerfile").lines() {
        let t = l.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(part) => {
                cur.push_str(part);
                cur.push(' ');
            }
            None => {
                cur.push_str(t);
                let (k, v) = cur.split_once(' ').unwrap_or((&cur, ""));
                out.push((k.to_owned(), v.trim().to_owned()));
                cur.clear();
            }
        }
    }
    out
}

#[test]
fn dockerfile_agrees_with_the_config_reference() {
    let ins = dockerfile();
    let all = |k: &str| {
        ins.iter()
            .filter(|(i, _)| i == k)
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
    };
    let froms = all("FROM");
    assert!(
        froms.len() == 2 && froms[0].ends_with("AS builder"),
        "multi-stage: {froms:?}"
    );
    assert!(
        froms[1].starts_with("debian:") && froms[1].contains("-slim"),
        "{froms:?}"
    );
    let user = all("USER");
    assert!(
        user.len() == 1 && !user[0].starts_with("root") && !user[0].starts_with('0'),
        "{user:?}"
    );
    let env: Vec<(String, String)> = all("ENV")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("ENV KEY=value");
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let c = load("Dockerfile", &env, None);
    let exposed: BTreeSet<u16> = all("EXPOSE")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(exposed, [port(&c.listen), port(&c.admin.listen)].into());
    let health = all("HEALTHCHECK");
    assert!(
        health.len() == 1 && health[0].contains("herald-healthcheck") && health[0].contains("\"/healthz\""),
        "{health:?}"
    );
    assert_eq!(all("STOPSIGNAL"), ["SIGTERM"]);
    for copy in all("COPY").iter().filter(|v| !v.starts_with("--from")) {
        let src = copy.split_whitespace().next().unwrap();
        if src != "." {
            assert!(repo_root().join(src).exists(), "COPY {src}: no such file");
        }
    }
    assert!(all("ENTRYPOINT")[0].contains("/usr/local/bin/herald"));
}
