//! A real Redis Cluster for tests: `redis-server --cluster-enabled yes` processes on free
//! loopback ports, joined with `redis-cli --cluster create`, with the verbs the cluster
//! relay tests need: read the topology from the servers ([`RedisCluster::topology`]), find
//! the master of a key's slot, kill a master and wait for its replica to take over, move a
//! slot to another master while traffic flows ([`RedisCluster::migrate_slot`]), and count
//! sharded subscriptions (`PUBSUB SHARDNUMSUB`) on the slot's owner.
//!
//! Everything is asked of Redis itself (`CLUSTER KEYSLOT`, `CLUSTER NODES`), never computed
//! here, so the tests check the relay's slot arithmetic against the server's.
//! Timeouts are short (`cluster-node-timeout` 1 s) so a failover takes a few seconds, and
//! `cluster-require-full-coverage no` keeps the other masters serving while one is down.

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::redis::{RedisServer, Resp};

/// `cluster-node-timeout` of every node, in milliseconds.
pub const NODE_TIMEOUT_MS: u64 = 1000;

/// How long [`RedisCluster::start`] waits for the cluster to be formed and replicas synced.
pub const FORM_TIMEOUT: Duration = Duration::from_secs(30);

/// One node as `CLUSTER NODES` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    pub id: String,
    pub port: u16,
    pub master: bool,
    /// The master's id, for a replica.
    pub master_id: Option<String>,
    /// Flagged `fail` or `fail?` by the node asked.
    pub failing: bool,
    /// Slot ranges served (inclusive), for a master.
    pub slots: Vec<(u16, u16)>,
}

impl ClusterNode {
    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
    }
}

/// A Redis Cluster of real processes; every process is killed on drop.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// `masters` masters with `replicas` replicas each (at least 3 masters, as
    /// `redis-cli --cluster create` requires), formed and with every replica in sync.
    pub fn start(masters: usize, replicas: usize) -> Result<Self> {
        if masters < 3 {
            bail!("redis-cli --cluster create needs at least 3 masters");
        }
        let total = masters * (1 + replicas);
        let mut nodes = Vec::with_capacity(total);
        for _ in 0..total {
            nodes.push(RedisServer::start_cluster_node(vec![
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-config-file".into(),
                "nodes.conf".into(),
                "--cluster-node-timeout".into(),
                NODE_TIMEOUT_MS.to_string(),
                "--cluster-require-full-coverage".into(),
                "no".into(),
                "--cluster-replica-validity-factor".into(),
                "0".into(),
            ])?);
        }
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())));
        args.extend([
            "--cluster-replicas".into(),
            replicas.to_string(),
            "--cluster-yes".into(),
        ]);
        let out = Command::new("redis-cli")
            .args(&args)
            .output()
            .context("running redis-cli --cluster create (install redis-tools)")?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let cluster = Self { nodes };
        cluster.wait_formed(FORM_TIMEOUT)?;
        Ok(cluster)
    }

    /// Every process, in start order (killed ones included).
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The node at `index`, to kill, pause or restart.
    pub fn node_mut(&mut self, index: usize) -> &mut RedisServer {
        &mut self.nodes[index]
    }

    /// `redis://127.0.0.1:<port>/` of every node: the seeds for `redis.urls`.
    pub fn seed_urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The index of the node listening on `port`.
    pub fn index_of_port(&self, port: u16) -> Result<usize> {
        self.nodes
            .iter()
            .position(|n| n.port() == port)
            .ok_or_else(|| anyhow!("no node on port {port}"))
    }

    /// A node that answers, to ask about the cluster.
    fn any_live(&self) -> Result<&RedisServer> {
        self.nodes
            .iter()
            .find(|n| n.ping_timeout(Duration::from_millis(300)).is_ok())
            .ok_or_else(|| anyhow!("no cluster node answers"))
    }

    /// `CLUSTER KEYSLOT key`, as the server computes it.
    pub fn slot_of(&self, key: &str) -> Result<u16> {
        match self.any_live()?.query(&["CLUSTER", "KEYSLOT", key])?.into_result()? {
            Resp::Integer(n) => Ok(n as u16),
            other => bail!("CLUSTER KEYSLOT answered {other}"),
        }
    }

    /// The cluster as `node` sees it (`CLUSTER NODES`).
    pub fn topology_from(&self, node: &RedisServer) -> Result<Vec<ClusterNode>> {
        let text = match node.query(&["CLUSTER", "NODES"])?.into_result()? {
            Resp::Bulk(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
            other => bail!("CLUSTER NODES answered {other}"),
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(parse_node_line)
            .collect()
    }

    /// The cluster as the first live node sees it.
    pub fn topology(&self) -> Result<Vec<ClusterNode>> {
        self.topology_from(self.any_live()?)
    }

    /// The index of the master serving `slot`, as the first live node sees it.
    pub fn master_of_slot(&self, slot: u16) -> Result<usize> {
        let owner = self
            .topology()?
            .into_iter()
            .find(|n| n.master && !n.failing && n.serves(slot))
            .ok_or_else(|| anyhow!("no master serves slot {slot}"))?;
        self.index_of_port(owner.port)
    }

    /// The index of the master serving `key`'s slot.
    pub fn master_of_key(&self, key: &str) -> Result<usize> {
        self.master_of_slot(self.slot_of(key)?)
    }

    /// The indexes of the masters (not failing), in port order.
    pub fn masters(&self) -> Result<Vec<usize>> {
        let mut m: Vec<(u16, usize)> = Vec::new();
        for n in self.topology()? {
            if n.master && !n.failing && !n.slots.is_empty() {
                m.push((n.port, self.index_of_port(n.port)?));
            }
        }
        m.sort();
        Ok(m.into_iter().map(|(_, i)| i).collect())
    }

    /// `PUBSUB SHARDNUMSUB channel` on the master serving the channel's slot.
    pub fn shard_numsub(&self, channel: &str) -> Result<i64> {
        let owner = &self.nodes[self.master_of_key(channel)?];
        match owner.query(&["PUBSUB", "SHARDNUMSUB", channel])?.into_result()? {
            Resp::Array(Some(items)) if items.len() == 2 => match &items[1] {
                Resp::Integer(n) => Ok(*n),
                other => bail!("PUBSUB SHARDNUMSUB count {other}"),
            },
            other => bail!("PUBSUB SHARDNUMSUB answered {other}"),
        }
    }

    /// Polls [`shard_numsub`](Self::shard_numsub) until it is `want`.
    pub fn wait_shard_numsub(&self, channel: &str, want: i64, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let last = self.shard_numsub(channel);
            if matches!(last, Ok(n) if n == want) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("PUBSUB SHARDNUMSUB {channel} is {last:?}, not {want}, after {within:?}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every running node reports `cluster_state:ok`, sees every slot served
    /// by a master that is not failing, and every replica's link to its master is up.
    pub fn wait_formed(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let last = self.check_formed();
            match last {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.context(format!("the cluster did not settle within {within:?}")))
                }
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn check_formed(&self) -> Result<()> {
        for node in &self.nodes {
            if node.ping_timeout(Duration::from_millis(300)).is_err() {
                continue; // killed or paused: not part of the check
            }
            let info = bulk_text(node.query(&["CLUSTER", "INFO"])?)?;
            if !info.contains("cluster_state:ok") {
                bail!("node {} is not ok yet", node.port());
            }
            let topo = self.topology_from(node)?;
            let served: usize = topo
                .iter()
                .filter(|n| n.master && !n.failing)
                .flat_map(|n| n.slots.iter())
                .map(|&(a, b)| usize::from(b - a) + 1)
                .sum();
            if served != 16384 {
                bail!("node {} sees {served} slots served", node.port());
            }
            let repl = bulk_text(node.query(&["INFO", "replication"])?)?;
            if repl.contains("role:slave") && !repl.contains("master_link_status:up") {
                bail!("replica {} is not in sync yet", node.port());
            }
        }
        Ok(())
    }

    /// Waits until every live replica has applied all its master has written (its
    /// `slave_repl_offset` equals the master's `master_repl_offset`), so a failover right
    /// after loses nothing that was acknowledged before it.
    pub fn wait_replicated(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        let field = |text: &str, name: &str| -> Option<i64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
        };
        loop {
            let mut behind = None;
            for node in &self.nodes {
                if node.ping_timeout(Duration::from_millis(300)).is_err() {
                    continue;
                }
                let repl = bulk_text(node.query(&["INFO", "replication"])?)?;
                if !repl.contains("role:slave") {
                    continue;
                }
                let master_port: u16 = field(&repl, "master_port").unwrap_or(0) as u16;
                let Ok(mi) = self.index_of_port(master_port) else {
                    continue;
                };
                let mrepl = bulk_text(self.nodes[mi].query(&["INFO", "replication"])?)?;
                let (have, want) = (field(&repl, "slave_repl_offset"), field(&mrepl, "master_repl_offset"));
                if have.is_none() || have != want {
                    behind = Some(format!("replica {} at {have:?}, master at {want:?}", node.port()));
                }
            }
            match behind {
                None => return Ok(()),
                Some(b) if Instant::now() >= deadline => bail!("replication did not catch up: {b}"),
                Some(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Waits until a master other than `old` (a node index) serves `slot`, as every
    /// running node sees it; returns the new master's index.
    pub fn wait_new_master(&self, slot: u16, old: usize, within: Duration) -> Result<usize> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(i) = self.master_of_slot(slot) {
                if i != old && self.wait_formed(Duration::from_millis(1)).is_ok() {
                    return Ok(i);
                }
            }
            if Instant::now() >= deadline {
                bail!("no new master for slot {slot} within {within:?}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Moves `slot` to the master at index `to` the way `redis-cli --cluster reshard`
    /// does: IMPORTING on the target, MIGRATING on the source, `MIGRATE` of its keys in
    /// batches, then `SETSLOT .. NODE` on both and on every other master. Redis pushes
    /// `sunsubscribe` to the slot's sharded subscribers on the source at the end.
    pub fn migrate_slot(&self, slot: u16, to: usize) -> Result<()> {
        let from = self.master_of_slot(slot)?;
        if from == to {
            return Ok(());
        }
        let topo = self.topology()?;
        let id_of = |i: usize| -> Result<String> {
            let port = self.nodes[i].port();
            topo.iter()
                .find(|n| n.port == port)
                .map(|n| n.id.clone())
                .ok_or_else(|| anyhow!("node {port} not in the topology"))
        };
        let (src, dst) = (&self.nodes[from], &self.nodes[to]);
        let (src_id, dst_id) = (id_of(from)?, id_of(to)?);
        let s = slot.to_string();
        ok(dst.query(&["CLUSTER", "SETSLOT", &s, "IMPORTING", &src_id])?)?;
        ok(src.query(&["CLUSTER", "SETSLOT", &s, "MIGRATING", &dst_id])?)?;
        loop {
            let keys = match src.query(&["CLUSTER", "GETKEYSINSLOT", &s, "100"])?.into_result()? {
                Resp::Array(Some(items)) => items
                    .into_iter()
                    .filter_map(|k| match k {
                        Resp::Bulk(Some(b)) => Some(b),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
                other => bail!("GETKEYSINSLOT answered {other}"),
            };
            if keys.is_empty() {
                break;
            }
            let port = dst.port().to_string();
            let mut args: Vec<Vec<u8>> = ["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"]
                .iter()
                .map(|a| a.as_bytes().to_vec())
                .collect();
            args.extend(keys);
            ok(src.query(&args)?)?;
        }
        ok(dst.query(&["CLUSTER", "SETSLOT", &s, "NODE", &dst_id])?)?;
        ok(src.query(&["CLUSTER", "SETSLOT", &s, "NODE", &dst_id])?)?;
        for m in self.masters()? {
            if m != from && m != to {
                let _ = self.nodes[m].query(&["CLUSTER", "SETSLOT", &s, "NODE", &dst_id]);
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ports: Vec<u16> = self.nodes.iter().map(RedisServer::port).collect();
        f.debug_struct("RedisCluster").field("ports", &ports).finish()
    }
}

/// One line of `CLUSTER NODES`:
/// `<id> <ip:port@cport[,host]> <flags> <master> <ping> <pong> <epoch> <link> <slot>...`.
fn parse_node_line(line: &str) -> Result<ClusterNode> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 8 {
        bail!("short CLUSTER NODES line {line:?}");
    }
    let addr = f[1].split('@').next().unwrap_or_default();
    let port: u16 = addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow!("no port in {line:?}"))?;
    let flags: Vec<&str> = f[2].split(',').collect();
    let master = flags.contains(&"master");
    let failing = flags.iter().any(|fl| *fl == "fail" || *fl == "fail?");
    let master_id = (f[3] != "-").then(|| f[3].to_string());
    let mut slots = Vec::new();
    for s in &f[8..] {
        if s.starts_with('[') {
            continue; // a slot being imported or migrated
        }
        let (a, b) = match s.split_once('-') {
            Some((a, b)) => (a.parse()?, b.parse()?),
            None => {
                let n: u16 = s.parse()?;
                (n, n)
            }
        };
        slots.push((a, b));
    }
    Ok(ClusterNode {
        id: f[0].to_string(),
        port,
        master,
        master_id,
        failing,
        slots,
    })
}

fn bulk_text(r: Resp) -> Result<String> {
    match r.into_result()? {
        Resp::Bulk(Some(b)) => Ok(String::from_utf8_lossy(&b).into_owned()),
        Resp::Simple(s) => Ok(s),
        other => bail!("expected text, got {other}"),
    }
}

fn ok(r: Resp) -> Result<()> {
    r.into_result().map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_lines_parse() {
        let n = parse_node_line("07c3 127.0.0.1:30004@31004 master - 0 1426238317239 4 connected 0-10 12 [13->-abc]")
            .unwrap();
        assert_eq!(n.port, 30004);
        assert!(n.master && !n.failing);
        assert_eq!(n.slots, vec![(0, 10), (12, 12)]);
        assert!(n.serves(12) && !n.serves(13));
        let r = parse_node_line("e7d1 127.0.0.1:30005@31005,h myself,slave 07c3 0 0 4 connected").unwrap();
        assert!(!r.master);
        assert_eq!(r.master_id.as_deref(), Some("07c3"));
    }
}
