//! Process-level chaos against the real `walrep` binary under faults.
//!
//! Two `walrep node` processes on loopback; each one's `--peer` is a TCP
//! proxy this test controls (`harness/proxy.rs`) that forwards to the other
//! node's `--listen`, so the test can cut the peer link either way. (A node
//! dials only its `--peer`; `--advertise` is sent in headers as leader
//! information. The partition tests check that the cut holds: the old
//! primary does not learn the new epoch before the link heals.)
//!
//! Each scenario runs several writers against whichever node they believe
//! is primary, each write with its own key, and records every outcome:
//! acknowledged (with its `(lsn, epoch)`), failed (the node answered with a
//! refusal) or unknown (timeout, connection error). A sampler per node polls
//! `/health` throughout. At the end the invariants are checked from outside
//! over the HTTP API (G1, G2, G4 of DESIGN.md, by the history checker the
//! simulation uses too, `walrep::testing::History`) and one line of figures
//! is printed per scenario.
//!
//! With an arbiter (`arbiter.rs`), a third process, `walrep witness`, holds
//! the register; each node's `--arbiter` is a proxy of its own in front of
//! it, so a test can cut one node from the witness, and the witness is
//! killed, restarted from its file or from nothing like a node.
//!
//! `three_nodes.rs` runs three nodes and a witness
//! (`walrep_daemon::cluster`), a proxy on each directed peer link (each
//! node's `--peer` list points each other node at a proxy of its own).
//!
//! `haproxy.rs` puts real HAProxy (the shipped config) in front of the
//! pair and writes through it only.
//!
//! `harness/` is what the scenarios share (the cluster behind proxies, the
//! load, the checks, the figures); each other module is one family of
//! faults.

#[path = "../daemon_support/mod.rs"]
mod daemon_support;
mod harness;

mod arbiter;
mod crashes;
mod haproxy;
mod partitions;
mod pauses;
mod restarts;
mod three_nodes;
mod torn_tails;
