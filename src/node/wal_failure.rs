//! A node whose WAL fails: a standby's failed append (a full disk) is
//! retried after a backoff, any other failure stops the node for good.

use super::event::{Time, WaiterFailure};
use super::{Node, Role, Standby};
use crate::types::Lsn;

/// A standby waiting to try its WAL again after an append failed.
#[derive(Clone, Copy, Debug)]
pub(super) struct WalRetry {
    /// Failed appends since the log last grew.
    attempts: u32,
    /// When it becomes a standby again (while `Role::Failed`).
    at: Option<Time>,
    /// The log's end when the last append failed: a flush beyond it means
    /// appends work again.
    stuck_at: Lsn,
}

/// The longest a standby waits before it takes WAL again after a failed
/// append; the first wait is one heartbeat interval, doubling each time.
pub(crate) const MAX_WAL_RETRY_BACKOFF: std::time::Duration = std::time::Duration::from_secs(5);

impl Node {
    /// Why the node failed, while it is `Failed` for good: not a standby
    /// that will try its WAL again (`WalRetry`) and may go on with what
    /// was under way.
    pub(crate) fn failed_for_good(&self) -> Option<&str> {
        match &self.role {
            Role::Failed { reason } if self.wal_retry.is_none() => Some(reason),
            _ => None,
        }
    }

    /// A standby whose append failed takes WAL again once its backoff ran
    /// out: the primary resends from our log's end, and the append either
    /// works (the disk has room again) or fails and we wait longer.
    pub(super) fn retry_wal(&mut self, now: Time) {
        let Some(retry) = self.wal_retry.as_mut() else {
            return;
        };
        if retry.at.is_none_or(|at| now < at) {
            return;
        }
        retry.at = None;
        tracing::info!(attempt = retry.attempts + 1, last_lsn = %self.last_lsn, "trying the WAL again: taking the primary's WAL from our log's end");
        self.change_role(Role::Standby(Standby::new()));
    }

    /// A flush past where the last append failed: appends work again.
    pub(super) fn end_wal_retry_past(&mut self, lsn: Lsn) {
        if self
            .wal_retry
            .is_some_and(|r| r.at.is_none() && lsn > r.stuck_at)
        {
            tracing::info!(%lsn, "the WAL takes writes again");
            self.wal_retry = None;
        }
    }

    /// When a standby whose append failed takes WAL again, if it waits.
    pub(super) fn wal_retry_due(&self) -> Option<Time> {
        self.wal_retry.and_then(|r| r.at)
    }

    /// An append failed without changing the log (a full disk). The node
    /// had counted the batch's records as ours: it forgets them. A standby
    /// refuses WAL (its heartbeat answers say `failed`, so the primary
    /// counts it as lost and its `on_standby_loss` policy applies) until a
    /// backoff has passed; nothing it acknowledged is lost, since it
    /// acknowledges only what its log holds.
    pub(super) fn on_wal_append_failed(&mut self, now: Time, reason: String, last_lsn: Lsn) {
        if !matches!(self.role, Role::Standby(_)) {
            return self.on_wal_failed(reason);
        }
        assert!(
            last_lsn <= self.last_lsn && last_lsn >= self.flushed.min(self.last_lsn),
            "node {}: a failed append left the log at {last_lsn}, outside {}..={}",
            self.cfg.node_id,
            self.flushed,
            self.last_lsn
        );
        self.last_lsn = last_lsn;
        self.requests.truncate_after(last_lsn);
        let attempts = self.wal_retry.map_or(0, |r| r.attempts) + 1;
        let backoff = self
            .cfg
            .heartbeat_interval
            .saturating_mul(1 << (attempts - 1).min(16))
            .min(MAX_WAL_RETRY_BACKOFF);
        self.wal_retry = Some(WalRetry {
            attempts,
            at: Some(now + backoff),
            stuck_at: last_lsn,
        });
        tracing::error!(%reason, %last_lsn, attempts, retry_in_ms = backoff.as_millis() as u64, "WAL append failed (disk full?): refusing WAL until the retry; the log is as it was");
        self.change_role(Role::Failed {
            reason: format!(
                "{reason}; the log is intact up to {last_lsn} and the standby tries again in {backoff:?} (free space on the disk)"
            ),
        });
    }

    pub(super) fn on_wal_failed(&mut self, reason: String) {
        // Nothing to retry: the store itself failed.
        self.wal_retry = None;
        tracing::error!(%reason, "WAL failure: refusing all writes and stepping down until restarted");
        self.fail_all_waiters(WaiterFailure::WalFailed {
            reason: reason.clone(),
        });
        self.change_role(Role::Failed { reason });
    }
}
