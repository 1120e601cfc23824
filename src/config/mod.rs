//! Settings of one node. Every field has a unit and a default; `validate`
//! (`validate.rs`) refuses combinations that cannot work and names the
//! setting.

mod validate;

use crate::types::NodeId;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;
pub use validate::{ConfigError, Setting};

/// When `Replicator::apply` returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CommitMode {
    /// Durable on the primary only.
    Async,
    /// Also received and written (not fsynced) by the standby.
    RemoteWrite,
    /// Also fsynced by the standby. The default: acknowledged writes survive
    /// the loss of either node.
    #[default]
    RemoteFlush,
    /// Also applied by the standby's state machine: a read there sees it.
    RemoteApply,
}

impl CommitMode {
    /// Whether writes wait for the standby (every mode but `Async`).
    pub fn is_sync(self) -> bool {
        self != CommitMode::Async
    }

    /// The mode's name, as `FromStr` parses it (`"remote-flush"`).
    pub fn as_str(self) -> &'static str {
        match self {
            CommitMode::Async => "async",
            CommitMode::RemoteWrite => "remote-write",
            CommitMode::RemoteFlush => "remote-flush",
            CommitMode::RemoteApply => "remote-apply",
        }
    }
}

impl fmt::Display for CommitMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CommitMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "async" => CommitMode::Async,
            "remote-write" => CommitMode::RemoteWrite,
            "remote-flush" => CommitMode::RemoteFlush,
            "remote-apply" => CommitMode::RemoteApply,
            other => {
                return Err(format!(
                    "unknown commit mode {other:?}; expected async, remote-write, remote-flush or remote-apply"
                ));
            }
        })
    }
}

/// What a primary in a sync mode does when its standby stops answering for
/// `sync_timeout`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OnStandbyLoss {
    /// Go on alone (and say so). Crashes lose nothing acknowledged; a true
    /// partition can (what the old primary acknowledged alone is dropped at
    /// rejoin, counted and exported).
    #[default]
    Solo,
    /// Refuse writes until the standby is back: nothing acknowledged is ever
    /// lost, at the price of availability.
    Block,
}

impl OnStandbyLoss {
    /// The policy's name, as `FromStr` parses it (`"solo"`).
    pub fn as_str(self) -> &'static str {
        match self {
            OnStandbyLoss::Solo => "solo",
            OnStandbyLoss::Block => "block",
        }
    }
}

impl fmt::Display for OnStandbyLoss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OnStandbyLoss {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "solo" => Ok(OnStandbyLoss::Solo),
            "block" => Ok(OnStandbyLoss::Block),
            other => Err(format!(
                "unknown standby-loss policy {other:?}; expected solo or block"
            )),
        }
    }
}

/// The role a node takes when its data directory is new. After that the
/// persisted epoch and leader decide.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum InitialRole {
    /// Start as the primary at epoch 1, accepting writes. Give it to one
    /// node of a new pair only.
    Primary,
    /// Start as a standby waiting for a primary. The default: two standbys
    /// never write (promote one), two primaries would diverge.
    #[default]
    Standby,
}

impl InitialRole {
    /// The role's name, as `FromStr` parses it (`"standby"`).
    pub fn as_str(self) -> &'static str {
        match self {
            InitialRole::Primary => "primary",
            InitialRole::Standby => "standby",
        }
    }
}

impl fmt::Display for InitialRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for InitialRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "primary" => Ok(InitialRole::Primary),
            "standby" => Ok(InitialRole::Standby),
            other => Err(format!(
                "unknown role {other:?}; expected primary or standby"
            )),
        }
    }
}

/// Settings of one node. Build it with `..Config::default()` and set at
/// least the names and addresses; `Config::DEFAULT_*` are the defaults.
/// `Config::validate` (called by `ReplicaBuilder::start`) refuses what
/// cannot work.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's name, unique in the cluster.
    pub node_id: NodeId,
    /// The peer's name; requests from any other node are refused.
    pub peer_id: NodeId,
    /// Where the peer serves `Replication` (host:port), as this node dials it.
    pub peer_addr: String,
    /// Where this node serves `Replication`, as the peer should dial it.
    pub advertise_addr: String,
    /// Where this node serves its clients (the engine's API), passed to the
    /// peer so refused writes can name the primary's client address.
    pub advertise_client_addr: Option<String>,
    /// Requests carrying another cluster id are refused.
    pub cluster_id: String,
    /// Role taken on a fresh data directory.
    pub initial_role: InitialRole,
    /// When `Replicator::apply` returns (see `CommitMode`).
    pub commit_mode: CommitMode,
    /// How often the primary sends a heartbeat (ms-scale; default 200 ms).
    pub heartbeat_interval: Duration,
    /// Silence after which the standby considers the primary gone (default 1 s).
    pub failover_timeout: Duration,
    /// Whether the standby promotes itself after `failover_timeout`.
    pub auto_failover: bool,
    /// In async mode, the most records the standby may lag at its last
    /// contact and still promote itself.
    pub max_lag_on_failover: u64,
    /// How long a sync-mode write waits for the standby (default 2 s).
    pub sync_timeout: Duration,
    /// What a sync-mode primary does when its standby stops answering.
    pub on_standby_loss: OnStandbyLoss,
    /// Deadline of each control RPC (heartbeat, fence, status).
    pub rpc_timeout: Duration,
    /// Most records in one WAL batch.
    pub max_batch_records: usize,
    /// Most payload bytes in one WAL batch.
    pub max_batch_bytes: usize,
    /// Most batches sent and not yet acknowledged as written; their
    /// payloads together stay within this many times `max_batch_bytes`
    /// (one batch is always allowed, however large its one record).
    pub max_batches_in_flight: usize,
    /// Largest gRPC message accepted or sent (bytes).
    pub max_message_bytes: usize,
    /// Largest payload of one record (bytes).
    pub max_record_bytes: usize,
    /// Most bytes of WAL kept, whatever the engine or the standby still
    /// needs. Below the bound the WAL keeps every record the engine has not
    /// made durable (`StateMachine::durable_lsn`) or the standby has not
    /// flushed; beyond it the oldest segments go anyway. A standby that
    /// needed them resyncs from a snapshot; an engine that had not made
    /// them durable resyncs from the peer's snapshot at its next start (see
    /// `StateMachine::durable_lsn` for what that means after a restart).
    /// Removal is by whole segments, never of records not yet applied
    /// locally, and runs each heartbeat interval: on disk the WAL takes at
    /// most this plus one segment (`FileWalOptions::segment_bytes`), plus
    /// the unused rest of the active segment when segments are preallocated.
    pub wal_retention_bytes: u64,
    /// Bytes of snapshot in one message of a `FetchSnapshot` transfer
    /// (default 1 MiB); must stay 64 KiB below `max_message_bytes`.
    pub snapshot_chunk_bytes: usize,
    /// Longest silence a snapshot transfer tolerates between two messages
    /// (default 10 s). It bounds idle time, not the transfer: a snapshot
    /// of any size keeps flowing as long as each chunk comes in time, and
    /// the primary sends keep-alives while its engine builds the snapshot.
    /// A transfer cut by it resumes from the bytes already received.
    pub snapshot_timeout: Duration,
    /// First delay before reconnecting to the peer; it doubles per failure.
    pub reconnect_backoff_min: Duration,
    /// Cap of the reconnect delay.
    pub reconnect_backoff_max: Duration,
    /// How long a planned switchover may pause writes before it gives up.
    pub switchover_timeout: Duration,
    /// Most request ids a node remembers (`Replicator::apply_once`), the
    /// newest (default 1 000 000). A retry is recognised while its record
    /// is among the last this many records that carry an id; the WAL keeps
    /// those records for it, up to `wal_retention_bytes`. Memory: ~70 bytes per id remembered, none for writes
    /// without one, so at most ~70 MB at the default, which covers 25 s
    /// of 40 000 id-carrying writes a second (more than a failover and a
    /// client's retry take). 0 turns de-duplication off: `apply_once`
    /// then writes every retry again.
    pub max_request_ids: usize,
    /// A standby in `remote-flush` or `remote-apply` mode fsyncs the WAL it
    /// receives on the runtime thread that received it, once for all the
    /// batches that arrived together, and acknowledges once, after the
    /// fsync. That saves two thread hand-offs and an ack per batch (on this
    /// project's machine: 1-writer commit latency 0.30 -> 0.27 ms, 16
    /// writers +12 % writes/s) but blocks that thread during each fsync, so
    /// a slow disk stalls the standby's other tasks as long; an inline
    /// fsync that stalls (10 ms or more) hands the fsyncs to the flusher for
    /// the next second, which overlaps them with a stalled one. Off for an
    /// engine that embeds walrep on a shared runtime; the daemon turns it on.
    pub standby_sync_inline: bool,
    /// The arbiter: a compare-and-swap register that decides who may
    /// promote and when the primary may acknowledge without its standby
    /// (the built-in witness, etcd, or any [`Arbiter`](crate::arbiter::Arbiter)).
    /// With one, a standby promotes only by a successful swap from the
    /// register's sync set, and a primary acknowledges alone only after a
    /// swap took the standby out of it, so no partition loses an
    /// acknowledged write and the side the arbiter answers keeps working.
    /// `None` (the default): the pair decides alone, by `on_standby_loss`.
    pub arbiter: Option<std::sync::Arc<dyn crate::arbiter::Arbiter>>,
    /// The third and later data nodes of a cluster, beyond `peer_id`: each
    /// with its name and the address this node dials. Empty (the default)
    /// for a pair. A primary streams to every other node, each on its own
    /// stream. More than one standby needs an `arbiter`: two standbys that
    /// lose the primary must not both promote.
    pub more_peers: Vec<PeerAddress>,
    /// Which standbys must confirm a write in the sync modes, as
    /// PostgreSQL's `synchronous_standby_names`: `FIRST k (n2, n3)` or
    /// `ANY k (n2, n3)`. `None` (the default): every other node. The rule
    /// may name this node too, so a rule naming every node (`ANY 2 (n1,
    /// n2, n3)`) can be given to every node as the same text.
    /// A standby the rule does not name never counts and never promotes.
    /// With k below the standbys that count, a standby promotes only
    /// after |counted| − k + 1 of them (itself included) gave their final
    /// positions, and fetches what it lacks from the most advanced first:
    /// every node must then be given the same rule text.
    pub sync_standbys: Option<crate::CommitRule>,
    /// Breaks G2 on purpose: the primary acknowledges sync-mode writes at
    /// its own fsync while telling the standby it is in sync. Only for the
    /// test that shows the fault checker catches a broken rule.
    #[doc(hidden)]
    pub testing_ack_before_standby_flush: bool,
    /// Breaks G2 on purpose with an arbiter: under `on_standby_loss =
    /// solo` the primary acknowledges without its lost standby without
    /// first swapping it out of the arbiter's sync set (so the standby may
    /// still promote). Only for the test that shows the simulation's
    /// checker catches it.
    #[doc(hidden)]
    pub testing_solo_without_arbiter_swap: bool,
    /// Breaks G2 on purpose under a quorum rule: a candidate swaps the
    /// register without the other standbys' positions (as if every
    /// standby that counts held every acknowledged write). Only for the
    /// test that shows the simulation's checker catches it.
    #[doc(hidden)]
    pub testing_quorum_promotion_without_positions: bool,
    /// Breaks G2 on purpose: a node whose log holds records follows an
    /// unconfirmed primary (a node wiped and started as primary again),
    /// and such a primary is confirmed by an ack beyond its log. Only for
    /// the test that shows the simulation's checker catches it.
    #[doc(hidden)]
    pub testing_follow_an_unconfirmed_primary: bool,
}

impl Config {
    /// Default of `peer_addr`.
    pub const DEFAULT_PEER_ADDR: &'static str = "127.0.0.1:7002";
    /// Default of `advertise_addr`.
    pub const DEFAULT_ADVERTISE_ADDR: &'static str = "127.0.0.1:7001";
    /// Default of `cluster_id`.
    pub const DEFAULT_CLUSTER_ID: &'static str = "walrep";
    /// Default of `heartbeat_interval`: 200 ms.
    pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(200);
    /// Default of `failover_timeout`: 1 s (five heartbeats).
    pub const DEFAULT_FAILOVER_TIMEOUT: Duration = Duration::from_secs(1);
    /// Default of `auto_failover`: on.
    pub const DEFAULT_AUTO_FAILOVER: bool = true;
    /// Default of `max_lag_on_failover`, in records.
    pub const DEFAULT_MAX_LAG_ON_FAILOVER: u64 = 1024;
    /// Default of `sync_timeout`: 2 s.
    pub const DEFAULT_SYNC_TIMEOUT: Duration = Duration::from_secs(2);
    /// Default of `rpc_timeout`: 500 ms.
    pub const DEFAULT_RPC_TIMEOUT: Duration = Duration::from_millis(500);
    /// Default of `max_batch_records`.
    pub const DEFAULT_MAX_BATCH_RECORDS: usize = 1024;
    /// Default of `max_batch_bytes`: 1 MiB.
    pub const DEFAULT_MAX_BATCH_BYTES: usize = 1 << 20;
    /// Default of `max_batches_in_flight`.
    pub const DEFAULT_MAX_BATCHES_IN_FLIGHT: usize = 8;
    /// Default of `max_message_bytes`: 17 MiB, the largest record with
    /// room to spare for its framing.
    pub const DEFAULT_MAX_MESSAGE_BYTES: usize = Config::DEFAULT_MAX_RECORD_BYTES + (1 << 20);
    /// Default of `max_record_bytes`: 16 MiB (an engine's large values,
    /// e.g. documents or blobs of a few MiB, fit whole in one record).
    pub const DEFAULT_MAX_RECORD_BYTES: usize = 16 << 20;
    /// Default of `wal_retention_bytes`: 1 GiB.
    pub const DEFAULT_WAL_RETENTION_BYTES: u64 = 1 << 30;
    /// Default of `snapshot_chunk_bytes`: 1 MiB.
    pub const DEFAULT_SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
    /// Default of `snapshot_timeout`: 10 s.
    pub const DEFAULT_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default of `reconnect_backoff_min`: 20 ms.
    pub const DEFAULT_RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(20);
    /// Default of `reconnect_backoff_max`: 1 s.
    pub const DEFAULT_RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);
    /// Default of `switchover_timeout`: 5 s.
    pub const DEFAULT_SWITCHOVER_TIMEOUT: Duration = Duration::from_secs(5);
    /// Default of `max_request_ids` (see the field for the memory it takes).
    pub const DEFAULT_MAX_REQUEST_IDS: usize = 1_000_000;
    /// Default of `standby_sync_inline`: off (see the field for why).
    pub const DEFAULT_STANDBY_SYNC_INLINE: bool = false;

    /// Bytes of a message beyond its records' payloads that
    /// `max_message_bytes` must leave room for (framing of one record).
    pub const RECORD_FRAMING_BYTES: usize = 4096;
    /// How far `max_batch_bytes` must stay below `max_message_bytes`: the
    /// batch's framing.
    pub const BATCH_FRAMING_BYTES: usize = 64 * 1024;
}

impl Default for Config {
    /// A standby `n1` of the pair `n1`/`n2` on localhost, with every
    /// `Config::DEFAULT_*` value: change at least the names and addresses.
    fn default() -> Self {
        Config {
            node_id: NodeId::from("n1"),
            peer_id: NodeId::from("n2"),
            peer_addr: Config::DEFAULT_PEER_ADDR.into(),
            advertise_addr: Config::DEFAULT_ADVERTISE_ADDR.into(),
            advertise_client_addr: None,
            cluster_id: Config::DEFAULT_CLUSTER_ID.into(),
            initial_role: InitialRole::default(),
            commit_mode: CommitMode::default(),
            heartbeat_interval: Config::DEFAULT_HEARTBEAT_INTERVAL,
            failover_timeout: Config::DEFAULT_FAILOVER_TIMEOUT,
            auto_failover: Config::DEFAULT_AUTO_FAILOVER,
            max_lag_on_failover: Config::DEFAULT_MAX_LAG_ON_FAILOVER,
            sync_timeout: Config::DEFAULT_SYNC_TIMEOUT,
            on_standby_loss: OnStandbyLoss::default(),
            rpc_timeout: Config::DEFAULT_RPC_TIMEOUT,
            max_batch_records: Config::DEFAULT_MAX_BATCH_RECORDS,
            max_batch_bytes: Config::DEFAULT_MAX_BATCH_BYTES,
            max_batches_in_flight: Config::DEFAULT_MAX_BATCHES_IN_FLIGHT,
            max_message_bytes: Config::DEFAULT_MAX_MESSAGE_BYTES,
            max_record_bytes: Config::DEFAULT_MAX_RECORD_BYTES,
            wal_retention_bytes: Config::DEFAULT_WAL_RETENTION_BYTES,
            snapshot_chunk_bytes: Config::DEFAULT_SNAPSHOT_CHUNK_BYTES,
            snapshot_timeout: Config::DEFAULT_SNAPSHOT_TIMEOUT,
            reconnect_backoff_min: Config::DEFAULT_RECONNECT_BACKOFF_MIN,
            reconnect_backoff_max: Config::DEFAULT_RECONNECT_BACKOFF_MAX,
            switchover_timeout: Config::DEFAULT_SWITCHOVER_TIMEOUT,
            max_request_ids: Config::DEFAULT_MAX_REQUEST_IDS,
            standby_sync_inline: Config::DEFAULT_STANDBY_SYNC_INLINE,
            testing_ack_before_standby_flush: false,
            testing_solo_without_arbiter_swap: false,
            testing_follow_an_unconfirmed_primary: false,
            testing_quorum_promotion_without_positions: false,
            arbiter: None,
            more_peers: Vec::new(),
            sync_standbys: None,
        }
    }
}

impl Config {
    /// Every other data node, by name: `peer_id` first, then `more_peers`.
    pub fn peer_ids(&self) -> Vec<NodeId> {
        std::iter::once(self.peer_id.clone())
            .chain(self.more_peers.iter().map(|p| p.id.clone()))
            .collect()
    }

    /// The commit rule in force: `sync_standbys`, or by default one that
    /// waits for every other node (`ANY 1 (peer)` for a pair).
    pub fn commit_rule(&self) -> crate::CommitRule {
        match &self.sync_standbys {
            Some(rule) => rule.clone(),
            None => crate::CommitRule::all_of(self.peer_ids()),
        }
    }

    /// The commit rule in the form every node of a cluster of three or
    /// more must share, for comparing it across nodes: the text given
    /// (`sync_standbys`, with an `ANY` rule's names in order), or for the
    /// default the rule naming every node with k = the others (`ANY 2 (n1,
    /// n2, n3)`), which every node's default means alike. Empty for a
    /// pair.
    pub fn cluster_rule_text(&self) -> String {
        if self.more_peers.is_empty() {
            return String::new();
        }
        let (count, mut names) = match &self.sync_standbys {
            Some(rule) if rule.method() != crate::CommitMethod::Any => return rule.to_string(),
            Some(rule) => (rule.count(), rule.standbys().to_vec()),
            None => {
                let mut all = self.peer_ids();
                all.push(self.node_id.clone());
                (all.len() - 1, all)
            }
        };
        // ANY names a set: its order means nothing, so it is left out.
        names.sort();
        crate::CommitRule::new(crate::CommitMethod::Any, count, names)
            .map(|r| r.to_string())
            .unwrap_or_default()
    }
}

/// Another data node of a cluster of three or more (`Config::more_peers`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAddress {
    /// Its name (its `node_id`).
    pub id: NodeId,
    /// Where it serves `Replication` (host:port), as this node dials it.
    pub addr: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    /// `200 ms`, `1 s`: how the README writes a duration.
    fn readme_duration(d: Duration) -> String {
        match d.as_millis() {
            ms if ms % 1000 == 0 => format!("{} s", ms / 1000),
            ms => format!("{ms} ms"),
        }
    }

    /// `1 MiB`, `1 GiB`: how the README writes a size.
    fn readme_bytes(n: u64) -> String {
        match n {
            n if n % (1 << 30) == 0 => format!("{} GiB", n >> 30),
            n if n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
            n => n.to_string(),
        }
    }

    #[test]
    fn the_readme_configuration_table_shows_the_defaults() {
        let readme = include_str!("../../README.md");
        let cell = |field: &str| -> String {
            let row = readme
                .lines()
                .find(|l| l.starts_with(&format!("| `{field}` |")))
                .unwrap_or_else(|| panic!("README.md has no configuration row for {field}"));
            row.split('|').nth(2).unwrap().trim().to_string()
        };
        let d = Config::default();
        let on_off = |b: bool| if b { "on" } else { "off" };
        let expected = [
            ("commit_mode", format!("`{}`", d.commit_mode)),
            ("heartbeat_interval", readme_duration(d.heartbeat_interval)),
            ("failover_timeout", readme_duration(d.failover_timeout)),
            ("auto_failover", on_off(d.auto_failover).to_string()),
            (
                "max_lag_on_failover",
                format!("{} records", d.max_lag_on_failover),
            ),
            ("sync_timeout", readme_duration(d.sync_timeout)),
            ("on_standby_loss", format!("`{}`", d.on_standby_loss)),
            ("rpc_timeout", readme_duration(d.rpc_timeout)),
            (
                "max_batch_records` / `max_batch_bytes` / `max_batches_in_flight",
                format!(
                    "{} / {} / {}",
                    d.max_batch_records,
                    readme_bytes(d.max_batch_bytes as u64),
                    d.max_batches_in_flight
                ),
            ),
            (
                "max_message_bytes` / `max_record_bytes",
                format!(
                    "{} / {}",
                    readme_bytes(d.max_message_bytes as u64),
                    readme_bytes(d.max_record_bytes as u64)
                ),
            ),
            ("wal_retention_bytes", readme_bytes(d.wal_retention_bytes)),
            (
                "snapshot_chunk_bytes",
                readme_bytes(d.snapshot_chunk_bytes as u64),
            ),
            ("snapshot_timeout", readme_duration(d.snapshot_timeout)),
            ("switchover_timeout", readme_duration(d.switchover_timeout)),
            ("max_request_ids", d.max_request_ids.to_string()),
        ];
        for (field, want) in expected {
            assert_eq!(cell(field), want, "README row {field}");
        }
        assert!(
            cell("standby_sync_inline").starts_with(on_off(d.standby_sync_inline)),
            "README row standby_sync_inline"
        );
    }

    #[test]
    fn commit_modes_parse_and_print_alike() {
        for mode in [
            CommitMode::Async,
            CommitMode::RemoteWrite,
            CommitMode::RemoteFlush,
            CommitMode::RemoteApply,
        ] {
            assert_eq!(mode.as_str().parse::<CommitMode>().unwrap(), mode);
        }
        for role in [InitialRole::Primary, InitialRole::Standby] {
            assert_eq!(role.to_string().parse::<InitialRole>().unwrap(), role);
        }
        for policy in [OnStandbyLoss::Solo, OnStandbyLoss::Block] {
            assert_eq!(policy.to_string().parse::<OnStandbyLoss>().unwrap(), policy);
        }
        assert!(
            "sync"
                .parse::<CommitMode>()
                .unwrap_err()
                .contains("remote-flush")
        );
    }
}
