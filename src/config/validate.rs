//! Checking a `Config`: `Config::validate` refuses settings that cannot
//! work and names the setting (`Setting`) in its `ConfigError`.

use super::Config;
use std::fmt;

/// A field of `Config`, as `Config::validate` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Setting {
    /// `Config::node_id`.
    NodeId,
    /// `Config::peer_id`.
    PeerId,
    /// `Config::peer_addr`.
    PeerAddr,
    /// `Config::advertise_addr`.
    AdvertiseAddr,
    /// `Config::cluster_id`.
    ClusterId,
    /// `Config::heartbeat_interval`.
    HeartbeatInterval,
    /// `Config::failover_timeout`.
    FailoverTimeout,
    /// `Config::sync_timeout`.
    SyncTimeout,
    /// `Config::rpc_timeout`.
    RpcTimeout,
    /// `Config::max_batch_records`.
    MaxBatchRecords,
    /// `Config::max_batch_bytes`.
    MaxBatchBytes,
    /// `Config::max_batches_in_flight`.
    MaxBatchesInFlight,
    /// `Config::max_message_bytes`.
    MaxMessageBytes,
    /// `Config::max_record_bytes`.
    MaxRecordBytes,
    /// `Config::snapshot_chunk_bytes`.
    SnapshotChunkBytes,
    /// `Config::snapshot_timeout`.
    SnapshotTimeout,
    /// `Config::reconnect_backoff_min`.
    ReconnectBackoffMin,
    /// `Config::reconnect_backoff_max`.
    ReconnectBackoffMax,
    /// `Config::switchover_timeout`.
    SwitchoverTimeout,
    /// `Config::more_peers`.
    MorePeers,
    /// `Config::sync_standbys`.
    SyncStandbys,
}

/// The longest deadline a setting may have.
const MAX_DEADLINE: std::time::Duration = std::time::Duration::from_secs(86_400);

impl Setting {
    /// The field's name in `Config` (`"heartbeat_interval"`).
    pub fn field_name(self) -> &'static str {
        match self {
            Setting::NodeId => "node_id",
            Setting::PeerId => "peer_id",
            Setting::PeerAddr => "peer_addr",
            Setting::AdvertiseAddr => "advertise_addr",
            Setting::ClusterId => "cluster_id",
            Setting::HeartbeatInterval => "heartbeat_interval",
            Setting::FailoverTimeout => "failover_timeout",
            Setting::SyncTimeout => "sync_timeout",
            Setting::RpcTimeout => "rpc_timeout",
            Setting::MaxBatchRecords => "max_batch_records",
            Setting::MaxBatchBytes => "max_batch_bytes",
            Setting::MaxBatchesInFlight => "max_batches_in_flight",
            Setting::MaxMessageBytes => "max_message_bytes",
            Setting::MaxRecordBytes => "max_record_bytes",
            Setting::SnapshotChunkBytes => "snapshot_chunk_bytes",
            Setting::SnapshotTimeout => "snapshot_timeout",
            Setting::ReconnectBackoffMin => "reconnect_backoff_min",
            Setting::ReconnectBackoffMax => "reconnect_backoff_max",
            Setting::SwitchoverTimeout => "switchover_timeout",
            Setting::MorePeers => "more_peers",
            Setting::SyncStandbys => "sync_standbys",
        }
    }
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.field_name())
    }
}

/// A setting `Config::validate` refuses: which one (as data, so a program
/// can map it to its own name for it, as the daemon maps it to a flag), the
/// setting it was checked against if any, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The setting to change.
    pub setting: Setting,
    /// The other setting the value was checked against (changing that one
    /// fixes it too), e.g. `heartbeat_interval` for a `failover_timeout`
    /// below two heartbeats.
    pub related: Option<Setting>,
    /// What is wrong, phrased to follow the setting's name ("must not be
    /// empty"), with the values involved.
    pub problem: String,
}

impl ConfigError {
    fn new(setting: Setting, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            setting,
            related: None,
            problem: problem.into(),
        }
    }

    fn against(setting: Setting, related: Setting, problem: String) -> ConfigError {
        ConfigError {
            setting,
            related: Some(related),
            problem,
        }
    }

    /// The settings involved: `setting`, then `related` if any.
    pub fn settings(&self) -> impl Iterator<Item = Setting> + '_ {
        std::iter::once(self.setting).chain(self.related)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.setting, self.problem)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Refuses settings that cannot work, naming the setting (as data, in
    /// `ConfigError::setting`) and the fix. `ReplicaBuilder::start` calls
    /// it first: a node never starts with a configuration it refuses.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_expecting_arbiter(self.arbiter.is_some())
    }

    /// `validate`, for settings whose arbiter is attached later (a daemon
    /// that resolves an arbiter's address at start): `arbiter` says
    /// whether there will be one.
    pub fn validate_expecting_arbiter(&self, arbiter: bool) -> Result<(), ConfigError> {
        use Setting as S;
        let nonempty = [
            (S::NodeId, &self.node_id.0),
            (S::PeerId, &self.peer_id.0),
            (S::PeerAddr, &self.peer_addr),
            (S::AdvertiseAddr, &self.advertise_addr),
            (S::ClusterId, &self.cluster_id),
        ];
        for (setting, value) in nonempty {
            if value.trim().is_empty() {
                return Err(ConfigError::new(setting, "must not be empty"));
            }
        }
        if self.node_id == self.peer_id {
            return Err(ConfigError::against(
                S::PeerId,
                S::NodeId,
                format!(
                    "is {:?}, the same as node_id; each node needs its own name",
                    self.peer_id.0
                ),
            ));
        }
        let positive = [
            (S::HeartbeatInterval, self.heartbeat_interval),
            (S::RpcTimeout, self.rpc_timeout),
            (S::SyncTimeout, self.sync_timeout),
            (S::ReconnectBackoffMin, self.reconnect_backoff_min),
            (S::SnapshotTimeout, self.snapshot_timeout),
        ];
        for (setting, value) in positive {
            if value.is_zero() {
                return Err(ConfigError::new(setting, "must be greater than 0"));
            }
        }
        // Deadlines are added to instants and multiplied: past a day they
        // could overflow, and no deadline of this protocol needs that long.
        let bounded = [
            (S::HeartbeatInterval, self.heartbeat_interval),
            (S::FailoverTimeout, self.failover_timeout),
            (S::SyncTimeout, self.sync_timeout),
            (S::RpcTimeout, self.rpc_timeout),
            (S::SwitchoverTimeout, self.switchover_timeout),
            (S::SnapshotTimeout, self.snapshot_timeout),
            (S::ReconnectBackoffMin, self.reconnect_backoff_min),
            (S::ReconnectBackoffMax, self.reconnect_backoff_max),
        ];
        for (setting, value) in bounded {
            if value > MAX_DEADLINE {
                return Err(ConfigError::new(
                    setting,
                    format!(
                        "({value:?}) must be at most 24 h; to turn automatic failover off, set auto_failover = false"
                    ),
                ));
            }
        }
        if self.failover_timeout < self.heartbeat_interval * 2 {
            return Err(ConfigError::against(
                S::FailoverTimeout,
                S::HeartbeatInterval,
                format!(
                    "({:?}) must be at least twice heartbeat_interval ({:?}), or one late heartbeat causes a failover",
                    self.failover_timeout, self.heartbeat_interval
                ),
            ));
        }
        // Going solo waits only for sync_timeout, and a paused standby
        // forgets its last contact (and with it its "in sync") only after
        // failover_timeout. Were sync_timeout the shorter, a standby paused
        // between the two would resume still "in sync" while the primary
        // acknowledged alone, and could promote without those writes
        // should the primary die before telling it. With an arbiter, going
        // solo needs its swap instead, which the standby's promotion races.
        if self.commit_mode.is_sync()
            && self.on_standby_loss == crate::config::OnStandbyLoss::Solo
            && !arbiter
            && self.sync_timeout <= self.failover_timeout
        {
            return Err(ConfigError::against(
                S::SyncTimeout,
                S::FailoverTimeout,
                format!(
                    "({:?}) must be longer than failover_timeout ({:?}) with on_standby_loss = solo and no arbiter: else the primary may acknowledge alone while its standby still counts itself in sync and promotes without those writes",
                    self.sync_timeout, self.failover_timeout
                ),
            ));
        }
        let counts = [
            (S::MaxBatchRecords, self.max_batch_records),
            (S::MaxBatchBytes, self.max_batch_bytes),
            (S::MaxBatchesInFlight, self.max_batches_in_flight),
            (S::SnapshotChunkBytes, self.snapshot_chunk_bytes),
            // Zero would refuse every write, each with a 400.
            (S::MaxRecordBytes, self.max_record_bytes),
        ];
        for (setting, value) in counts {
            if value == 0 {
                return Err(ConfigError::new(setting, "must be greater than 0"));
            }
        }
        if self
            .max_record_bytes
            .saturating_add(Config::RECORD_FRAMING_BYTES)
            > self.max_message_bytes
        {
            return Err(ConfigError::against(
                S::MaxRecordBytes,
                S::MaxMessageBytes,
                format!(
                    "({}) must be at least {} bytes below max_message_bytes ({}), for the framing",
                    self.max_record_bytes,
                    Config::RECORD_FRAMING_BYTES,
                    self.max_message_bytes
                ),
            ));
        }
        if self
            .max_batch_bytes
            .saturating_add(Config::BATCH_FRAMING_BYTES)
            > self.max_message_bytes
        {
            return Err(ConfigError::against(
                S::MaxBatchBytes,
                S::MaxMessageBytes,
                format!(
                    "({}) must be at least 64 KiB below max_message_bytes ({})",
                    self.max_batch_bytes, self.max_message_bytes
                ),
            ));
        }
        if self
            .snapshot_chunk_bytes
            .saturating_add(Config::BATCH_FRAMING_BYTES)
            > self.max_message_bytes
        {
            return Err(ConfigError::against(
                S::SnapshotChunkBytes,
                S::MaxMessageBytes,
                format!(
                    "({}) must be at least 64 KiB below max_message_bytes ({})",
                    self.snapshot_chunk_bytes, self.max_message_bytes
                ),
            ));
        }
        if self.reconnect_backoff_max < self.reconnect_backoff_min {
            return Err(ConfigError::against(
                S::ReconnectBackoffMax,
                S::ReconnectBackoffMin,
                format!(
                    "({:?}) must not be below reconnect_backoff_min ({:?})",
                    self.reconnect_backoff_max, self.reconnect_backoff_min
                ),
            ));
        }
        self.validate_cluster(arbiter)
    }

    /// The peers and the commit rule of a cluster of three or more.
    fn validate_cluster(&self, arbiter: bool) -> Result<(), ConfigError> {
        use Setting as S;
        let peers = self.peer_ids();
        for (i, extra) in self.more_peers.iter().enumerate() {
            if extra.id.0.trim().is_empty() || extra.addr.trim().is_empty() {
                return Err(ConfigError::new(
                    S::MorePeers,
                    format!("entry {} needs both a name and an address", i + 1),
                ));
            }
            if extra.id == self.node_id {
                return Err(ConfigError::against(
                    S::MorePeers,
                    S::NodeId,
                    format!(
                        "names {}, this node itself; list only the other nodes",
                        extra.id
                    ),
                ));
            }
            if peers.iter().filter(|p| **p == extra.id).count() > 1 {
                return Err(ConfigError::against(
                    S::MorePeers,
                    S::PeerId,
                    format!("names {} twice; each other node once", extra.id),
                ));
            }
            // Without TLS nothing ties an answer to the node it came from:
            // two names at one address would count one node's
            // acknowledgements as two nodes'.
            let earlier = std::iter::once((&self.peer_id, &self.peer_addr))
                .chain(self.more_peers[..i].iter().map(|p| (&p.id, &p.addr)));
            for (id, addr) in earlier {
                if addr.trim() == extra.addr.trim() {
                    return Err(ConfigError::against(
                        S::MorePeers,
                        S::PeerAddr,
                        format!(
                            "gives {} the address of {id} ({addr}); each node needs its own",
                            extra.id
                        ),
                    ));
                }
            }
        }
        if !self.more_peers.is_empty() && !arbiter {
            return Err(ConfigError::new(
                S::MorePeers,
                format!(
                    "lists {} more nodes, but there is no arbiter: with two or more standbys, two of them could promote when the primary falls silent; give the cluster an arbiter (the witness or etcd), or run a pair",
                    self.more_peers.len()
                ),
            ));
        }
        let rule = self.commit_rule();
        rule.validate_for(&self.node_id, &peers)
            .map_err(|e| ConfigError::new(S::SyncStandbys, format!("{rule}: {e}")))?;
        let others = rule
            .standbys()
            .iter()
            .filter(|n| **n != self.node_id)
            .count();
        if others == 0 && self.commit_mode.is_sync() {
            return Err(ConfigError::new(
                S::SyncStandbys,
                format!(
                    "{rule} names no other node: no standby would ever confirm a write, yet each would be told it holds every acknowledged one; name the standbys to wait for, or use commit_mode async"
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::NodeId;
    use std::time::Duration;

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
        assert_eq!(err.setting, Setting::FailoverTimeout, "{err}");
        assert_eq!(err.related, Some(Setting::HeartbeatInterval), "{err}");
        assert!(
            err.to_string().starts_with("failover_timeout (300ms)"),
            "{err}"
        );
    }

    #[test]
    fn same_node_and_peer_id_is_refused() {
        let cfg = Config {
            peer_id: NodeId::from("n1"),
            ..Config::default()
        };
        let err = cfg.validate().unwrap_err();
        assert_eq!(err.setting, Setting::PeerId, "{err}");
        assert!(err.to_string().contains("\"n1\""), "{err}");
    }

    #[test]
    fn each_zero_or_empty_setting_is_refused_by_its_own_name() {
        type Break = fn(&mut Config);
        let cases: [(Setting, Break); 11] = [
            (Setting::ClusterId, |c| c.cluster_id = " ".into()),
            (Setting::PeerAddr, |c| c.peer_addr.clear()),
            (Setting::HeartbeatInterval, |c| {
                c.heartbeat_interval = Duration::ZERO
            }),
            (Setting::RpcTimeout, |c| c.rpc_timeout = Duration::ZERO),
            (Setting::SyncTimeout, |c| c.sync_timeout = Duration::ZERO),
            (Setting::MaxBatchBytes, |c| c.max_batch_bytes = 0),
            (Setting::MaxBatchesInFlight, |c| c.max_batches_in_flight = 0),
            (Setting::SnapshotChunkBytes, |c| c.snapshot_chunk_bytes = 0),
            (Setting::MaxRecordBytes, |c| c.max_record_bytes = 0),
            (Setting::SnapshotTimeout, |c| {
                c.snapshot_timeout = Duration::ZERO
            }),
            (Setting::ReconnectBackoffMax, |c| {
                c.reconnect_backoff_max = Duration::from_millis(1)
            }),
        ];
        for (setting, break_it) in cases {
            let mut cfg = Config::default();
            break_it(&mut cfg);
            let err = cfg.validate().unwrap_err();
            assert_eq!(err.setting, setting, "{err}");
            assert!(err.to_string().starts_with(setting.field_name()), "{err}");
        }
    }

    /// Without an arbiter, `solo` may go on alone only after a standby that
    /// paused has forgotten it was in sync: sync_timeout must outlast
    /// failover_timeout. With `block`, or an arbiter, the order is free.
    #[test]
    fn solo_without_an_arbiter_needs_sync_timeout_longer_than_failover_timeout() {
        let solo = Config {
            sync_timeout: Duration::from_millis(500),
            failover_timeout: Duration::from_secs(1),
            ..Config::default()
        };
        let err = solo.validate().unwrap_err();
        let involved: Vec<Setting> = err.settings().collect();
        assert_eq!(involved, [Setting::SyncTimeout, Setting::FailoverTimeout]);
        assert!(
            err.to_string().contains("promotes without those writes"),
            "{err}"
        );
        let block = Config {
            on_standby_loss: crate::config::OnStandbyLoss::Block,
            ..solo.clone()
        };
        assert!(block.validate().is_ok());
        let asynchronous = Config {
            commit_mode: crate::config::CommitMode::Async,
            ..solo
        };
        assert!(asynchronous.validate().is_ok());
        assert!(
            Config::default().validate().is_ok(),
            "the defaults keep the order"
        );
    }

    /// A deadline past a day is refused by name instead of overflowing an
    /// instant or a product later (`Duration::MAX` as "never").
    #[test]
    fn a_deadline_past_a_day_is_refused() {
        let cfg = Config {
            failover_timeout: Duration::MAX,
            ..Config::default()
        };
        let err = cfg.validate().unwrap_err();
        assert_eq!(err.setting, Setting::FailoverTimeout, "{err}");
        assert!(err.to_string().contains("auto_failover"), "{err}");
        let cfg = Config {
            switchover_timeout: Duration::from_secs(2 * 86_400),
            ..Config::default()
        };
        assert_eq!(
            cfg.validate().unwrap_err().setting,
            Setting::SwitchoverTimeout
        );
    }

    #[test]
    fn a_record_limit_that_leaves_no_room_for_framing_names_both_limits() {
        let cfg = Config {
            max_record_bytes: Config::DEFAULT_MAX_MESSAGE_BYTES,
            ..Config::default()
        };
        let err = cfg.validate().unwrap_err();
        let involved: Vec<Setting> = err.settings().collect();
        assert_eq!(
            involved,
            [Setting::MaxRecordBytes, Setting::MaxMessageBytes],
            "{err}"
        );
    }
}
