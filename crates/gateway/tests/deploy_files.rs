//! `deploy/` checked by everything that can check it without a container engine, part 1:
//! the load balancers, Compose and the dashboard (`deploy_platforms.rs` has Kubernetes,
//! systemd and the Dockerfile).
//!
//! - the real `haproxy -c` and `nginx -t` accept the load-balancer configs (HAProxy's both as
//!   shipped and as `scripts/cluster.sh` renders it for `make cluster`);
//! - every YAML and JSON file under `deploy/` parses;
//! - the Compose file agrees with the configuration reference: every `HERALD_*` variable is
//!   a real key (the key list is `Config::default()` flattened, as `config.rs` builds it),
//!   the configuration it produces loads without a warning, exposed ports, HAProxy's servers
//!   and Prometheus' targets match the listen settings, and the stop timeout covers the
//!   drain (`drain_delay + close_window + 2 x grace`, its worst case);
//! - every probe path any deploy file uses answers 200 on a real node, and the image's
//!   health-check script tells a healthy node from a missing or draining one;
//! - the Grafana dashboard names only metrics the node exports.

mod deploy_support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use deploy_support::*;
use herald_testkit::fleet::{haproxy_check, nginx_bin, render_haproxy, repo_root, NodeSpec, TempDir};
use herald_testkit::node::{http_request, TestNode};
use serde_json::Value;
use yaml_rust2::YamlLoader;

#[test]
fn haproxy_config_passes_haproxy_check_as_shipped_and_as_rendered() {
    let shipped = deploy().join("haproxy/haproxy.cfg");
    let out = haproxy_check(&shipped).unwrap();
    for l in out.lines().filter(|l| l.contains("WARNING") || l.contains("ALERT")) {
        // The shipped file names Compose services, which do not resolve here.
        assert!(l.contains("could not resolve address 'herald-"), "{l}");
    }
    let lines = haproxy_lines();
    for needed in [
        "mode http",
        "timeout tunnel 1h",
        "timeout client 30s",
        "timeout server 30s",
        "balance leastconn",
        "option httpchk GET /readyz HTTP/1.1",
        "http-check expect status 200",
    ] {
        assert!(lines.iter().any(|l| l == needed), "haproxy.cfg lacks `{needed}`");
    }
    assert!(
        !lines.iter().any(|l| l.contains("on-marked-down")),
        "cutting tunnels when a node goes down defeats the spread close"
    );
    assert!(haproxy_servers().values().all(|(_, _, admin)| *admin != 0));

    // The copy `make cluster` runs: loopback addresses, no warning at all.
    let dir = TempDir::new("haproxy-render").unwrap();
    let nodes: Vec<NodeSpec> = (1..=3)
        .map(|i| NodeSpec::new(&format!("herald-{i}"), &[]).unwrap())
        .collect();
    let out_cfg = dir.join("haproxy.cfg");
    let lb = "127.0.0.1:18080".parse().unwrap();
    let stats = "127.0.0.1:18404".parse().unwrap();
    render_haproxy(&out_cfg, lb, stats, &nodes, None, None).unwrap();
    let out = haproxy_check(&out_cfg).unwrap();
    assert!(!out.contains("WARNING") && !out.contains("ALERT"), "{out}");
    let rendered = std::fs::read_to_string(&out_cfg).unwrap();
    for n in &nodes {
        let line = format!("server {} {} check port {}", n.name, n.ws_addr(), n.admin_port);
        assert!(rendered.contains(&line), "rendered config lacks `{line}`:\n{rendered}");
    }
    assert!(rendered.contains("bind 127.0.0.1:18080") && rendered.contains("bind 127.0.0.1:18404"));
    assert!(rendered.contains("timeout tunnel 1h") && rendered.contains("balance leastconn"));
}

#[test]
fn nginx_config_passes_nginx_t() {
    let prefix = TempDir::new("nginx-t").unwrap();
    std::fs::create_dir_all(prefix.join("logs")).unwrap();
    let conf = deploy().join("nginx/nginx.conf");
    let o = Command::new(nginx_bin())
        .arg("-t")
        .arg("-p")
        .arg(&*prefix)
        .arg("-e")
        .arg(prefix.join("logs/error.log"))
        .arg("-c")
        .arg(&conf)
        .output()
        .expect("nginx is installed (make deps)");
    assert!(
        o.status.success(),
        "nginx -t failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let text = read("nginx/nginx.conf");
    for needed in [
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        "proxy_read_timeout 1h;",
        "least_conn;",
        "proxy_next_upstream error timeout http_502 http_503;",
        // The local fleet's ports (scripts/cluster.sh defaults).
        "listen 127.0.0.1:18080;",
        "server 127.0.0.1:18081",
        "server 127.0.0.1:18082",
        "server 127.0.0.1:18083",
    ] {
        assert!(text.contains(needed), "nginx.conf lacks `{needed}`");
    }
    let script = std::fs::read_to_string(repo_root().join("scripts/cluster.sh")).unwrap();
    assert!(script.contains("CLUSTER_LB_PORT:-18080") && script.contains("CLUSTER_WS_BASE:-18080"));
}

#[test]
fn every_yaml_and_json_file_under_deploy_parses() {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&deploy(), &mut files);
    let (mut yaml, mut json) = (0, 0);
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        match f.extension().and_then(|e| e.to_str()) {
            Some("yml" | "yaml") => {
                let docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
                assert!(!docs.is_empty(), "{} is empty", f.display());
                yaml += 1;
            }
            Some("json") => {
                serde_json::from_str::<Value>(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
                json += 1;
            }
            _ => {}
        }
    }
    assert!(yaml >= 12 && json >= 1, "found {yaml} YAML and {json} JSON files");
}

#[test]
fn compose_agrees_with_the_config_reference() {
    let compose = yaml_docs("docker-compose.yml").remove(0);
    let services = compose["services"].as_object().expect("services");
    let names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    let expected: BTreeSet<&str> = [
        "redis",
        "herald-1",
        "herald-2",
        "herald-3",
        "haproxy",
        "prometheus",
        "grafana",
    ]
    .into();
    assert_eq!(names, expected);

    let servers = haproxy_servers();
    let mut admin_targets = BTreeSet::new();
    for name in ["herald-1", "herald-2", "herald-3"] {
        let svc = &services[name];
        let env: Vec<(String, String)> = svc["environment"]
            .as_object()
            .expect("environment as a mapping")
            .iter()
            .map(|(k, v)| (k.clone(), interpolate(s(v))))
            .collect();
        let c = load(name, &env, None);
        assert_eq!(c.node_id, name);
        assert_eq!(c.relay.kind, "redis");
        assert_eq!(
            c.redis.url, "redis://redis:6379/",
            "the redis service on its default port"
        );
        assert!(!c.admin.api_keys.is_empty(), "a non-loopback admin listener needs keys");
        let expose: BTreeSet<u16> = svc["expose"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| s(p).parse().unwrap())
            .collect();
        let (ws, admin) = (port(&c.listen), port(&c.admin.listen));
        assert_eq!(expose, [ws, admin].into(), "{name}: expose matches the listen settings");
        let health: Vec<&str> = svc["healthcheck"]["test"].as_array().unwrap().iter().map(s).collect();
        assert!(
            health.contains(&"/healthz") && health.contains(&admin.to_string().as_str()),
            "{name}: health check {health:?} must probe /healthz on the admin port {admin}"
        );
        assert_eq!(s(&svc["stop_signal"]), "SIGTERM");
        let stop = seconds(s(&svc["stop_grace_period"]));
        assert!(
            stop > drain_bound(&c),
            "{name}: stop_grace_period {stop:?} must exceed the drain's {:?}",
            drain_bound(&c)
        );
        assert_eq!(s(&svc["build"]["dockerfile"]), "deploy/docker/Dockerfile");
        assert!(deploy()
            .join(s(&svc["build"]["context"]))
            .join("deploy/docker/Dockerfile")
            .is_file());
        // HAProxy sends clients to the public port and checks the admin port.
        let (host, p, check) = servers.get(name).unwrap_or_else(|| panic!("no HAProxy server {name}"));
        assert_eq!(
            (host.as_str(), *p, *check),
            (name, ws, admin),
            "HAProxy's server line for {name}"
        );
        admin_targets.insert(format!("{name}:{admin}"));
    }
    assert_eq!(servers.len(), 3);

    // Every bind-mounted file exists.
    for (name, svc) in services {
        for v in svc["volumes"].as_array().into_iter().flatten() {
            let src = s(v).split(':').next().unwrap();
            if src.starts_with("./") {
                assert!(deploy().join(src).exists(), "{name}: {src} does not exist");
            }
        }
    }

    // HAProxy publishes the ports its config binds.
    let binds: BTreeSet<u16> = haproxy_lines()
        .iter()
        .filter_map(|l| l.strip_prefix("bind "))
        .map(port)
        .collect();
    let published: BTreeSet<u16> = services["haproxy"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let (host, container) = s(p).rsplit_once(':').unwrap();
            assert_eq!(host, container, "same port outside and inside");
            container.parse().unwrap()
        })
        .collect();
    assert_eq!(binds, published);

    // Prometheus scrapes every node's admin listener and HAProxy's stats frontend.
    let prom = yaml_docs("prometheus/prometheus.yml").remove(0);
    for job in prom["scrape_configs"].as_array().unwrap() {
        let targets: BTreeSet<String> = job["static_configs"][0]["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| s(t).to_owned())
            .collect();
        assert_eq!(s(&job["metrics_path"]), "/metrics");
        match s(&job["job_name"]) {
            "herald" => assert_eq!(targets, admin_targets),
            "haproxy" => assert_eq!(targets, ["haproxy:8404".to_owned()].into()),
            other => panic!("unexpected job {other}"),
        }
    }
    assert!(binds.contains(&8404));

    // Grafana's datasource is the prometheus service.
    let ds = yaml_docs("grafana/provisioning/datasources/prometheus.yml").remove(0);
    assert_eq!(s(&ds["datasources"][0]["url"]), "http://prometheus:9090");
    let provider = yaml_docs("grafana/provisioning/dashboards/herald.yml").remove(0);
    let mounted = services["grafana"]["volumes"].as_array().unwrap().iter().any(|v| {
        s(v) == format!(
            "./grafana/dashboards:{}:ro",
            s(&provider["providers"][0]["options"]["path"])
        )
    });
    assert!(mounted, "the dashboards directory is mounted where the provider looks");
}

/// Every probe path any deploy file uses.
fn probe_paths() -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    for l in haproxy_lines().iter().filter(|l| l.starts_with("option httpchk")) {
        paths.insert(l.split_whitespace().nth(3).unwrap().to_owned());
    }
    let compose = yaml_docs("docker-compose.yml").remove(0);
    for (_, svc) in compose["services"].as_object().unwrap() {
        for t in svc["healthcheck"]["test"].as_array().into_iter().flatten() {
            if s(t).starts_with('/') && !s(t).starts_with("/usr") {
                paths.insert(s(t).to_owned());
            }
        }
    }
    let deployment = &yaml_docs("k8s/deployment.yaml")[0];
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    for probe in ["readinessProbe", "livenessProbe"] {
        paths.insert(s(&container[probe]["httpGet"]["path"]).to_owned());
    }
    paths.insert(s(&yaml_docs("k8s/servicemonitor.yaml")[0]["spec"]["endpoints"][0]["path"]).to_owned());
    for job in yaml_docs("prometheus/prometheus.yml")[0]["scrape_configs"]
        .as_array()
        .unwrap()
    {
        if job["job_name"] == "herald" {
            paths.insert(s(&job["metrics_path"]).to_owned());
        }
    }
    paths
}

fn healthcheck(path: &str, port: u16) -> bool {
    Command::new(deploy().join("docker/healthcheck.sh"))
        .args([path, &port.to_string()])
        .output()
        .expect("bash runs the health check")
        .status
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_paths_answer_on_a_real_node_and_the_image_health_check_works() {
    let node = TestNode::start_with(|c| c.shutdown.drain_delay_ms = 1000)
        .await
        .unwrap();
    let paths = probe_paths();
    assert_eq!(
        paths,
        ["/healthz", "/metrics", "/readyz"].map(String::from).into(),
        "probe paths used in deploy/"
    );
    for p in &paths {
        let (status, _) = http_request(node.admin_addr(), "GET", p, &[], b"").await.unwrap();
        assert_eq!(status, 200, "GET {p} on the admin listener");
    }
    let admin = node.admin_addr().port();
    let check = |path: &'static str| tokio::task::spawn_blocking(move || healthcheck(path, admin));
    assert!(check("/healthz").await.unwrap(), "healthy node");
    assert!(check("/readyz").await.unwrap(), "ready node");
    assert!(!check("/nope").await.unwrap(), "404 is not healthy");
    let closed = herald_testkit::fleet::free_port().unwrap();
    assert!(
        !tokio::task::spawn_blocking(move || healthcheck("/healthz", closed))
            .await
            .unwrap(),
        "nothing listening"
    );
    node.node.begin_drain();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!check("/readyz").await.unwrap(), "a draining node is not ready");
    assert!(check("/healthz").await.unwrap(), "but it is alive");
    node.shutdown().await;
}

#[test]
fn grafana_dashboard_names_only_exported_metrics() {
    let metrics = herald_broker::BrokerMetrics::new().render();
    let mut exported = BTreeSet::new();
    for l in metrics.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let mut w = rest.split_whitespace();
            let (name, kind) = (w.next().unwrap(), w.next().unwrap());
            exported.insert(name.to_owned());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    exported.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    let dash: Value = serde_json::from_str(&read("grafana/dashboards/herald.json")).unwrap();
    let mut used = BTreeSet::new();
    let mut uids = BTreeSet::new();
    for p in dash["panels"].as_array().unwrap() {
        if p["type"] == "row" {
            continue;
        }
        uids.insert(s(&p["datasource"]["uid"]).to_owned());
        for t in p["targets"].as_array().unwrap() {
            let expr = s(&t["expr"]);
            let mut rest = expr;
            while let Some(i) = rest.find("herald_") {
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[i + name.len()..];
                used.insert(name);
            }
        }
    }
    let unknown: Vec<_> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard names metrics nobody exports: {unknown:?}"
    );
    for needed in [
        "herald_connections",
        "herald_messages_published_total",
        "herald_messages_delivered_total",
        "herald_messages_dropped_total",
        "herald_frame_write_latency_seconds_bucket",
        "herald_relay_up",
    ] {
        assert!(used.contains(needed), "the dashboard does not show {needed}");
    }
    let ds = yaml_docs("grafana/provisioning/datasources/prometheus.yml").remove(0);
    assert_eq!(uids, [s(&ds["datasources"][0]["uid"]).to_owned()].into());
}

#[test]
fn haproxy_sends_the_client_address_and_the_nodes_trust_only_haproxy() {
    let lines = haproxy_lines();
    let default_server = lines
        .iter()
        .find(|l| l.starts_with("default-server"))
        .expect("a default-server line");
    assert!(default_server.contains("send-proxy-v2"), "{default_server}");
    // Health checks go to the admin port, which never expects a header: none is sent.
    assert!(!lines.iter().any(|l| l.contains("check-send-proxy")));
    assert!(haproxy_servers().values().all(|(_, _, admin)| *admin != 0));

    let compose = yaml_docs("docker-compose.yml").remove(0);
    let haproxy_ip = s(&compose["services"]["haproxy"]["networks"]["default"]["ipv4_address"]).to_owned();
    for name in ["herald-1", "herald-2", "herald-3"] {
        let env: Vec<(String, String)> = compose["services"][name]["environment"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), interpolate(s(v))))
            .collect();
        let c = load(name, &env, None);
        assert!(c.proxy.proxy_protocol, "{name}");
        assert_eq!(
            c.proxy.trusted,
            std::slice::from_ref(&haproxy_ip),
            "{name} trusts HAProxy alone"
        );
    }

    // `make cluster`: HAProxy connects from 127.0.0.2, which the generated node configs trust.
    let script = std::fs::read_to_string(repo_root().join("scripts/cluster.sh")).unwrap();
    assert!(script.contains("HAPROXY_SOURCE=127.0.0.2"));
    assert!(script.contains("--source \"$HAPROXY_SOURCE\""));
    assert!(script.contains("trusted = [\"$HAPROXY_SOURCE\"]\nproxy_protocol = true"));
}
