//! WAL retention: which old records the node may let go of.
//!
//! A record is kept while the engine has not made it durable (its state
//! would need it replayed after a restart), while the standby has not
//! flushed it (it would need it streamed), or while it is at or after the
//! oldest record whose request id the node remembers (a retry of that
//! write must be recognised: `RequestIndex`, up to `max_request_ids` ids,
//! so a write retried after the engine's checkpoint is not applied twice).
//! `wal_retention_bytes` bounds the WAL whatever these need: beyond it the
//! oldest records go anyway, and whoever still needed them resyncs from a
//! snapshot instead (a standby when it asks for them, this node's engine
//! at its next start: see `on_opened`). Records the local state machine
//! has not applied yet are never let go: the applier reads them from the
//! WAL.

use super::event::Effect;
use super::{Node, Role};
use crate::types::Lsn;

impl Node {
    /// `first_lsn`: the oldest record the WAL keeps; `durable`: the
    /// engine's `durable_lsn()`; `bounded_from`: the oldest LSN from which
    /// the WAL holds at most `wal_retention_bytes`.
    pub(super) fn on_wal_retention(&mut self, first_lsn: Lsn, durable: Lsn, bounded_from: Lsn) {
        // The ids of records the WAL let go of are no longer recognised.
        self.requests.remove_before(first_lsn);
        let standby_needs = match &self.role {
            // The most behind standby's next record (none: our own needs).
            Role::Primary(p) => p.links().map(|(_, l)| l.positions.flushed.next()).min(),
            Role::Standby(_) => None,
            // A promotion, a rejoin or a failed WAL: leave the log alone.
            _ => return,
        };
        let engine_needs = durable.min(self.applied).next();
        let ids_need = self.requests.oldest().unwrap_or(engine_needs);
        let wanted = standby_needs
            .map_or(engine_needs, |s| s.min(engine_needs))
            .min(ids_need);
        let keep_from = wanted.max(bounded_from).min(self.applied.next());
        // Past what the engine made durable, this node's own restart needs
        // a peer's snapshot: said when it starts and when it ends.
        let past_engine = keep_from.max(first_lsn) > engine_needs;
        if past_engine != self.trimming_past_engine {
            self.trimming_past_engine = past_engine;
            if past_engine {
                tracing::warn!(%keep_from, engine_durable = %durable, "the WAL is over wal_retention_bytes and lets go of records the engine has not made durable: a restart of this node now rebuilds its engine from a peer's snapshot, and one with no peer holding them (running alone, or both nodes restarting) loses those writes; make the engine report durable_lsn, checkpoint it more often, or raise wal_retention_bytes");
            } else {
                tracing::info!(%keep_from, engine_durable = %durable, "the WAL again keeps every record the engine has not made durable");
            }
        }
        if keep_from > first_lsn {
            if keep_from > wanted {
                tracing::debug!(%keep_from, %wanted, "WAL over wal_retention_bytes: letting go of records still wanted");
            }
            self.emit(Effect::TrimWal { keep_from });
        }
    }
}
