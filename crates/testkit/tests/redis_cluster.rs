//! The harness's Redis Cluster forms, answers about slots, moves a slot and fails over.

use std::time::Duration;

use herald_testkit::redis_cluster::RedisCluster;

#[test]
fn a_cluster_forms_moves_a_slot_and_fails_over() {
    let mut c = RedisCluster::start(3, 1).expect("cluster");
    assert_eq!(c.masters().unwrap().len(), 3);
    let slot = c.slot_of("herald:{room}").unwrap();
    assert_eq!(slot, c.slot_of("herald:{room}:s").unwrap());
    let owner = c.master_of_slot(slot).unwrap();
    let other = c.masters().unwrap().into_iter().find(|&m| m != owner).unwrap();
    c.migrate_slot(slot, other).unwrap();
    assert_eq!(c.master_of_slot(slot).unwrap(), other);
    c.node_mut(other).kill().unwrap();
    let promoted = c.wait_new_master(slot, other, Duration::from_secs(20)).unwrap();
    assert_ne!(promoted, other);
}
