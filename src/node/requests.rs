//! Requests to the node: the engine's writes and fences, and the peer's
//! heartbeats, WAL batches, history and snapshot requests. Every request
//! from the peer passes the epoch rules first (`admit`).

use super::event::{Effect, Refused, Retried};
use super::{Node, Role, Time};
use crate::transport::{Header, HeartbeatRequest, RefusalKind, WalBatch};
use crate::types::{Epoch, NodeId, Record, RequestId};

/// Why a peer's messages were refused loudly (at error level).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Loud {
    /// It is a primary of our epoch, as we are (`confirmed` or not: the
    /// first is the worse news, said again when it becomes true).
    TwoPrimaries { confirmed: bool },
    /// It is an unconfirmed primary and our log holds records
    /// (`wiped_peer.rs`).
    UnconfirmedPrimary,
}

impl Node {
    /// The epoch rules at the top of every request from the peer: a lower
    /// epoch is refused with ours (G1); a higher one is adopted (persisted,
    /// and a primary steps down) before the request is looked at. Returns
    /// whether the request may go on.
    pub(super) fn admit(&mut self, header: &Header) -> bool {
        self.admit_naming(header, true)
    }

    /// `admit` for a request from a node that follows (a rejoining node
    /// asking for our log or a snapshot): in a cluster its newer epoch is
    /// adopted with the leader it names, never with itself as leader (a
    /// third node may lead it). In a pair the epoch's leader can only be
    /// the sender, as `admit` assumes.
    pub(super) fn admit_from_follower(&mut self, header: &Header) -> bool {
        let pair = self.standbys.len() == 1;
        self.admit_naming(header, pair)
    }

    fn admit_naming(&mut self, header: &Header, sender_may_lead: bool) -> bool {
        if header.epoch < self.epoch {
            self.emit(Effect::Answer(Err(Refused::new(
                RefusalKind::StaleEpoch,
                format!(
                    "epoch {} is older than this node's epoch {}; a newer primary exists",
                    header.epoch, self.epoch
                ),
            ))));
            return false;
        }
        if header.epoch > self.epoch {
            let leader = header
                .leader_id
                .clone()
                .or_else(|| sender_may_lead.then(|| header.node_id.clone()));
            self.on_higher_epoch(header.epoch, leader);
        }
        true
    }

    /// Whether refusing `header`'s sender for `why` is news: not what this
    /// node last said loudly of that peer at that epoch. Records it.
    pub(super) fn first_time_said(&mut self, why: Loud, header: &Header) -> bool {
        self.first_time_said_of(why, &header.node_id, header.epoch)
    }

    /// `first_time_said` for a peer known by its id and epoch.
    pub(super) fn first_time_said_of(&mut self, why: Loud, peer: &NodeId, epoch: Epoch) -> bool {
        let said = (why, peer.clone(), epoch);
        if self.said_loudly.as_ref() == Some(&said) {
            return false;
        }
        self.said_loudly = Some(said);
        true
    }

    /// A peer that talks to us as its standby while we are the primary of
    /// the same epoch: two writers in one epoch (G1) is a bug somewhere, or
    /// two nodes both started as primary on fresh data directories; refuse
    /// and say so loudly.
    fn refuse_two_primaries(&mut self, header: &Header, what: &str) {
        let confirmed = matches!(&self.role, Role::Primary(p) if p.confirmed);
        if !self.first_time_said(Loud::TwoPrimaries { confirmed }, header) {
            // Said at error level at the first of these messages.
        } else if confirmed {
            tracing::error!(node = %self.cfg.node_id, peer = %header.node_id, epoch = %header.epoch, "two primaries in one epoch: refusing the peer's {what}");
        } else {
            tracing::error!(node = %self.cfg.node_id, peer = %header.node_id, epoch = %header.epoch, "both nodes were started as primary: refusing the peer's {what}; this node takes no writes until the peer follows it (the peer steps down if its log is empty and its node id is the greater); otherwise restart one of them as standby on an empty data directory, or `promote --force` the one to keep");
        }
        self.emit(Effect::Answer(Err(Refused::new(
            RefusalKind::NotStandby,
            if confirmed {
                "this node is the primary of that epoch"
            } else {
                "this node was started as primary too and takes no writes until one of the two follows the other"
            },
        ))));
    }

    /// Two nodes both started as primary on fresh data directories meet
    /// at epoch 1 (or a node whose directory was wiped is started as
    /// primary beside the real one). Exactly one of them must step down,
    /// and it must be one that never took a write: a primary not yet
    /// confirmed, whose log is empty, yields to a peer whose log has
    /// records (it was confirmed and took writes) or, when both are empty,
    /// to the peer with the smaller node id. The peer yields in no case we
    /// would, so the two converge on one primary; nothing is lost, as the
    /// node that steps down holds nothing. `peer_last` is the peer's last
    /// LSN as its message says, `peer_confirmed` whether it says it is a
    /// confirmed primary (a heartbeat does): we yield to one too.
    fn yields_to_peer_primary(
        &self,
        header: &Header,
        peer_last: crate::types::Lsn,
        peer_confirmed: bool,
    ) -> bool {
        // With an arbiter the register decides which of the two is primary.
        let unconfirmed = matches!(&self.role, Role::Primary(p) if !p.confirmed);
        !self.has_arbiter()
            && unconfirmed
            && header.epoch == self.epoch
            && self.last_lsn == crate::types::Lsn::ZERO
            && (peer_confirmed
                || peer_last > crate::types::Lsn::ZERO
                || header.node_id < self.cfg.node_id)
    }

    fn step_down_for_peer_primary(&mut self, header: &Header) {
        let peer = header.node_id.clone();
        tracing::warn!(epoch = %self.epoch, %peer, "both nodes were started as primary; this one never took a write and steps down to be the peer's standby (the node whose log has records, else the smaller node id, stays primary)");
        self.persist(self.epoch, Some(peer));
        self.change_role(Role::Standby(super::standby::Standby::new()));
    }

    pub(super) fn on_heartbeat(&mut self, now: Time, req: HeartbeatRequest) {
        if self.refuses_unconfirmed_primary(&req.header, req.confirmed) || !self.admit(&req.header)
        {
            return;
        }
        if matches!(self.role, Role::Primary(_)) {
            if !self.yields_to_peer_primary(&req.header, req.last_lsn, req.confirmed) {
                self.refuse_two_primaries(&req.header, "heartbeat");
                return;
            }
            self.step_down_for_peer_primary(&req.header);
        }
        let primary = req.header.node_id.clone();
        self.on_primary_contact(
            now,
            req.header.epoch,
            req.header.node_id,
            req.last_lsn,
            req.commit_lsn,
            req.sync,
        );
        // After the contact, which may make this node another primary's
        // standby: the rule is that primary's.
        self.note_primary_rule(now, req.header.epoch, &primary, req.commit_rule);
        self.emit(Effect::Answer(Ok(())));
    }

    /// The primary's commit rule, as its heartbeat gives it: a standby of
    /// a cluster whose own differs says so once and does not promote by a
    /// failover until they agree (a rule waiting for fewer standbys than
    /// its own would need positions it would not ask for).
    fn note_primary_rule(
        &mut self,
        now: Time,
        epoch: Epoch,
        primary: &crate::types::NodeId,
        theirs: String,
    ) {
        let ours = &self.cluster_rule;
        // An empty rule comes from a primary that predates the field: it
        // confirms nothing.
        self.primary_rule_heard =
            (!theirs.is_empty() && theirs == *ours).then(|| (epoch, primary.clone(), now));
        let foreign = (!ours.is_empty() && !theirs.is_empty() && theirs != *ours).then_some(theirs);
        if let Role::Standby(s) = &mut self.role
            && s.foreign_rule != foreign
        {
            match &foreign {
                Some(theirs) => {
                    tracing::error!(primary_rule = %theirs, this_node_rule = %ours, "the primary's commit rule is not this node's: this standby will not promote by a failover until every node has the same sync_standbys")
                }
                None => {
                    tracing::info!(rule = %ours, "the primary's commit rule is this node's again")
                }
            }
            s.foreign_rule = foreign;
        }
    }

    pub(super) fn on_snapshot_requested(&mut self, header: Header) {
        if !self.admit_from_follower(&header) {
            return;
        }
        if !matches!(self.role, Role::Primary(_)) {
            self.emit(Effect::Answer(Err(Refused::new(
                RefusalKind::NotStandby,
                "only the primary serves snapshots",
            ))));
            return;
        }
        self.emit(Effect::Answer(Ok(())));
    }

    /// The engine fences this node: only towards a newer epoch, which the
    /// peer leads.
    pub(super) fn on_fence_ordered(&mut self, epoch: Epoch) {
        if epoch <= self.epoch {
            let message = format!(
                "fence epoch {epoch} must be above this node's epoch {}",
                self.epoch
            );
            self.emit(Effect::Answer(Err(Refused::new(
                RefusalKind::StaleEpoch,
                message,
            ))));
            return;
        }
        self.on_higher_epoch(epoch, Some(self.cfg.peer_id.clone()));
        self.emit(Effect::Answer(Ok(())));
    }

    /// Appends the writes as one run of records at our epoch, right after
    /// our last record, if this node may write now. A write whose request
    /// id a record of our log carries (a retry, even of a write the
    /// previous primary made) is not appended again: it is listed as
    /// retried and waits for that record, committed or still in flight.
    /// Two writes with one id in the same run are one record.
    pub(super) fn on_write_requested(
        &mut self,
        now: Time,
        payloads: Vec<bytes::Bytes>,
        request_ids: Vec<Option<RequestId>>,
    ) {
        if let Err(refusal) = self.check_writable() {
            let in_log = request_ids
                .iter()
                .map(|id| id.is_some_and(|id| self.requests.get(&id).is_some()))
                .collect();
            self.emit(Effect::RefuseWrites { refusal, in_log });
            return;
        }
        if payloads.is_empty() {
            return;
        }
        let epoch = self.epoch;
        let mut lsn = self.last_lsn;
        let mut records = Vec::with_capacity(payloads.len());
        let mut retried = Vec::new();
        for (write, payload) in payloads.into_iter().enumerate() {
            let request_id = request_ids.get(write).copied().flatten();
            if let Some(id) = &request_id {
                if let Some((lsn, epoch)) = self.requests.get(id) {
                    retried.push(Retried { write, lsn, epoch });
                    continue;
                }
                self.requests.insert(*id, lsn.next(), epoch);
            }
            lsn = lsn.next();
            records.push(Record {
                lsn,
                epoch,
                request_id,
                payload,
            });
        }
        if !records.is_empty() {
            self.on_appended(now, lsn);
        }
        for r in &retried {
            tracing::debug!(lsn = %r.lsn, epoch = %r.epoch, "a retried request id: waiting for its record instead of appending it again");
            self.on_retry_waits(now, r.lsn);
        }
        self.emit(Effect::Append {
            records,
            fsync_inline: false,
            retried,
        });
    }

    /// A batch from the primary: the epoch rules, then the log check (G3):
    /// records we already hold are skipped if they match; a batch that does
    /// not start inside our log, or that disagrees with it, is refused
    /// whole, and a disagreement sends us to rejoin.
    pub(super) fn on_batch(
        &mut self,
        now: Time,
        mut batch: WalBatch,
        local_at_prev: Option<Epoch>,
        local: Vec<Option<Epoch>>,
    ) {
        if self.refuses_unconfirmed_primary(&batch.header, !batch.unconfirmed)
            || !self.admit(&batch.header)
        {
            return;
        }
        if matches!(self.role, Role::Primary(_))
            && self.yields_to_peer_primary(&batch.header, batch.last_lsn, false)
        {
            self.step_down_for_peer_primary(&batch.header);
        }
        match &self.role {
            Role::Standby(_) => {}
            Role::Primary(_) => return self.refuse_two_primaries(&batch.header, "WAL batch"),
            other => {
                let message = format!(
                    "this node is {}, not a standby; retry after it has rejoined",
                    other.kind()
                );
                self.emit(Effect::Answer(Err(Refused::new(
                    RefusalKind::NotStandby,
                    message,
                ))));
                return;
            }
        }
        self.on_primary_contact(
            now,
            batch.header.epoch,
            batch.header.node_id.clone(),
            batch.last_lsn,
            batch.commit_lsn,
            batch.sync,
        );
        match self.check_batch(&batch, local_at_prev, &local) {
            Ok(first_new) => {
                let records = batch.records.split_off(first_new);
                if !records.is_empty() {
                    let fsync_inline = self.cfg.standby_sync_inline
                        && matches!(
                            self.cfg.commit_mode,
                            crate::config::CommitMode::RemoteFlush
                                | crate::config::CommitMode::RemoteApply
                        );
                    self.append_received(now, records, fsync_inline);
                }
                // Always answer a batch, even one that changed nothing (the
                // probe after a reconnect): the primary counts our
                // positions only from acks to batches it sent.
                self.emit(Effect::Answer(Ok(())));
            }
            Err(refused) => {
                let diverged = matches!(
                    refused.kind,
                    RefusalKind::Diverged | RefusalKind::TooFarBehind
                );
                self.emit(Effect::Answer(Err(refused)));
                if diverged {
                    // Our log does not continue the primary's (or the
                    // primary no longer has what we need): step aside and
                    // rejoin.
                    self.change_role(Role::Fenced);
                    self.emit(Effect::StartRejoin {
                        leader: self.leader.clone(),
                    });
                }
            }
        }
    }

    /// Appends `records` another node sent (the primary's batch, or what a
    /// candidate fetched), which continue our log: their request ids are
    /// indexed, the log's end moves, the runtime writes them.
    pub(super) fn append_received(&mut self, now: Time, records: Vec<Record>, fsync_inline: bool) {
        let Some(last) = records.last().map(|r| r.lsn) else {
            return;
        };
        assert_eq!(
            records[0].lsn,
            self.last_lsn.next(),
            "node {}: received records do not continue the log",
            self.cfg.node_id
        );
        for r in &records {
            if let Some(id) = r.request_id {
                self.requests.insert(id, r.lsn, r.epoch);
            }
        }
        self.on_appended(now, last);
        self.emit(Effect::Append {
            records,
            fsync_inline,
            retried: Vec::new(),
        });
    }

    /// Returns the index in `batch.records` of the first record we lack.
    fn check_batch(
        &self,
        batch: &WalBatch,
        local_at_prev: Option<Epoch>,
        local: &[Option<Epoch>],
    ) -> Result<usize, Refused> {
        let last = self.last_lsn;
        let brings_next = batch.records.first().is_some_and(|r| r.lsn <= last.next());
        if batch.first_lsn > last.next() && !brings_next {
            return Err(Refused::new(
                RefusalKind::TooFarBehind,
                format!(
                    "this standby needs records from {} but the primary keeps only {} onwards; resyncing from a snapshot",
                    last.next(),
                    batch.first_lsn
                ),
            ));
        }
        if batch.prev_lsn > last {
            return Err(Refused::new(
                RefusalKind::Gap,
                format!(
                    "batch starts after record {} but this standby's log ends at {last}; resend from {}",
                    batch.prev_lsn,
                    last.next()
                ),
            ));
        }
        if let Some(ours) = local_at_prev.filter(|e| *e != batch.prev_epoch) {
            return Err(Refused::new(
                RefusalKind::Diverged,
                format!(
                    "record {} has epoch {ours} here but {} on the primary; rewinding",
                    batch.prev_lsn, batch.prev_epoch
                ),
            ));
        }
        if batch.last_lsn < last {
            // We hold records the primary does not have at all.
            return Err(Refused::new(
                RefusalKind::Diverged,
                format!(
                    "this node holds records up to {last} but the primary's log ends at {}; rewinding",
                    batch.last_lsn
                ),
            ));
        }
        for (i, r) in batch.records.iter().enumerate() {
            if r.lsn > last {
                return Ok(i);
            }
            if let Some(ours) = local.get(i).copied().flatten().filter(|e| *e != r.epoch) {
                return Err(Refused::new(
                    RefusalKind::Diverged,
                    format!(
                        "record {} has epoch {ours} here but {} on the primary; rewinding",
                        r.lsn, r.epoch
                    ),
                ));
            }
        }
        Ok(batch.records.len())
    }
}
