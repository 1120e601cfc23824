//! The standby's receive path: the WAL stream from the primary, the
//! batches the node accepts or refuses, the inline fsync and the acks.

use crate::node::{Event, RoleKind};
use crate::transport::{Refusal, RefusalKind, WalAck, WalBatch};
use crate::types::{Epoch, Lsn};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::{Actor, Answering};
use crate::transport::AckWatch;

/// An open WAL stream from the primary (we are its standby).
pub(super) struct Session {
    id: u64,
    acks: watch::Sender<std::result::Result<WalAck, Refusal>>,
    /// A batch of this session was accepted: its `prev` matched our log.
    /// Until then no ack but the opening one goes out: the primary counts
    /// the positions it receives as progress in its own log, and ours may
    /// hold records it does not (a flush or an apply before the first
    /// batch's check would otherwise publish them).
    checked: bool,
}

impl Actor {
    /// A primary opened a WAL stream to us; it replaces any previous one.
    pub(super) fn open_stream(&mut self, reply: oneshot::Sender<(u64, AckWatch)>) {
        self.next_session += 1;
        let id = self.next_session;
        let (acks, rx) = watch::channel(Ok(self.ack()));
        if self.session.is_some() {
            tracing::info!("a new WAL stream replaces the previous one");
        }
        self.session = Some(Session {
            id,
            acks,
            checked: false,
        });
        let _ = reply.send((id, rx));
    }

    pub(super) fn close_stream(&mut self, session: u64) {
        if self.session.as_ref().is_some_and(|s| s.id == session) {
            self.session = None;
        }
    }

    /// A batch from the primary: the node checks it against our log (G3)
    /// with the epochs of the records it overlaps, read here.
    pub(super) fn on_batch(&mut self, session: u64, batch: WalBatch) {
        if self.session.as_ref().is_none_or(|s| s.id != session) {
            return;
        }
        self.note_peer_client_addr(&batch.header);
        let last = self.node.last_lsn();
        let local_at_prev = self.wal.epoch_at(batch.prev_lsn);
        let local = batch
            .records
            .iter()
            .take_while(|r| r.lsn <= last)
            .map(|r| self.wal.epoch_at(r.lsn))
            .collect();
        let to = Answering::Batch {
            session,
            primary_last_lsn: batch.last_lsn,
        };
        self.answer_with(
            to,
            Event::BatchReceived {
                batch,
                local_at_prev,
                local,
            },
        );
    }

    /// The primary reached us with a request we served.
    pub(super) fn note_primary_contact(&mut self, primary_last_lsn: Lsn) {
        self.peer_contact = Some(Instant::now());
        self.primary_last_lsn = primary_last_lsn;
        self.note_standby_caught_up();
    }

    /// Fsyncs, on this thread, the WAL received since the last call, and
    /// acknowledges it: once for every batch the mailbox held, with no
    /// hand-off to the flusher and back and no ack before the fsync that
    /// the primary would only wait past. One that stalls hands the next
    /// ones to the flusher for a while (`inline_sync`).
    pub(super) fn sync_received(&mut self) {
        if !std::mem::take(&mut self.sync_due) {
            return;
        }
        let started = Instant::now();
        let synced = self.wal.sync();
        let now = Instant::now();
        self.inline_sync.record(now - started, now);
        match synced {
            Ok(lsn) => {
                self.step(Event::LocalFlushed { lsn });
                self.last_lsn_tx.send_replace(self.wal.last_lsn());
                self.send_ack_always();
            }
            Err(e) => self.step(Event::WalFailed {
                reason: format!("WAL fsync failed: {e}"),
            }),
        }
    }

    pub(super) fn end_session(&mut self, session: u64, refusal: Refusal) {
        if let Some(s) = self.session.take_if(|s| s.id == session) {
            let _ = s.acks.send(Err(refusal));
        }
    }

    pub(super) fn ack(&self) -> WalAck {
        let flushed = self.node.flushed_lsn().min(self.wal.last_lsn());
        WalAck {
            epoch: self.node.epoch(),
            written: self.wal.last_lsn(),
            flushed,
            applied: self.node.applied_lsn().min(flushed),
            flushed_epoch: self.wal.epoch_at(flushed).unwrap_or(Epoch::ZERO),
            first: self.wal.first_lsn(),
        }
    }

    pub(super) fn send_ack_always(&mut self) {
        let ack = self.ack();
        if let Some(s) = self.session.as_ref().filter(|s| s.checked) {
            let _previous = s.acks.send_replace(Ok(ack));
        }
    }

    /// A batch of session `session` was accepted: its acks may go out.
    pub(super) fn session_checked(&mut self, session: u64) {
        if let Some(s) = self.session.as_mut().filter(|s| s.id == session) {
            s.checked = true;
        }
    }

    /// A standby that stops being one closes the WAL stream it received:
    /// acks from it now would carry positions in another log (a promoted
    /// node's own) to the old primary.
    pub(super) fn end_inbound_stream(&mut self, to: RoleKind, epoch: Epoch) {
        let refusal = if matches!(to, RoleKind::Promoting | RoleKind::Primary) {
            self.refusal(
                RefusalKind::StaleEpoch,
                format!("this node was promoted to epoch {epoch}; a newer primary exists"),
            )
        } else {
            self.refusal(
                RefusalKind::NotStandby,
                format!("this node is {to}, not a standby; retry after it has rejoined"),
            )
        };
        self.end_open_session(refusal);
    }

    /// Ends the primary's stream to this node, if one is open, with
    /// `refusal`.
    pub(super) fn end_open_session(&mut self, refusal: Refusal) {
        if let Some(s) = self.session.take() {
            let _ = s.acks.send(Err(refusal));
        }
    }

    pub(super) fn send_ack(&mut self) {
        if self.node.role() != RoleKind::Standby {
            return;
        }
        let ack = self.ack();
        if let Some(s) = self.session.as_ref().filter(|s| s.checked) {
            s.acks.send_if_modified(|current| {
                if current.as_ref().ok() == Some(&ack) {
                    false
                } else {
                    *current = Ok(ack);
                    true
                }
            });
        }
    }

    pub(super) fn note_standby_caught_up(&mut self) {
        if self.node.flushed_lsn() >= self.primary_last_lsn {
            self.caught_up_at = Instant::now();
        }
    }
}
