//! The engine's writes: held until the mailbox is drained, handed to the
//! node as one `WriteRequested` (one WAL append, one wake-up of the
//! streamer and the flusher for all of them), then kept as waiters until
//! the node commits or fails them.

use crate::error::{Error, LeaderHint, Result};
use crate::node::{Event, Retried, WaiterFailure, WriteRefusal};
use crate::replicator::Applied;
use crate::transport::RefusalKind;
use crate::types::{Epoch, Lsn, Record, RequestId};
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

/// A write with at least one retried request id (`Effect::Append::retried`):
/// its commands wait for records that are not one run of its own (the
/// first attempts' records, perhaps of an older epoch, perhaps shared with
/// their still-waiting first callers). Answered once every one is applied.
pub(super) struct RetryWaiter {
    /// Per command: its record, and whether it is a retry's.
    targets: Vec<(Lsn, Epoch, bool)>,
    /// The highest of `targets`: applied up to it, all are.
    last: Lsn,
    /// The step it arrived in: it has a `sync_timeout` of its own from then
    /// (the node keeps a pending entry for it), so the timeout of an
    /// earlier attempt of the same record does not fail it.
    since: std::time::Duration,
    reply: WriteReply,
}

/// The error a write refused on arrival gets: nothing of it was appended
/// now; `appended` when it retries a record our log holds (its first
/// attempt's outcome is unknown).
pub(super) fn refusal_error(r: WriteRefusal, leader: Option<LeaderHint>, appended: bool) -> Error {
    match r {
        WriteRefusal::NotPrimary { .. } => Error::NotPrimary { leader, appended },
        WriteRefusal::Fenced { epoch } => Error::Fenced { epoch, appended },
        WriteRefusal::Unavailable { reason } => Error::Unavailable { reason, appended },
    }
}

impl Actor {
    /// Holds a write until `append_queued`, so the writes that arrived
    /// together cost one WAL append (one `pwrite`) and one wake-up of the
    /// streamer and the flusher, not one each.
    pub(super) fn queue_write(
        &mut self,
        payloads: Vec<Bytes>,
        request_ids: Vec<RequestId>,
        reply: WriteReply,
    ) {
        self.queued_bytes += payloads.iter().map(Bytes::len).sum::<usize>();
        self.queued.push((payloads, request_ids, reply));
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
        let count = queued.iter().map(|(p, _, _)| p.len()).sum();
        let mut payloads = Vec::with_capacity(count);
        let mut writers = Vec::with_capacity(queued.len());
        // Empty unless some write has ids (`apply_once`): one per payload then.
        let with_ids = queued.iter().any(|(_, ids, _)| !ids.is_empty());
        let mut request_ids = Vec::with_capacity(if with_ids { count } else { 0 });
        for (p, ids, reply) in queued {
            if with_ids {
                match ids.is_empty() {
                    true => request_ids.extend(std::iter::repeat_n(None, p.len())),
                    false => request_ids.extend(ids.into_iter().map(Some)),
                }
            }
            writers.push((p.len(), reply));
            payloads.extend(p);
        }
        self.writing = Some(writers);
        self.step(Event::WriteRequested {
            payloads,
            request_ids,
        });
        self.writing = None;
    }

    /// Carries out `Effect::Append`: the records go to the WAL; the writes
    /// being stepped (if any) wait for their commit, and whoever makes the
    /// records durable is woken.
    pub(super) fn append(
        &mut self,
        records: Vec<Record>,
        fsync_inline: bool,
        retried: Vec<Retried>,
    ) {
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            if !retried.is_empty() {
                self.wait_for_retried(Lsn::ZERO, Epoch::ZERO, &retried);
            }
            return;
        };
        let (first, epoch, last) = (first.lsn, first.epoch, last.lsn);
        if let Err(e) = self.wal.append(&records) {
            // An I/O error that left the log as it was (a full disk: the
            // store refused the write or cut what it wrote of it) can be
            // tried again; a poisoned or damaged store cannot.
            let intact = matches!(e, WalError::Io { .. }) && self.wal.last_lsn() == first.prev();
            let reason = e.to_string();
            // A log left as it was holds none of these new records:
            // nothing written, and a retry (at the next primary: this one
            // stops taking writes) is safe with or without a request id.
            // A writer retrying a record the log already held is another
            // matter: that record may be written, whatever became of the
            // rest.
            let mut command = 0usize;
            for (count, reply) in self.writing.take().into_iter().flatten() {
                let commands = command..command + count;
                command += count;
                let retries_a_record = retried.iter().any(|r| commands.contains(&r.write));
                let _ = reply.send(Err(Error::Unavailable {
                    reason: format!("appending to the WAL failed: {reason}"),
                    appended: !intact || retries_a_record,
                }));
            }
            if let Some(Answering::Batch { session, .. }) = self.answering.take() {
                let r = self.refusal(
                    RefusalKind::Unavailable,
                    format!("WAL append failed: {reason}"),
                );
                self.end_session(session, r);
            }
            if intact {
                let last_lsn = self.wal.last_lsn();
                self.step(Event::WalAppendFailed { reason, last_lsn });
            } else {
                self.step(Event::WalFailed { reason });
            }
            return;
        }
        if !retried.is_empty() {
            self.wait_for_retried(first, epoch, &retried);
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

    /// The writes being stepped, some of which are retries: each writer
    /// waits for its commands' records, the new ones numbered from `first`
    /// (at `epoch`) in order, the retried ones where the node found them.
    /// Takes `writing`, so `append` registers no other waiter for them.
    fn wait_for_retried(&mut self, first: Lsn, epoch: Epoch, retried: &[Retried]) {
        let mut retried = retried.iter().peekable();
        let (mut next, mut write) = (first, 0usize);
        for (count, reply) in self.writing.take().into_iter().flatten() {
            let mut targets = Vec::with_capacity(count);
            for _ in 0..count {
                match retried.next_if(|r| r.write == write) {
                    Some(r) => targets.push((r.lsn, r.epoch, true)),
                    None => {
                        targets.push((next, epoch, false));
                        next = next.next();
                    }
                }
                write += 1;
            }
            let last = targets.iter().map(|t| t.0).max().unwrap_or(Lsn::ZERO);
            if targets.iter().any(|t| t.2) {
                self.retry_waiters.push(RetryWaiter {
                    targets,
                    last,
                    since: self.last_step,
                    reply,
                });
            } else {
                let first = targets[0].0;
                self.waiters.insert(
                    last,
                    Waiter {
                        first,
                        epoch,
                        reply,
                    },
                );
            }
        }
        // A retry of a record already applied is answered now.
        self.resolve_retry_waiters(self.node.applied_lsn());
    }

    /// Answers the retries whose records are all applied.
    fn resolve_retry_waiters(&mut self, applied: Lsn) {
        if self.retry_waiters.is_empty() {
            return;
        }
        for w in std::mem::take(&mut self.retry_waiters) {
            if w.last > applied {
                self.retry_waiters.push(w);
                continue;
            }
            let out = w
                .targets
                .iter()
                .map(|&(lsn, epoch, deduplicated)| Applied {
                    lsn,
                    epoch,
                    output: match deduplicated {
                        true => Bytes::new(),
                        false => self.outputs.remove(&lsn).unwrap_or_default(),
                    },
                    deduplicated,
                })
                .collect();
            let _ = w.reply.send(Ok(out));
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
                    deduplicated: false,
                })
                .collect();
            let _ = w.reply.send(Ok(out));
        }
        self.resolve_retry_waiters(applied);
        // Outputs no writer waits for (a standby, records replayed at
        // start) go now. A write applied over several chunks (or
        // committed in several steps) waits for the outputs of its first
        // records past their chunk's `Applied`: they stay.
        // (Waiters hold runs in log order: the first holds the lowest.)
        let kept_from = self
            .waiters
            .first_key_value()
            .map(|(_, w)| w.first)
            .into_iter()
            .chain(
                self.retry_waiters
                    .iter()
                    .flat_map(|w| w.targets.iter().filter(|t| !t.2).map(|t| t.0)),
            )
            .fold(applied.next(), Lsn::min);
        self.outputs = self.outputs.split_off(&kept_from);
    }

    /// Fails the writes the node gave up on: those ending at most at
    /// `up_to` (every one if `None`). On a sync timeout the node stays
    /// primary and goes on applying, so a write wholly at or below the
    /// commit point (committed, only not applied yet) is kept: it is
    /// answered with its result once applied, never with a timeout its
    /// caller would take for "maybe not written" and retry.
    pub(super) fn fail_waiters(&mut self, up_to: Option<Lsn>, failure: &WaiterFailure) {
        let committed = match failure {
            WaiterFailure::SyncTimeout | WaiterFailure::Blocked => self.node.commit_lsn(),
            _ => Lsn::ZERO,
        };
        let doomed = |last: Lsn| last > committed && up_to.is_none_or(|up_to| last <= up_to);
        let (failed, keep): (BTreeMap<_, _>, BTreeMap<_, _>) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|(last, _)| doomed(*last));
        self.waiters = keep;
        // A retry's own `sync_timeout` runs from its arrival: the timeout
        // of the first attempt (or of a later record) does not end it. Both
        // times are the node's steps' (the node timed the retry's pending
        // entry from the same step), so its own timeout always ends it.
        // A primary that blocks drops those entries: it fails every retry.
        let (now, sync_timeout) = (self.last_step, self.cfg.sync_timeout);
        let retry_doomed = |w: &RetryWaiter| {
            doomed(w.last)
                && !(matches!(failure, WaiterFailure::SyncTimeout)
                    && now.saturating_sub(w.since) < sync_timeout)
        };
        let (failed_retries, kept_retries) = std::mem::take(&mut self.retry_waiters)
            .into_iter()
            .partition(retry_doomed);
        self.retry_waiters = kept_retries;
        let failed = failed.into_iter().map(|(last, w)| (last, w.reply)).chain(
            failed_retries
                .into_iter()
                .map(|w: RetryWaiter| (w.last, w.reply)),
        );
        for (last, reply) in failed {
            let err = match failure {
                WaiterFailure::SyncTimeout | WaiterFailure::Blocked => {
                    Error::SyncTimeout { lsn: last }
                }
                WaiterFailure::Fenced { epoch } => Error::Fenced {
                    epoch: *epoch,
                    appended: true,
                },
                WaiterFailure::NotPrimary => Error::NotPrimary {
                    leader: self.leader_hint(),
                    appended: true,
                },
                WaiterFailure::WalFailed { reason } => Error::Unavailable {
                    reason: format!("this node failed: {reason}"),
                    appended: true,
                },
            };
            let _ = reply.send(Err(err));
        }
    }

    /// Answers every write still waiting: the node stops before it knows
    /// their outcome.
    pub(super) fn fail_waiters_shutting_down(&mut self) {
        for (_, w) in std::mem::take(&mut self.waiters) {
            let _ = w.reply.send(Err(Error::ShuttingDown));
        }
        for w in std::mem::take(&mut self.retry_waiters) {
            let _ = w.reply.send(Err(Error::ShuttingDown));
        }
    }
}
