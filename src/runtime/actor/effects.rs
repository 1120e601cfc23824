//! Carrying out the node's effects, and the tasks some of them start
//! (streamer and heartbeats, applier, rejoin, a fence to the peer).

use crate::TransportError;
use crate::arbiter::{ArbiterError, Caller, CasOutcome, SwapRefusal};
use crate::node::{
    ArbiterAnswer, ArbiterCall, ArbiterPurpose, CallFailed, Effect, Event, FenceOutcome,
    FenceReason, FetchFailed, LogEnd, Refused, RoleKind, SealRefused,
};
use crate::runtime::{Msg, applier, heartbeat, rejoin, streamer};
use crate::transport::{FenceReply, FenceRequest, RefusalKind};
use crate::types::{Epoch, Lsn, NodeId};
use crate::wal::WalMeta;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use super::{Actor, Answering, Tasks, refusal_error};

impl Actor {
    /// Carries out one step's effects in order. The node emits
    /// `PersistMeta` before anything that acts on the new epoch (G1: persist
    /// before a message goes out); if that write fails, the rest of the step
    /// acted on an epoch this node does not hold durably, so what would tell
    /// anyone about it (a fence, an accepting answer, the primary's tasks, a
    /// rejoin) is not carried out; pending requests get a refusal instead.
    pub(super) fn run_effects(&mut self, effects: Vec<Effect>) {
        let mut effects = effects.into_iter();
        while let Some(effect) = effects.next() {
            let Effect::PersistMeta {
                epoch,
                leader,
                confirmed,
            } = effect
            else {
                self.run_effect(effect);
                continue;
            };
            let meta = WalMeta {
                epoch,
                leader: leader.clone(),
                confirmed,
                restart_points: self.restart_points_to_keep(),
            };
            if let Err(e) = self.wal.set_meta(&meta) {
                let reason = format!("persisting epoch {epoch}: {e}");
                // The step's epoch is not durable: the node goes back to the
                // one it holds on disk first, so the refusals the rest of
                // the step sends carry that one, and nobody hears of the new
                // one. The failure's own effects run after the rest, in the
                // order the roles changed.
                let kept = self.wal.meta();
                let failed = self.node.step(
                    self.now(),
                    Event::PersistFailed {
                        reason: reason.clone(),
                        epoch: kept.epoch,
                        leader: kept.leader,
                    },
                );
                for rest in effects {
                    self.withhold(rest, &reason);
                }
                self.run_effects(failed);
                return;
            }
            tracing::info!(%epoch, leader = ?leader.as_ref().map(|l| &l.0), confirmed, "epoch persisted");
        }
    }

    /// An effect of a step whose epoch could not be persisted: what only
    /// tidies up still runs; what would act on the epoch does not, and a
    /// waiting request is refused rather than left hanging.
    fn withhold(&mut self, effect: Effect, reason: &str) {
        let why = format!("this node could not persist its epoch ({reason})");
        match effect {
            Effect::RoleChanged {
                from: RoleKind::Standby,
                ..
            } => {
                // A promotion that did not happen: the primary's stream
                // ends as with any node that cannot take it, not with the
                // news of an epoch nobody will lead.
                let refusal = self.refusal(RefusalKind::Unavailable, why);
                self.end_open_session(refusal);
                self.run_effect(effect)
            }
            Effect::FailWaiters { .. }
            | Effect::RoleChanged { .. }
            | Effect::StopPrimaryTasks
            | Effect::RefuseWrites { .. }
            | Effect::Stop => self.run_effect(effect),
            Effect::ReplyFence(_) => {
                if let Some(reply) = self.pending_fence.take() {
                    let _ = reply.send(Err(self.refusal(RefusalKind::Unavailable, why)));
                }
            }
            Effect::ReplyPromote(_) => self.run_effect(Effect::ReplyPromote(Err(why))),
            Effect::Answer(_) => self.answer(Err(Refused::new(RefusalKind::Unavailable, why))),
            other => {
                tracing::warn!(effect = ?other, %reason, "not carried out: the epoch it acts on was not persisted")
            }
        }
    }

    pub(super) fn run_effect(&mut self, effect: Effect) {
        match effect {
            Effect::PersistMeta { .. } => {
                unreachable!("run_effects persists the epoch itself")
            }
            Effect::RoleChanged { from, to, epoch } => {
                tracing::info!(node = %self.cfg.node_id, %from, %to, %epoch, "role changed");
                self.metrics.transition(from, to);
                if to == RoleKind::Primary {
                    // Every record we hold came from the peer, which held
                    // it when it sent it: until the peer answers, it lacks
                    // what we write from now on (what it reported while we
                    // were not primary is about another stream).
                    self.note_standby_matched(self.node.last_lsn());
                }
                if from == RoleKind::Standby && to != RoleKind::Standby {
                    self.end_inbound_stream(to, epoch);
                }
                if to == RoleKind::Standby {
                    // It either rejoined (its log is a prefix of the
                    // primary's) or was an unconfirmed primary that wrote
                    // nothing. Kept when we are fenced, for our own rejoin
                    // (`LocalLog::restarted_at`), and at a promotion: only
                    // a forced one comes before that rejoin ended, and the
                    // peer that led meanwhile may hold the records we lost
                    // under the LSNs we wrote since, which our stream must
                    // then make it drop.
                    self.drop_restart_points();
                }
                if matches!(from, RoleKind::Fenced | RoleKind::Rejoining)
                    && matches!(to, RoleKind::Promoting | RoleKind::Primary)
                {
                    self.end_rejoin_for_promotion();
                }
                if let Some(reason) = self.node.failed_for_good().map(str::to_string) {
                    // A node failed for good drops the promotion or
                    // switchover under way: its callers learn why now, not
                    // at their timeout. (A standby that will try its WAL
                    // again may still finish it: they keep waiting.)
                    self.fail_promotes(format!(
                        "this node failed before the promotion finished: {reason}"
                    ));
                }
            }
            Effect::Commit { lsn } => {
                self.commit_tx.send_replace(lsn);
            }
            Effect::FailWaiters { up_to, failure } => self.fail_waiters(up_to, &failure),
            Effect::SendFence { epoch, reason, to } => self.send_fence(epoch, reason, to),
            Effect::SealStandbys { epoch, to } => self.seal_standbys(epoch, to),
            Effect::FetchWal {
                from,
                epoch,
                after,
                up_to,
            } => self.fetch_wal(from, epoch, after, up_to),
            Effect::AskArbiter { purpose, call } => self.ask_arbiter(purpose, call),
            Effect::ReplyFence(outcome) => {
                let Some(reply) = self.pending_fence.take() else {
                    return;
                };
                let result = match outcome {
                    FenceOutcome::Fenced { last_lsn } => Ok(FenceReply {
                        epoch: self.node.epoch(),
                        last_lsn,
                        last_epoch: self.wal.epoch_at(last_lsn).unwrap_or(Epoch::ZERO),
                    }),
                    FenceOutcome::Refused { reason } => {
                        Err(self.refusal(RefusalKind::StaleEpoch, reason))
                    }
                    FenceOutcome::Unavailable { reason } => {
                        Err(self.refusal(RefusalKind::Unavailable, reason))
                    }
                };
                let _ = reply.send(result);
            }
            Effect::ReplyPromote(result) => self.reply_promotes(result),
            Effect::StartPrimaryTasks => self.start_primary_tasks(),
            Effect::StopPrimaryTasks => {
                if let Some(tasks) = self.primary_tasks.take() {
                    // Now, not when the spawned stop first runs: a
                    // `StartPrimaryTasks` may follow in this step (a retake
                    // of the epoch), and an old stream's "down" must not
                    // arrive after the new one's "up".
                    tasks.cancel_now();
                    tokio::spawn(tasks.stop());
                }
            }
            Effect::StartRejoin { .. } if self.handing_over => {
                // Handed over while stopping: the next start rejoins.
                tracing::info!("stepped down for the new primary; not rejoining while stopping");
            }
            Effect::StartRejoin { leader } => self.start_rejoin(leader),
            Effect::AskPeersForNewerEpoch => self.ask_peers_for_newer_epoch(),
            Effect::Stop => self.stop_now = true,
            Effect::HandOver { to } => self.hand_over(to),
            Effect::Append {
                records,
                fsync_inline,
                retried,
            } => self.append(records, fsync_inline, retried),
            Effect::RefuseWrites { refusal, in_log } => {
                let leader = self.leader_hint();
                let mut first = 0;
                for (count, reply) in self.writing.take().into_iter().flatten() {
                    // A retry of a record our log holds may still be (or
                    // already be) written: not "nothing written".
                    let retried = in_log
                        .get(first..first + count)
                        .is_some_and(|own| own.contains(&true));
                    first += count;
                    let error = refusal_error(refusal.clone(), leader.clone(), retried);
                    let _ = reply.send(Err(error));
                }
            }
            Effect::Answer(result) => self.answer(result),
            Effect::ForwardPromote { to } => self.forward_promote(to),
            Effect::CannotStart { reason } => {
                unreachable!("the node refuses to start only when opened: {reason}")
            }
            Effect::TrimWal { keep_from } => self.trim_wal(keep_from),
            Effect::Rejoin(plan) => match self.answering.take() {
                Some(Answering::Rejoin(reply)) => {
                    let _ = reply.send(plan);
                }
                _ => tracing::error!("a rejoin plan with no rejoin asking for it"),
            },
        }
    }

    /// Removes the WAL before `keep_from` on a blocking thread when the
    /// WAL may block: removing a segment fsyncs, and the last close of an
    /// unlinked 64 MiB file frees (and on a disk mounted with `discard`,
    /// discards) its blocks before it returns, hundreds of milliseconds
    /// while the disk is busy; on this task that stopped the node from
    /// stepping (and, on one runtime thread, the whole node). One trim at
    /// a time: the node asks again at a later tick for what is still due.
    fn trim_wal(&mut self, keep_from: Lsn) {
        let trim = {
            let wal = self.wal.clone();
            move || {
                if let Err(e) = wal.remove_before(keep_from) {
                    tracing::warn!(error = %e, "could not remove old WAL segments");
                }
            }
        };
        if !self.wal.may_block() {
            trim();
            return;
        }
        if self.trimming.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        self.trimming = Some(tokio::task::spawn_blocking(trim));
    }

    /// The peer named `id`, or the pair's peer for a name that is none of
    /// ours (`None`: the pair's peer).
    pub(super) fn peer_named(
        &self,
        id: Option<&NodeId>,
    ) -> (NodeId, Arc<dyn crate::transport::Peer>) {
        match id.and_then(|id| self.peers.get_key_value(id)) {
            Some((id, peer)) => (id.clone(), peer.clone()),
            None => (self.cfg.peer_id.clone(), self.peer.clone()),
        }
    }

    pub(super) fn send_fence(&mut self, epoch: Epoch, reason: FenceReason, to: Option<NodeId>) {
        let (to, peer) = self.peer_named(to.as_ref());
        let tx = self.tx.clone();
        let mut header = self.header();
        header.epoch = epoch;
        header.leader_id = Some(self.cfg.node_id.clone());
        tracing::info!(%epoch, ?reason, peer = %to, "sending fence");
        tokio::spawn(async move {
            let result = peer
                .fence(FenceRequest {
                    header,
                    reason,
                    candidate_end: None,
                })
                .await;
            let confirmed = match result {
                Ok(reply) => Some(reply.last_lsn),
                Err(crate::TransportError::StaleEpoch { epoch, leader }) => {
                    let leader = leader.map(|l| l.id);
                    let _ = tx
                        .send(Msg::Event(Event::HigherEpoch { epoch, leader }))
                        .await;
                    None
                }
                Err(e) => {
                    tracing::warn!(error = %e, "fence not confirmed");
                    None
                }
            };
            let _ = tx
                .send(Msg::Event(Event::FenceSent {
                    confirmed_last_lsn: confirmed,
                }))
                .await;
        });
    }

    /// Carries out `Effect::AskPeersForNewerEpoch`: each peer is asked for
    /// its log's history (the cheapest call that checks our epoch), beside
    /// the actor. Only a stale-epoch refusal matters; any answer or other
    /// failure says nothing new.
    fn ask_peers_for_newer_epoch(&self) {
        let header = self.header();
        let peers: Vec<_> = self.peers.values().cloned().collect();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            for peer in peers {
                if let Err(TransportError::StaleEpoch { epoch, leader }) =
                    peer.history(header.clone()).await
                {
                    tracing::info!(%epoch, leader = ?leader.as_ref().map(|l| &l.id), "a peer holds a newer epoch");
                    let leader = leader.map(|l| l.id);
                    let _ = tx
                        .send(Msg::Event(Event::HigherEpoch { epoch, leader }))
                        .await;
                    return;
                }
            }
        });
    }

    /// Our header as a candidate for `epoch`: that epoch, which nobody
    /// leads yet.
    fn candidate_header(&self, epoch: Epoch) -> crate::transport::Header {
        let mut header = self.header();
        header.epoch = epoch;
        header.leader_id = None;
        header
    }

    /// A candidate's fences of reason `Candidate`, one task per standby;
    /// each answer comes back as `Msg::SealAnswer` (stepped with this
    /// node's log end then).
    fn seal_standbys(&mut self, epoch: Epoch, to: Vec<NodeId>) {
        let header = self.candidate_header(epoch);
        let mine = self.log_end();
        for standby in to {
            let (standby, peer) = self.peer_named(Some(&standby));
            let (tx, header) = (self.tx.clone(), header.clone());
            tracing::debug!(%epoch, %standby, "asking a standby for its final position");
            tokio::spawn(async move {
                let req = FenceRequest {
                    header,
                    reason: FenceReason::Candidate,
                    candidate_end: Some(mine),
                };
                let answer = seal_answer(epoch, peer.fence(req).await);
                let _ = tx
                    .send(Msg::SealAnswer {
                        from: standby,
                        epoch,
                        answer,
                    })
                    .await;
            });
        }
    }

    /// A candidate reads what it lacks from the standby `from`, one batch
    /// per call, until it holds `up_to` (or a call fails); each batch
    /// comes back as `Msg::Fetched`.
    fn fetch_wal(&mut self, from: NodeId, epoch: Epoch, after: Lsn, up_to: Lsn) {
        let (from, peer) = self.peer_named(Some(&from));
        let header = self.candidate_header(epoch);
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let mut after = after;
            while after < up_to {
                let batch = peer.read_wal(header.clone(), after, up_to).await;
                let next = match &batch {
                    Ok(b) => b.records.last().map(|r| r.lsn),
                    Err(_) => None,
                };
                let msg = Msg::Fetched {
                    from: from.clone(),
                    batch: batch.map_err(|e| match e {
                        TransportError::TooFarBehind(_) => FetchFailed::Trimmed(e.to_string()),
                        other => FetchFailed::Other(other.to_string()),
                    }),
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
                match next {
                    Some(lsn) if lsn > after => after = lsn,
                    _ => return,
                }
            }
        });
    }

    /// Calls the arbiter on a task of its own, bounded by `rpc_timeout`,
    /// and reports its answer to the node: the arbiter is never on the
    /// write path.
    fn ask_arbiter(&mut self, purpose: ArbiterPurpose, call: ArbiterCall) {
        let Some(arbiter) = self.cfg.arbiter.clone() else {
            return;
        };
        let caller = Caller {
            node_id: self.cfg.node_id.clone(),
            epoch: self.node.epoch(),
            seen_version: self.node.arbiter_seen_version(),
            leads: self.node.leads_its_epoch(),
        };
        let cluster = self.cfg.cluster_id.clone();
        let deadline = self.cfg.rpc_timeout;
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let call = async {
                match call {
                    ArbiterCall::Read => arbiter
                        .read(&cluster, &caller)
                        .await
                        .map(ArbiterAnswer::Read),
                    ArbiterCall::Swap {
                        expected_version,
                        next,
                    } => arbiter
                        .compare_and_swap(&cluster, &caller, expected_version, &next)
                        .await
                        .map(|outcome| match outcome {
                            CasOutcome::Swapped(r) => ArbiterAnswer::Swapped(r),
                            CasOutcome::Conflict(r) => ArbiterAnswer::Conflict(r),
                        }),
                }
            };
            let answer = match tokio::time::timeout(deadline, call).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(e)) => ArbiterAnswer::Failed {
                    why: match e {
                        ArbiterError::Unreachable(_) => CallFailed::Unreachable,
                        ArbiterError::Refused(SwapRefusal::MembersNotHeard { .. }) => {
                            CallFailed::MembersNotHeard
                        }
                        _ => CallFailed::Refused,
                    },
                    error: e.to_string(),
                },
                Err(_) => ArbiterAnswer::Failed {
                    why: CallFailed::Unreachable,
                    error: format!(
                        "{} did not answer within rpc_timeout ({deadline:?})",
                        arbiter.describe()
                    ),
                },
            };
            let _ = tx
                .send(Msg::Event(Event::ArbiterAnswered { purpose, answer }))
                .await;
        });
    }

    pub(super) fn start_primary_tasks(&mut self) {
        if self.primary_tasks.is_some() {
            return;
        }
        let cancel = CancellationToken::new();
        // Each standby has its own stream, window and heartbeats, so one
        // slow or dead standby holds up only what the commit rule waits
        // for it.
        let mut handles = Vec::new();
        for (standby, peer) in &self.peers {
            let reachable_again = Arc::new(tokio::sync::Notify::new());
            handles.push(streamer::spawn(streamer::Ctx {
                cfg: self.cfg.clone(),
                standby: standby.clone(),
                wal: self.wal.clone(),
                peer: peer.clone(),
                tx: self.tx.clone(),
                health: self.health_tx.subscribe(),
                last_lsn: self.last_lsn_tx.subscribe(),
                header: self.header(),
                reachable_again: reachable_again.clone(),
                restart_point: self.restart_point.clone(),
                cancel: cancel.child_token(),
            }));
            handles.push(heartbeat::spawn(heartbeat::Ctx {
                cfg: self.cfg.clone(),
                standby: standby.clone(),
                peer: peer.clone(),
                tx: self.tx.clone(),
                health: self.health_tx.subscribe(),
                header: self.header(),
                wal: self.wal.clone(),
                metrics: self.metrics.clone(),
                rule_text: self.cfg.cluster_rule_text(),
                reachable_again,
                cancel: cancel.child_token(),
            }));
        }
        self.primary_tasks = Some(Tasks::new(cancel, handles));
    }

    pub(super) fn start_applier(&mut self) {
        self.commit_tx.send_replace(self.node.commit_lsn());
        self.applier = Some(applier::spawn(
            self.wal.clone(),
            self.sm.clone(),
            self.commit_tx.subscribe(),
            self.tx.clone(),
        ));
    }

    pub(super) fn start_rejoin(&mut self, leader: Option<NodeId>) {
        if self.rejoin.is_some() {
            return;
        }
        if self.rejoin_stopping.is_some() {
            // Two rejoins must not rewrite the log at once.
            self.rejoin_deferred = Some(leader);
            return;
        }
        self.session = None;
        self.step(Event::RejoinStarted);
        let cancel = CancellationToken::new();
        let (asked, peer) = self.peer_named(leader.as_ref());
        let handle = rejoin::spawn(rejoin::Ctx {
            cfg: self.cfg.clone(),
            wal: self.wal.clone(),
            sm: self.sm.clone(),
            peer,
            tx: self.tx.clone(),
            header: self.header(),
            others: self
                .peers
                .iter()
                .filter(|(id, _)| **id != asked)
                .map(|(id, p)| (id.clone(), p.clone()))
                .collect(),
            leader: leader.unwrap_or_else(|| self.cfg.peer_id.clone()),
            applier: self.applier.take(),
            rewound_dir: self.rewound_dir.clone(),
            snapshots: self.snapshots.clone(),
            restore_lock: Default::default(),
            metrics: self.metrics.clone(),
            cancel: cancel.child_token(),
        });
        self.rejoin = Some(Tasks::new(cancel, vec![handle]));
    }

    /// A forced promotion of a node that was rejoining (still waiting for
    /// the primary: the node refuses one while the plan rewrites the log):
    /// the rejoin stops beside the actor (it waits for the applier it took
    /// to stop), and the tick that finds it stopped starts the applier
    /// again (`rejoin_stopped`).
    fn end_rejoin_for_promotion(&mut self) {
        let Some(rejoin) = self.rejoin.take() else {
            return;
        };
        tracing::info!("a forced promotion ends the rejoin under way");
        self.rejoin_stopping = Some(tokio::spawn(rejoin.stop()));
    }

    /// Once a rejoin a forced promotion ended has stopped: the rejoin asked
    /// for meanwhile starts (it takes no applier), or else the applier.
    pub(super) fn rejoin_stopped(&mut self) {
        if self
            .rejoin_stopping
            .as_ref()
            .is_none_or(|h| !h.is_finished())
        {
            return;
        }
        self.rejoin_stopping = None;
        if let Some(leader) = self.rejoin_deferred.take() {
            self.start_rejoin(leader);
        } else if self.rejoin.is_none()
            && self.applier.is_none()
            && !matches!(
                self.node.role(),
                RoleKind::Fenced | RoleKind::Rejoining | RoleKind::Failed
            )
        {
            self.start_applier();
        }
    }

    pub(super) fn rejoin_done(&mut self, result: std::result::Result<rejoin::Outcome, String>) {
        self.rejoin = None;
        match result {
            Ok(outcome) => {
                // Our log is now a prefix of the primary's.
                self.drop_restart_points();
                self.last_lsn_tx.send_replace(self.wal.last_lsn());
                self.step(Event::RejoinFinished {
                    epoch: outcome.epoch,
                    leader: outcome.leader,
                    first_lsn: self.wal.first_lsn(),
                    last_lsn: self.wal.last_lsn(),
                    flushed: self.wal.flushed_lsn(),
                    applied: self.sm.applied_lsn(),
                    snapshot_ids: outcome.snapshot_ids,
                });
            }
            Err(reason) => {
                tracing::error!(%reason, "rejoin stopped");
                self.step(Event::WalFailed { reason });
            }
        }
        if self.applier.is_none() {
            self.start_applier();
        }
    }
}

/// What a standby's answer to a candidate's seal for `epoch` tells the
/// node: its final position, or why there is none. An answer for another
/// epoch (a late one, of an earlier round) says nothing final about this
/// one. A stale-epoch refusal carries the newer epoch and its leader: the
/// candidate adopts that epoch, and takes it as a switchover if the
/// leader named is itself (`Node::on_seal_answered`).
fn seal_answer(
    epoch: Epoch,
    reply: Result<FenceReply, TransportError>,
) -> Result<LogEnd, SealRefused> {
    match reply {
        Ok(r) if r.epoch == epoch => Ok(LogEnd {
            epoch: r.last_epoch,
            lsn: r.last_lsn,
        }),
        Ok(r) => Err(SealRefused {
            why: format!("it answered for epoch {}, not {epoch}", r.epoch),
            newer: None,
        }),
        Err(e) => Err(SealRefused {
            why: e.to_string(),
            newer: match e {
                TransportError::StaleEpoch { epoch, leader } => Some((epoch, leader.map(|l| l.id))),
                _ => None,
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LeaderHint;

    fn reply(epoch: u64) -> FenceReply {
        FenceReply {
            epoch: Epoch(epoch),
            last_lsn: Lsn(7),
            last_epoch: Epoch(2),
        }
    }

    #[test]
    fn a_seal_answered_for_its_epoch_gives_the_standbys_final_position() {
        assert_eq!(
            seal_answer(Epoch(3), Ok(reply(3))),
            Ok(LogEnd {
                epoch: Epoch(2),
                lsn: Lsn(7)
            })
        );
    }

    #[test]
    fn a_seal_answered_for_another_epoch_is_no_final_position_and_no_newer_epoch() {
        let refused = seal_answer(Epoch(3), Ok(reply(2))).unwrap_err();
        assert_eq!(refused.newer, None);
        assert!(refused.why.contains("epoch 2, not 3"), "{}", refused.why);
    }

    /// The candidate learns the newer epoch and its leader from the
    /// refusal (seed 14142: a standby a switchover handed to the candidate
    /// names it leader of the next epoch); a string alone left the cluster
    /// with no primary.
    #[test]
    fn a_seal_refused_as_stale_carries_the_newer_epoch_and_its_leader() {
        let stale = TransportError::StaleEpoch {
            epoch: Epoch(4),
            leader: Some(LeaderHint {
                id: NodeId::from("n2"),
                addr: "127.0.0.1:1".into(),
                client_addr: None,
            }),
        };
        let refused = seal_answer(Epoch(3), Err(stale)).unwrap_err();
        assert_eq!(refused.newer, Some((Epoch(4), Some(NodeId::from("n2")))));
        let without_leader = TransportError::StaleEpoch {
            epoch: Epoch(4),
            leader: None,
        };
        let refused = seal_answer(Epoch(3), Err(without_leader)).unwrap_err();
        assert_eq!(refused.newer, Some((Epoch(4), None)));
    }

    #[test]
    fn a_seal_that_failed_otherwise_names_no_newer_epoch() {
        let refused = seal_answer(
            Epoch(3),
            Err(TransportError::Unreachable("connection refused".into())),
        )
        .unwrap_err();
        assert_eq!(refused.newer, None);
        assert!(
            refused.why.contains("connection refused"),
            "{}",
            refused.why
        );
    }
}
