//! Requests from the peer and the operator: the node decides each answer
//! (`Effect::Answer`, `ReplyFence`, `ReplyPromote`, `ForwardPromote`);
//! this file routes it to the waiting caller.

use crate::error::{Error, Result};
use crate::node::{Event, FenceReason, PromoteFrom, Refused, RejoinPlan};
use crate::runtime::Inbound;
use crate::transport::{
    FenceReply, FenceRequest, Header, HeartbeatReply, HistoryReply, PromoteReply, PromoteRequest,
    Refusal, RefusalKind, StatusReply,
};
use crate::types::{Epoch, Lsn};
use tokio::sync::oneshot;

use super::Actor;

/// Request ids per reply to `Peer::fetch_request_ids`: about 1 MiB on the
/// wire (16 bytes of id and two varints each), well under any message
/// limit, and a short stop for the node's task to list.
const IDS_PER_REPLY: usize = 32 * 1024;

/// The request whose answer the node decides in the step being run
/// (`Effect::Answer`, `Effect::Rejoin`).
pub(super) enum Answering {
    Heartbeat {
        reply: oneshot::Sender<std::result::Result<HeartbeatReply, Refusal>>,
        primary_last_lsn: Lsn,
    },
    Batch {
        session: u64,
        primary_last_lsn: Lsn,
    },
    /// A history request from `asker`.
    History {
        asker: crate::types::NodeId,
        reply: oneshot::Sender<std::result::Result<HistoryReply, Refusal>>,
    },
    Snapshot(oneshot::Sender<std::result::Result<crate::runtime::PendingSnapshot, Refusal>>),
    /// Admitted as a snapshot request is: the same asker may have them.
    RequestIds {
        after: Lsn,
        up_to: Lsn,
        reply: oneshot::Sender<std::result::Result<crate::transport::RequestIds, Refusal>>,
    },
    Fence(oneshot::Sender<Result<()>>),
    Rejoin(oneshot::Sender<RejoinPlan>),
}

pub(super) enum PromoteReplyTo {
    Local(oneshot::Sender<Result<Epoch>>),
    Remote(oneshot::Sender<std::result::Result<PromoteReply, Refusal>>),
}

impl PromoteReplyTo {
    /// The asker gave up (its call was dropped or timed out).
    fn is_closed(&self) -> bool {
        match self {
            PromoteReplyTo::Local(tx) => tx.is_closed(),
            PromoteReplyTo::Remote(tx) => tx.is_closed(),
        }
    }
}

impl Actor {
    pub(super) fn refusal(&self, kind: RefusalKind, message: impl Into<String>) -> Refusal {
        let mut r = Refusal::new(kind, message, self.node.epoch());
        r.leader = self.leader_hint();
        r
    }

    /// The records after `after` (up to `up_to`, one batch's worth) for a
    /// candidate this node gave its final position: only at the epoch it
    /// adopted for it, so a candidate of an older round reads nothing.
    fn read_wal_for_candidate(
        &self,
        header: &Header,
        after: Lsn,
        up_to: Lsn,
    ) -> std::result::Result<crate::transport::WalBatch, Refusal> {
        let epoch = self.node.epoch();
        if header.epoch != epoch {
            let kind = if header.epoch < epoch {
                RefusalKind::StaleEpoch
            } else {
                RefusalKind::Unavailable
            };
            return Err(self.refusal(
                kind,
                format!(
                    "this node is at epoch {epoch}, not {}: it gave no position for that epoch",
                    header.epoch
                ),
            ));
        }
        if after.next() < self.wal.first_lsn() {
            return Err(self.refusal(
                RefusalKind::TooFarBehind,
                format!(
                    "record {} is no longer in this node's WAL (it keeps {} onwards)",
                    after.next(),
                    self.wal.first_lsn()
                ),
            ));
        }
        let mut records = self
            .wal
            .read(
                after.next(),
                self.cfg.max_batch_records,
                self.cfg.max_batch_bytes,
            )
            .map_err(|e| {
                self.refusal(
                    RefusalKind::Unavailable,
                    format!("reading record {}: {e}", after.next()),
                )
            })?;
        records.retain(|r| r.lsn <= up_to);
        Ok(crate::transport::WalBatch {
            header: self.header(),
            prev_lsn: after,
            prev_epoch: self.wal.epoch_at(after).unwrap_or(Epoch::ZERO),
            records,
            commit_lsn: self.node.commit_lsn(),
            sync: crate::node::SyncState::NotSync,
            last_lsn: self.wal.last_lsn(),
            first_lsn: self.wal.first_lsn(),
            unconfirmed: !self.wal.meta().confirmed,
        })
    }

    pub(super) fn inbound(&mut self, inbound: Inbound) {
        match inbound {
            Inbound::Heartbeat { req, reply } => {
                self.note_peer_client_addr(&req.header);
                let to = Answering::Heartbeat {
                    reply,
                    primary_last_lsn: req.last_lsn,
                };
                self.answer_with(to, Event::HeartbeatReceived { req });
            }
            Inbound::Fence { req, reply } => self.on_fence(req, reply),
            Inbound::ReadWal {
                header,
                after,
                up_to,
                reply,
            } => {
                let _ = reply.send(self.read_wal_for_candidate(&header, after, up_to));
            }
            Inbound::Promote { req, reply } => self.on_promote(req, reply),
            Inbound::Status { reply } => {
                let h = self.health();
                let _ = reply.send(StatusReply {
                    node_id: self.cfg.node_id.clone(),
                    role: h.role,
                    epoch: h.epoch,
                    last_lsn: h.last_lsn,
                    commit_lsn: h.commit_lsn,
                    applied_lsn: h.applied_lsn,
                    flushed_lsn: h.flushed_lsn,
                    leader_id: h.leader.as_ref().map(|l| l.id.clone()),
                    leader_addr: h.leader.map(|l| l.addr),
                    peer_connected: h.peer.connected,
                    lag_records: h.peer.lag_records,
                });
            }
            Inbound::History { header, reply } => {
                self.note_peer_client_addr(&header);
                self.answer_with(
                    Answering::History {
                        asker: header.node_id.clone(),
                        reply,
                    },
                    Event::HistoryRequested { header },
                );
            }
            Inbound::Snapshot { header, reply } => {
                self.note_peer_client_addr(&header);
                self.answer_with(
                    Answering::Snapshot(reply),
                    Event::SnapshotRequested { header },
                );
            }
            Inbound::RequestIds {
                header,
                after,
                up_to,
                reply,
            } => self.answer_with(
                Answering::RequestIds {
                    after,
                    up_to,
                    reply,
                },
                Event::SnapshotRequested { header },
            ),
            Inbound::StreamOpened { reply } => self.open_stream(reply),
            Inbound::Batch { session, batch } => self.on_batch(session, batch),
            Inbound::BadBatch { session, refusal } => self.end_session(session, refusal),
            Inbound::StreamClosed { session } => self.close_stream(session),
        }
    }

    pub(super) fn on_fence(
        &mut self,
        req: FenceRequest,
        reply: oneshot::Sender<std::result::Result<FenceReply, Refusal>>,
    ) {
        if let Some(old) = self.pending_fence.take() {
            let r = self.refusal(
                RefusalKind::Unavailable,
                "superseded by a newer fence request",
            );
            let _ = old.send(Err(r));
        }
        tracing::info!(epoch = %req.header.epoch, from = %req.header.node_id, reason = ?req.reason, "fence requested");
        self.pending_fence = Some(reply);
        if req.reason == FenceReason::Candidate {
            let mine = self.log_end();
            return self.step(Event::Sealed {
                epoch: req.header.epoch,
                candidate: req.header.node_id,
                candidate_end: req.candidate_end,
                mine,
            });
        }
        self.step(Event::FenceRequested {
            epoch: req.header.epoch,
            leader: req.header.node_id,
            reason: req.reason,
        });
    }

    pub(super) fn on_promote(
        &mut self,
        req: PromoteRequest,
        reply: oneshot::Sender<std::result::Result<PromoteReply, Refusal>>,
    ) {
        // A node asking from an older epoch asks for a switchover that is
        // over (an old primary's handover whose switchover already
        // finished): acting on it would start another. The operator's CLI
        // sends no header and is never stale.
        let epoch = self.node.epoch();
        if !req.header.node_id.0.is_empty() && req.header.epoch < epoch {
            let message = format!(
                "{} asked for a promotion at epoch {}, older than this node's {epoch}: it is over",
                req.header.node_id, req.header.epoch
            );
            let _ = reply.send(Err(self.refusal(RefusalKind::StaleEpoch, message)));
            return;
        }
        self.step_promote_request(
            PromoteReplyTo::Remote(reply),
            Event::PromoteRequested {
                force: req.force,
                from: PromoteFrom::Rpc,
            },
        );
    }

    /// Steps a promote request (or a switchover asked of this node). A
    /// request the step did not answer waits for the promotion or
    /// switchover under way, which it started or joined: a second request
    /// during a planned switchover (an operator asking again, or the old
    /// primary handing over as it stops) gets that switchover's outcome.
    pub(super) fn step_promote_request(&mut self, reply: PromoteReplyTo, event: Event) {
        self.promote_asking = Some(reply);
        self.step(event);
        if let Some(waiting) = self.promote_asking.take() {
            self.pending_promotes.retain(|r| !r.is_closed());
            self.pending_promotes.push(waiting);
        }
    }

    /// Carries out `Effect::ReplyPromote`. In the step of a promote request
    /// it answers that request, and a promotion it finished answers the
    /// waiting ones too; outside one, it is the outcome of the promotion or
    /// switchover under way, for every waiting request.
    pub(super) fn reply_promotes(&mut self, result: std::result::Result<Epoch, String>) {
        let epoch = self.node.epoch();
        let asking = self.promote_asking.take();
        if asking.is_none() || result.is_ok() {
            for to in self.pending_promotes.drain(..) {
                reply_promote(to, result.clone(), epoch);
            }
        }
        if let Some(to) = asking {
            reply_promote(to, result, epoch);
        }
    }

    /// Answers every promote request, the one being stepped and the
    /// waiting ones, with `reason`: none of them can succeed any more.
    pub(super) fn fail_promotes(&mut self, reason: String) {
        let epoch = self.node.epoch();
        let asking = self.promote_asking.take();
        for to in asking.into_iter().chain(self.pending_promotes.drain(..)) {
            reply_promote(to, Err(reason.clone()), epoch);
        }
    }

    /// Carries out `Effect::ForwardPromote`: the standby is asked to take
    /// over and its answer goes to the promote request being stepped (or,
    /// outside one, to every waiting request).
    pub(super) fn forward_promote(&mut self, standby: Option<crate::types::NodeId>) {
        let to: Vec<PromoteReplyTo> = match self.promote_asking.take() {
            Some(asking) => vec![asking],
            None => self.pending_promotes.drain(..).collect(),
        };
        if to.is_empty() {
            return;
        }
        let (_, peer) = self.peer_named(standby.as_ref());
        let header = self.header();
        let epoch = self.node.epoch();
        tokio::spawn(async move {
            let r = peer
                .promote(PromoteRequest {
                    header,
                    force: false,
                })
                .await
                .map(|reply| reply.epoch)
                .map_err(|e| format!("the standby could not take over: {e}"));
            for to in to {
                reply_promote(to, r.clone(), epoch);
            }
        });
    }

    /// Carries out `Effect::Answer`: the reply to the request being
    /// stepped, filled in from our state when the node served it.
    pub(super) fn answer(&mut self, result: std::result::Result<(), Refused>) {
        let Some(to) = self.answering.take() else {
            return;
        };
        let result = result.map_err(|r| (r.kind, r.message));
        match to {
            Answering::Heartbeat {
                reply,
                primary_last_lsn,
            } => {
                let r = match result {
                    Ok(()) => {
                        self.note_primary_contact(primary_last_lsn);
                        Ok(HeartbeatReply {
                            ack: self.ack(),
                            role: self.node.role_for_primary(),
                        })
                    }
                    Err((kind, message)) => Err(self.refusal(kind, message)),
                };
                let _ = reply.send(r);
            }
            Answering::Batch {
                session,
                primary_last_lsn,
            } => match result {
                Ok(()) => {
                    self.session_checked(session);
                    self.note_primary_contact(primary_last_lsn);
                    // With an inline fsync due, `sync_received` answers
                    // after it.
                    if !self.sync_due {
                        self.send_ack_always();
                    }
                }
                Err((kind, message)) => {
                    tracing::warn!(reason = kind.as_str(), %message, "WAL batch refused");
                    self.metrics.rejected(kind);
                    let r = self.refusal(kind, message);
                    self.end_session(session, r);
                }
            },
            Answering::History { asker, reply } => {
                let r = match result {
                    Ok(()) => Ok(HistoryReply {
                        epoch: self.node.epoch(),
                        history: self.wal.history(),
                        last_lsn: self.wal.last_lsn(),
                        first_lsn: self.wal.first_lsn(),
                        role: self.node.role(),
                        unconfirmed: !self.wal.meta().confirmed,
                        restart_lsn: self
                            .restart_point
                            .as_ref()
                            .filter(|_| self.node.role() == crate::node::RoleKind::Primary)
                            .and_then(|r| r.lsn_for(&asker)),
                    }),
                    Err((kind, message)) => Err(self.refusal(kind, message)),
                };
                let _ = reply.send(r);
            }
            Answering::Snapshot(reply) => match result {
                Ok(()) => self.serve_snapshot(reply),
                Err((kind, message)) => {
                    let _ = reply.send(Err(self.refusal(kind, message)));
                }
            },
            Answering::RequestIds {
                after,
                up_to,
                reply,
            } => {
                let answer = match result {
                    Ok(()) => {
                        let mut ids =
                            self.node
                                .request_ids_between(after, up_to, IDS_PER_REPLY + 1);
                        let more = ids.len() > IDS_PER_REPLY;
                        ids.truncate(IDS_PER_REPLY);
                        Ok(crate::transport::RequestIds { ids, more })
                    }
                    Err((kind, message)) => Err(self.refusal(kind, message)),
                };
                let _ = reply.send(answer);
            }
            Answering::Fence(reply) => {
                let _ = reply.send(result.map_err(|(_, message)| Error::InvalidInput(message)));
            }
            Answering::Rejoin(_) => {
                tracing::error!("the node answered a rejoin plan request with an answer");
            }
        }
    }

    /// The node serves this snapshot request: the peer gets the snapshot
    /// being built, a fresh one already built, or a new build; the service
    /// streams it.
    pub(super) fn serve_snapshot(
        &mut self,
        reply: oneshot::Sender<std::result::Result<crate::runtime::PendingSnapshot, Refusal>>,
    ) {
        let _ = reply.send(Ok(self.snapshots.get()));
    }

    /// Each peer's client address, for the leader hints we give; the
    /// service checked that the sender is one of our peers.
    pub(super) fn note_peer_client_addr(&mut self, header: &Header) {
        if let Some(addr) = &header.client_addr {
            self.peer_client_addrs
                .insert(header.node_id.clone(), addr.clone());
        }
    }
}

fn reply_promote(to: PromoteReplyTo, result: std::result::Result<Epoch, String>, epoch: Epoch) {
    match to {
        PromoteReplyTo::Local(tx) => {
            let _ = tx.send(result.map_err(|reason| Error::PromotionRefused { reason }));
        }
        PromoteReplyTo::Remote(tx) => {
            let _ = tx.send(
                result
                    .map(|e| PromoteReply {
                        epoch: e,
                        message: format!("promoted: this node is now the primary of epoch {e}"),
                    })
                    .map_err(|reason| Refusal::new(RefusalKind::Unavailable, reason, epoch)),
            );
        }
    }
}
