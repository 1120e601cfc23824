//! The engine's writes: held until the mailbox is drained, handed to the
//! node as one `WriteRequested` (one WAL append, one wake-up of the
//! streamer and the flusher for all of them), then kept as waiters until
//! the node commits or fails them.

use crate::error::{Error, LeaderHint, Result};
use crate::node::{Event, WaiterFailure, WriteRefusal};
use crate::replicator::Applied;
use crate::transport::RefusalKind;
use crate::types::{Epoch, Lsn, Record};
use crate::wal::WalError;
use bytes::Bytes;
use std::collections::BTreeMap;
use tokio::sync::oneshot;

use super::{Actor, Answering};

/// Where a write's outcome goes.
pub(super) type WriteReply = oneshot::Sender<Result<Vec<Applied>>>;

/// A write appended as `first..=` its key in `waiters`, at `epoch`,
/// waiting for the node to commit or fail it.
pub(super) struct Waiter {
    first: Lsn,
    epoch: Epoch,
    reply: WriteReply,
}

/// The error a refused write's caller gets.
pub(super) fn refusal_error(r: WriteRefusal, leader: Option<LeaderHint>) -> Error {
    match r {
        WriteRefusal::NotPrimary { .. } => Error::NotPrimary { leader },
        WriteRefusal::Fenced { epoch } => Error::Fenced { epoch },
        WriteRefusal::Unavailable { reason } => Error::Unavailable { reason },
    }
}

impl Actor {
    /// Holds a write until `append_queued`, so the writes that arrived
    /// together cost one WAL append (one `pwrite`) and one wake-up of the
    /// streamer and the flusher, not one each.
    pub(super) fn queue_write(&mut self, payloads: Vec<Bytes>, reply: WriteReply) {
        self.queued_bytes += payloads.iter().map(Bytes::len).sum::<usize>();
        self.queued.push((payloads, reply));
        if self.queued_bytes >= self.cfg.max_batch_bytes {
            self.append_queued();
        }
    }

    /// Appends every queued write, in arrival order, as one WAL append.
    pub(super) fn append_queued(&mut self) {
        if self.queued.is_empty() {
            return;
        }
        let queued = std::mem::take(&mut self.queued);
        self.queued_bytes = 0;
        let mut payloads = Vec::with_capacity(queued.iter().map(|(p, _)| p.len()).sum());
        let mut writers = Vec::with_capacity(queued.len());
        for (p, reply) in queued {
            writers.push((p.len(), reply));
            payloads.extend(p);
        }
        self.writing = Some(writers);
        self.step(Event::WriteRequested { payloads });
        self.writing = None;
    }

    /// Carries out `Effect::Append`: the records go to the WAL; the writes
    /// being stepped (if any) wait for their commit, and whoever makes the
    /// records durable is woken.
    pub(super) fn append(&mut self, records: Vec<Record>, fsync_inline: bool) {
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            return;
        };
        let (first, epoch, last) = (first.lsn, first.epoch, last.lsn);
        if let Err(e) = self.wal.append(&records) {
            let reason = e.to_string();
            let kind = match &e {
                WalError::Io { source, .. } => source.kind(),
                _ => std::io::ErrorKind::Other,
            };
            for (_, reply) in self.writing.take().into_iter().flatten() {
                let _ = reply.send(Err(Error::Io {
                    what: "appending to the WAL".into(),
                    source: std::io::Error::new(kind, reason.clone()),
                }));
            }
            if let Some(Answering::Batch { session, .. }) = self.answering.take() {
                let r = self.refusal(
                    RefusalKind::Unavailable,
                    format!("WAL append failed: {reason}"),
                );
                self.end_session(session, r);
            }
            self.step(Event::WalFailed { reason });
            return;
        }
        let mut next = first;
        for (count, reply) in self.writing.take().into_iter().flatten() {
            let end = Lsn(next.0 + count as u64);
            self.waiters.insert(
                end.prev(),
                Waiter {
                    first: next,
                    epoch,
                    reply,
                },
            );
            next = end;
        }
        if fsync_inline && self.inline_sync.allows(tokio::time::Instant::now()) {
            self.sync_due = true;
        } else {
            self.last_lsn_tx.send_replace(last);
        }
    }

    /// Keeps the outputs of the records up to `last` for their writers.
    pub(super) fn keep_outputs(&mut self, last: Lsn, outputs: Vec<Bytes>) {
        let first = last.0 + 1 - outputs.len() as u64;
        self.outputs.extend((first..).map(Lsn).zip(outputs));
    }

    pub(super) fn resolve_waiters(&mut self, applied: Lsn) {
        while let Some(entry) = self.waiters.first_entry() {
            if *entry.key() > applied {
                break;
            }
            let (last, w) = entry.remove_entry();
            let out = (w.first.0..=last.0)
                .map(|lsn| Applied {
                    lsn: Lsn(lsn),
                    epoch: w.epoch,
                    output: self.outputs.remove(&Lsn(lsn)).unwrap_or_default(),
                })
                .collect();
            let _ = w.reply.send(Ok(out));
        }
        // Outputs no writer waits for (a standby, records replayed at
        // start) go now.
        self.outputs = self.outputs.split_off(&applied.next());
    }

    pub(super) fn fail_waiters(&mut self, up_to: Option<Lsn>, failure: &WaiterFailure) {
        let keep = match up_to {
            Some(lsn) => self.waiters.split_off(&lsn.next()),
            None => BTreeMap::new(),
        };
        let failed = std::mem::replace(&mut self.waiters, keep);
        for (last, w) in failed {
            let err = match failure {
                WaiterFailure::SyncTimeout => Error::SyncTimeout { lsn: last },
                WaiterFailure::Fenced { epoch } => Error::Fenced { epoch: *epoch },
                WaiterFailure::NotPrimary => Error::NotPrimary {
                    leader: self.leader_hint(),
                },
                WaiterFailure::WalFailed { reason } => Error::Unavailable {
                    reason: format!("the WAL failed: {reason}"),
                },
            };
            let _ = w.reply.send(Err(err));
        }
    }

    /// Answers every write still waiting: the node stops before it knows
    /// their outcome.
    pub(super) fn fail_waiters_shutting_down(&mut self) {
        for (_, w) in std::mem::take(&mut self.waiters) {
            let _ = w.reply.send(Err(Error::ShuttingDown));
        }
    }
}
