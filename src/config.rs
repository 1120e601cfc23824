//! Settings of one node. Every field has a unit and a default; `validate`
//! refuses combinations that cannot work and names the setting.

use crate::types::NodeId;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

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
    pub fn is_sync(self) -> bool {
        self != CommitMode::Async
    }

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
    Primary,
    #[default]
    Standby,
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

/// Settings of one node.
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
    pub on_standby_loss: OnStandbyLoss,
    /// Deadline of each control RPC (heartbeat, fence, status).
    pub rpc_timeout: Duration,
    /// Most records in one WAL batch.
    pub max_batch_records: usize,
    /// Most payload bytes in one WAL batch.
    pub max_batch_bytes: usize,
    /// Most batches sent and not yet acknowledged as written.
    pub max_batches_in_flight: usize,
    /// Largest gRPC message accepted or sent (bytes).
    pub max_message_bytes: usize,
    /// Largest payload of one record (bytes).
    pub max_record_bytes: usize,
    /// Bytes of WAL kept for a standby that has not flushed them; beyond
    /// that the oldest segments go and the standby resyncs from a snapshot.
    pub wal_retention_bytes: u64,
    /// Reconnect backoff: first delay and cap.
    pub reconnect_backoff_min: Duration,
    pub reconnect_backoff_max: Duration,
    /// How long a planned switchover may pause writes before it gives up.
    pub switchover_timeout: Duration,
    /// A standby in `remote-flush` or `remote-apply` mode fsyncs the WAL it
    /// receives on the runtime thread that received it, once for all the
    /// batches that arrived together, and acknowledges once, after the
    /// fsync. That saves two thread hand-offs and an ack per batch (on this
    /// project's machine: 1-writer commit latency 0.30 -> 0.27 ms, 16
    /// writers +12 % writes/s) but blocks that thread during each fsync, so
    /// a slow disk stalls the standby's other tasks as long. Off for an
    /// engine that embeds walrep on a shared runtime; the daemon turns it on.
    pub standby_sync_inline: bool,
    /// Breaks G2 on purpose: the primary acknowledges sync-mode writes at
    /// its own fsync while telling the standby it is in sync. Only for the
    /// test that shows the fault checker catches a broken rule.
    #[doc(hidden)]
    pub testing_ack_before_standby_flush: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: NodeId::from("n1"),
            peer_id: NodeId::from("n2"),
            peer_addr: "127.0.0.1:7002".into(),
            advertise_addr: "127.0.0.1:7001".into(),
            advertise_client_addr: None,
            cluster_id: "walrep".into(),
            initial_role: InitialRole::Standby,
            commit_mode: CommitMode::RemoteFlush,
            heartbeat_interval: Duration::from_millis(200),
            failover_timeout: Duration::from_secs(1),
            auto_failover: true,
            max_lag_on_failover: 1024,
            sync_timeout: Duration::from_secs(2),
            on_standby_loss: OnStandbyLoss::Solo,
            rpc_timeout: Duration::from_millis(500),
            max_batch_records: 1024,
            max_batch_bytes: 1 << 20,
            max_batches_in_flight: 8,
            max_message_bytes: 8 << 20,
            max_record_bytes: 4 << 20,
            wal_retention_bytes: 1 << 30,
            reconnect_backoff_min: Duration::from_millis(20),
            reconnect_backoff_max: Duration::from_secs(1),
            switchover_timeout: Duration::from_secs(5),
            standby_sync_inline: false,
            testing_ack_before_standby_flush: false,
        }
    }
}

impl Config {
    /// Refuses settings that cannot work, naming the setting and the fix.
    pub fn validate(&self) -> Result<(), String> {
        let nonempty = [
            ("node_id", &self.node_id.0),
            ("peer_id", &self.peer_id.0),
            ("peer_addr", &self.peer_addr),
            ("advertise_addr", &self.advertise_addr),
            ("cluster_id", &self.cluster_id),
        ];
        for (name, value) in nonempty {
            if value.trim().is_empty() {
                return Err(format!("{name} must not be empty"));
            }
        }
        if self.node_id == self.peer_id {
            return Err(format!(
                "node_id and peer_id are both {:?}; each node needs its own name",
                self.node_id.0
            ));
        }
        if self.heartbeat_interval.is_zero() {
            return Err("heartbeat_interval must be greater than 0".into());
        }
        if self.failover_timeout < self.heartbeat_interval * 2 {
            return Err(format!(
                "failover_timeout ({:?}) must be at least twice heartbeat_interval ({:?}), or one late heartbeat causes a failover",
                self.failover_timeout, self.heartbeat_interval
            ));
        }
        if self.rpc_timeout.is_zero() {
            return Err("rpc_timeout must be greater than 0".into());
        }
        if self.sync_timeout.is_zero() {
            return Err("sync_timeout must be greater than 0".into());
        }
        if self.max_batch_records == 0 || self.max_batch_bytes == 0 {
            return Err("max_batch_records and max_batch_bytes must be greater than 0".into());
        }
        if self.max_batches_in_flight == 0 {
            return Err("max_batches_in_flight must be greater than 0".into());
        }
        if self.max_record_bytes + 4096 > self.max_message_bytes {
            return Err(format!(
                "max_record_bytes ({}) must leave room for framing inside max_message_bytes ({})",
                self.max_record_bytes, self.max_message_bytes
            ));
        }
        if self.max_batch_bytes + 64 * 1024 > self.max_message_bytes {
            return Err(format!(
                "max_batch_bytes ({}) must be at least 64 KiB below max_message_bytes ({})",
                self.max_batch_bytes, self.max_message_bytes
            ));
        }
        if self.reconnect_backoff_min.is_zero()
            || self.reconnect_backoff_max < self.reconnect_backoff_min
        {
            return Err(
                "reconnect_backoff_min must be > 0 and not above reconnect_backoff_max".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn failover_timeout_below_two_heartbeats_is_refused_by_name() {
        let cfg = Config {
            failover_timeout: Duration::from_millis(300),
            ..Config::default()
        };
        let err = cfg.validate().unwrap_err();
        assert!(err.contains("failover_timeout"), "{err}");
    }

    #[test]
    fn same_node_and_peer_id_is_refused() {
        let cfg = Config {
            peer_id: NodeId::from("n1"),
            ..Config::default()
        };
        assert!(cfg.validate().unwrap_err().contains("peer_id"));
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
        assert!(
            "sync"
                .parse::<CommitMode>()
                .unwrap_err()
                .contains("remote-flush")
        );
    }
}
