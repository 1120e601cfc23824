//! The JSON bodies of the HTTP API, shared by the server and the CLI.
//! Load balancers and scripts depend on these names: add fields, never
//! rename them.

use serde::{Deserialize, Serialize};
use walrep::Health;
use walrep::SyncState;

/// `GET /health`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HealthReport {
    pub node_id: String,
    /// primary, standby, promoting, fenced, rejoining or failed.
    pub role: String,
    pub epoch: u64,
    pub first_lsn: u64,
    pub last_lsn: u64,
    pub flushed_lsn: u64,
    pub commit_lsn: u64,
    pub applied_lsn: u64,
    /// The KV store's hash as 16 lowercase hex digits (a u64 does not fit
    /// a JSON number for every reader). Equal on two nodes that applied
    /// the same LSN iff their maps are equal.
    pub state_hash: String,
    /// A primary that accepts writes now (what `GET /primary` checks).
    pub writable: bool,
    /// A primary acknowledging writes without its standby.
    pub solo: bool,
    /// A standby that may promote itself if the primary falls silent now.
    pub eligible: bool,
    /// sync, not_sync or async: what the primary says of the standby.
    pub sync_state: String,
    pub commit_mode: String,
    /// The primary's HTTP address, if known (on the primary, its own).
    pub leader: Option<String>,
    pub leader_id: Option<String>,
    pub peer: PeerReport,
    /// On a primary, every standby (the peer among them); empty elsewhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub standbys: Vec<StandbyReport>,
    /// Records dropped by rewinds since start (kept in DIR/rewound).
    pub rewound_records: u64,
    /// Why the node refuses writes, when it does.
    pub note: Option<String>,
    /// The arbiter as this node sees it; absent without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arbiter: Option<ArbiterReport>,
    /// Automatic failover is paused on this node (maintenance mode:
    /// `POST /maintenance`): as a standby it does not promote itself.
    #[serde(default)]
    pub failover_paused: bool,
    /// `role` is `failed` only until the node tries again by itself (a
    /// standby whose disk filled): `/liveness` passes, no restart needed.
    #[serde(default)]
    pub retrying_wal: bool,
}

/// The arbiter as a node sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ArbiterReport {
    /// `witness://HOST:PORT` or `etcd://...`.
    pub url: String,
    /// Whether its last call was answered; null before the first.
    pub reachable: Option<bool>,
    /// The register as last answered; null before the first answer.
    pub register: Option<RegisterReport>,
    /// Why its last call failed.
    pub last_error: Option<String>,
    /// Why a failover or a solo step is not happening now.
    pub held_back: Option<String>,
}

/// One cluster's register at the arbiter.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RegisterReport {
    /// 0: the cluster has no register yet.
    pub version: u64,
    pub epoch: u64,
    pub primary: Option<String>,
    /// The standbys that may promote (they hold every acknowledged write).
    pub sync_set: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerReport {
    pub id: String,
    /// A WAL stream is open (primary: to the standby; standby: from the primary).
    pub connected: bool,
    pub lag_records: u64,
    pub lag_bytes: u64,
    pub lag_seconds: f64,
    /// Milliseconds since the peer last answered or spoke; null if never.
    pub last_contact_ms: Option<u64>,
    pub heartbeat_rtt_ms: Option<f64>,
}

/// One standby as its primary sees it (`HealthReport::standbys`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandbyReport {
    pub id: String,
    /// Its WAL stream is open.
    pub connected: bool,
    pub flushed_lsn: u64,
    pub lag_records: u64,
    /// sync, not_sync or async: what the primary tells it.
    pub sync_state: String,
    /// Commits wait for it under the commit rule.
    pub counted: bool,
}

/// `PUT`/`DELETE /kv/{key}`: where the write landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteReply {
    pub lsn: u64,
    pub epoch: u64,
    /// A retry of an `Idempotency-Key` already written: nothing new was
    /// written, `lsn`/`epoch` are the first attempt's.
    #[serde(default)]
    pub deduplicated: bool,
}

/// Every non-2xx answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
    /// The primary's HTTP address when known: where to send writes.
    pub leader: Option<String>,
    /// The refusal's kind (`not_primary`, `sync_timeout`, ...: the `reason`
    /// label of `walrep_http_rejected_total`), absent on other errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// `POST /promote`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromoteReply {
    pub epoch: u64,
    /// The node that answered.
    #[serde(default)]
    pub node: String,
    /// The primary of `epoch` as the answering node knows it when the
    /// promotion returns: itself, or the standby it handed over to
    /// (absent if it does not know yet, or from an older node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
}

/// The probes' body (`/health`, `/primary`, `/replica` ...): the health
/// report, and why the answer is 503 when it is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeReply {
    #[serde(flatten)]
    pub health: HealthReport,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST`/`DELETE /maintenance`: the node's pause after the call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceReply {
    pub node_id: String,
    pub role: String,
    pub failover_paused: bool,
}

/// How far a standby is behind its primary, as it knows it: what the
/// lag bounds of `/replica`, `/read-only`, `/readiness`, `/sync` and
/// `/async` compare against, and the cluster view shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StandbyLag {
    /// Records the primary has (as of its last message) that this
    /// standby has not flushed.
    pub records: u64,
    /// The same in bytes of WAL, when the node knows it: `None` while it
    /// knows only the record count.
    pub bytes: Option<u64>,
}

pub fn sync_state_str(s: SyncState) -> &'static str {
    match s {
        SyncState::Sync => "sync",
        SyncState::NotSync => "not_sync",
        SyncState::Async => "async",
    }
}

impl HealthReport {
    pub fn new(h: &Health, state_hash: u64) -> HealthReport {
        HealthReport {
            node_id: h.node_id.0.clone(),
            role: h.role.as_str().to_string(),
            epoch: h.epoch.0,
            first_lsn: h.first_lsn.0,
            last_lsn: h.last_lsn.0,
            flushed_lsn: h.flushed_lsn.0,
            commit_lsn: h.commit_lsn.0,
            applied_lsn: h.applied_lsn.0,
            state_hash: format!("{state_hash:016x}"),
            writable: h.writable,
            solo: h.solo,
            eligible: h.eligible,
            sync_state: sync_state_str(h.sync_state).to_string(),
            commit_mode: h.commit_mode.as_str().to_string(),
            leader: h.leader.as_ref().and_then(|l| l.client_addr.clone()),
            leader_id: h.leader.as_ref().map(|l| l.id.0.clone()),
            peer: PeerReport {
                id: h.peer.node_id.0.clone(),
                connected: h.peer.connected,
                lag_records: h.peer.lag_records,
                lag_bytes: h.peer.lag_bytes,
                lag_seconds: h.peer.lag_seconds,
                last_contact_ms: h.peer.last_contact.map(|d| d.as_millis() as u64),
                heartbeat_rtt_ms: h.peer.heartbeat_rtt.map(|d| d.as_secs_f64() * 1e3),
            },
            standbys: h
                .standbys
                .iter()
                .map(|s| StandbyReport {
                    id: s.node_id.0.clone(),
                    connected: s.connected,
                    flushed_lsn: s.flushed_lsn.0,
                    lag_records: s.lag_records,
                    sync_state: sync_state_str(s.sync_state).to_string(),
                    counted: s.counted,
                })
                .collect(),
            rewound_records: h.rewound_records,
            note: h.note.clone(),
            arbiter: h.arbiter.as_ref().map(|a| ArbiterReport {
                url: a.arbiter.clone(),
                reachable: a.reachable,
                register: a.register.as_ref().map(|r| RegisterReport {
                    version: r.version,
                    epoch: r.epoch.0,
                    primary: r.primary.as_ref().map(|p| p.0.clone()),
                    sync_set: r.sync_set.iter().map(|n| n.0.clone()).collect(),
                }),
                last_error: a.last_error.clone(),
                held_back: a.held_back.clone(),
            }),
            failover_paused: h.failover_paused,
            retrying_wal: h.retrying_wal,
        }
    }

    /// What `GET /replica` checks: a standby receiving the WAL stream.
    pub fn is_streaming_replica(&self) -> bool {
        self.role == "standby" && self.peer.connected
    }

    /// A standby's lag behind its primary (`None` on any other role): the
    /// one place every probe and view reads it from.
    ///
    /// Records: the primary's last LSN from its last message minus our
    /// applied LSN: what a read here misses (`peer.lag_records`, counted
    /// to our flushed LSN, plus what we flushed and not applied yet, as an
    /// engine slow to apply leaves). Bytes: `peer.lag_bytes` where the
    /// node measures it; a standby caught up in records is 0 bytes behind;
    /// otherwise unknown.
    pub fn standby_lag(&self) -> Option<StandbyLag> {
        if self.role != "standby" {
            return None;
        }
        let unapplied = self.flushed_lsn.saturating_sub(self.applied_lsn);
        let records = self.peer.lag_records + unapplied;
        let bytes = if records == 0 {
            Some(0)
        } else if self.peer.lag_bytes > 0 {
            Some(self.peer.lag_bytes)
        } else {
            None
        };
        Some(StandbyLag { records, bytes })
    }

    /// A streaming standby its primary calls in sync: every acknowledged
    /// write is on its disk (what `/sync` checks).
    pub fn is_sync_standby(&self) -> bool {
        self.is_streaming_replica() && self.was_called_in_sync()
    }

    /// A standby whose primary called it in sync at their last contact
    /// (a standby's `sync_state` is the primary's word, from its
    /// heartbeats).
    pub fn was_called_in_sync(&self) -> bool {
        self.role == "standby" && self.commit_mode != "async" && self.sync_state == "sync"
    }
}

/// Whether a switchover asked of the node `node_id` in `role` (whose peer
/// is `peer_id`) would make `to` the primary: a primary hands over to its
/// standby, a standby promotes itself. Otherwise says which node would;
/// the caller then changes nothing. `walrep switchover --to` checks it
/// before it asks, and `POST /promote?to=` again on arrival.
pub fn switchover_target_check(
    node_id: &str,
    role: &str,
    standbys: &[&str],
    to: &str,
) -> Result<(), String> {
    if role == "primary" && standbys.contains(&to) {
        return Ok(());
    }
    let listed = standbys.join(", ");
    let (target, which) = match role {
        "primary" if standbys.len() == 1 => (listed.as_str(), "its standby"),
        "primary" => (listed.as_str(), "one of its standbys"),
        "standby" => (node_id, "the standby asked"),
        other => {
            return Err(format!(
                "{node_id} is {other}, neither primary nor standby: it cannot switch over now; ask again once it is (walrep status)"
            ));
        }
    };
    if to == target {
        return Ok(());
    }
    if role == "primary" && to == node_id {
        return Err(format!(
            "{to} is already the primary; name the standby that should take over ({target}); nothing was changed"
        ));
    }
    Err(format!(
        "{to} is not the node this switchover would promote: that is {which}, {target}; nothing was changed"
    ))
}

/// The standbys a primary may hand over to (its view of each), or the
/// peer on any other role, as `switchover_target_check` takes them.
pub fn standby_ids(h: &walrep::Health) -> Vec<&str> {
    if h.standbys.is_empty() {
        vec![h.peer.node_id.0.as_str()]
    } else {
        h.standbys.iter().map(|s| s.node_id.0.as_str()).collect()
    }
}

/// A query value with every byte outside `A-Z a-z 0-9 - _ . ~` as `%XX`.
pub fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The inverse of `percent_encode` (a `%` not followed by two hex digits
/// stays as it is; `+` is a space, as in forms).
pub fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switchover_to_checks_the_node_it_would_promote() {
        // Asked of either node, to the standby is what happens.
        assert_eq!(
            switchover_target_check("n1", "primary", &["n2"], "n2"),
            Ok(())
        );
        assert_eq!(
            switchover_target_check("n2", "standby", &["n1"], "n2"),
            Ok(())
        );
        // A cluster's primary hands over to any of its standbys.
        assert_eq!(
            switchover_target_check("n1", "primary", &["n2", "n3"], "n3"),
            Ok(())
        );
        let e = switchover_target_check("n1", "primary", &["n2", "n3"], "n9").unwrap_err();
        assert!(e.contains("one of its standbys, n2, n3"), "{e}");
        let e = switchover_target_check("n1", "primary", &["n2"], "n1").unwrap_err();
        assert!(
            e.contains("n1 is already the primary") && e.contains("(n2)"),
            "{e}"
        );
        let e = switchover_target_check("n2", "standby", &["n1"], "n1").unwrap_err();
        assert!(
            e.contains("the standby asked, n2") && e.contains("nothing was changed"),
            "{e}"
        );
        let e = switchover_target_check("n1", "primary", &["n2"], "n9").unwrap_err();
        assert!(
            e.contains("n9 is not the node") && e.contains("its standby, n2"),
            "{e}"
        );
        let e = switchover_target_check("n1", "fenced", &["n2"], "n2").unwrap_err();
        assert!(e.contains("n1 is fenced"), "{e}");
    }

    #[test]
    fn a_query_value_survives_encoding() {
        for v in ["n2", "db-2.eu_west~1", "a&b=c d%e/ü", ""] {
            assert_eq!(percent_decode(&percent_encode(v)), v, "{v}");
        }
        assert_eq!(percent_encode("a&b"), "a%26b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("a+b%2x"), "a b%2x");
    }
}
