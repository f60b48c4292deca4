//! Test harness for Herald: real processes and nodes on ephemeral loopback ports, with
//! fault injection, so integration tests exercise the system the way operators run it.
//! It owns process and socket plumbing for tests; it holds no production logic.

pub mod redis;
