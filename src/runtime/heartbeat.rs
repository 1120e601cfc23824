//! The primary's heartbeats: on their own connection, every
//! `heartbeat_interval`, whatever the WAL stream is doing.

use super::{Metrics, Msg};
use crate::config::Config;
use crate::error::TransportError;
use crate::node::{Event, RoleKind};
use crate::replicator::Health;
use crate::transport::{Header, HeartbeatRequest, Peer};
use std::sync::Arc;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

pub(super) struct Ctx {
    pub cfg: Config,
    /// The standby this task serves.
    pub standby: crate::types::NodeId,
    pub peer: Arc<dyn Peer>,
    pub tx: mpsc::Sender<Msg>,
    pub health: watch::Receiver<Health>,
    pub header: Header,
    /// Our meta: whether we are a confirmed primary, as persisted.
    pub wal: Arc<dyn crate::wal::WalStore>,
    pub metrics: Arc<Metrics>,
    /// `Config::cluster_rule_text`, sent with each heartbeat.
    pub rule_text: String,
    /// Told when heartbeats are answered again after failing, or when the
    /// standby answers as a standby after answering as something else
    /// (rejoining, fenced: it refused the stream until now), so the WAL
    /// stream reconnects now instead of at the end of its backoff.
    pub reachable_again: Arc<Notify>,
    pub cancel: CancellationToken,
}

pub(super) fn spawn(ctx: Ctx) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(ctx.cfg.heartbeat_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut failing = false;
        // The role the standby answered with last, if it answered.
        let mut last_role: Option<RoleKind> = None;
        loop {
            tokio::select! {
                _ = ctx.cancel.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let req = {
                let h = ctx.health.borrow();
                HeartbeatRequest {
                    header: ctx.header.clone(),
                    last_lsn: h.last_lsn,
                    commit_lsn: h.commit_lsn,
                    // What the node tells this standby of its own state.
                    sync: h
                        .standbys
                        .iter()
                        .find(|s| s.node_id == ctx.standby)
                        .map_or(crate::node::SyncState::NotSync, |s| s.sync_state),
                    confirmed: ctx.wal.meta().confirmed,
                    commit_rule: ctx.rule_text.clone(),
                }
            };
            let started = Instant::now();
            let result = tokio::select! {
                _ = ctx.cancel.cancelled() => return,
                r = ctx.peer.heartbeat(req) => r,
            };
            if let Ok(reply) = &result {
                let _ = ctx
                    .tx
                    .send(Msg::StandbyReported(ctx.standby.clone(), reply.ack))
                    .await;
            }
            let event = match result {
                // It answers, but cannot store what we send (its WAL
                // failed: a full disk, an I/O error): as good as lost, so
                // the on_standby_loss policy applies instead of every
                // write waiting out sync_timeout.
                Ok(reply) if reply.role == RoleKind::Failed => {
                    ctx.metrics.heartbeat_error();
                    if !failing {
                        tracing::warn!(peer = %ctx.standby, "the standby answers but its WAL failed (disk full or I/O error); counting it as lost");
                        failing = true;
                    }
                    Event::StandbyFailed {
                        standby: ctx.standby.clone(),
                    }
                }
                Ok(reply) => {
                    ctx.metrics.heartbeat_rtt(started.elapsed());
                    let became_standby = reply.role == RoleKind::Standby
                        && last_role.is_some_and(|r| r != RoleKind::Standby);
                    last_role = Some(reply.role);
                    if failing {
                        tracing::info!(peer = %ctx.standby, "heartbeats answered again");
                        failing = false;
                        ctx.reachable_again.notify_one();
                    } else if became_standby {
                        // It finished a rejoin (a resync, perhaps): the
                        // stream it refused meanwhile may be in a long
                        // backoff; stream to it now.
                        tracing::info!(peer = %ctx.standby, "the standby answers as a standby again; reconnecting the WAL stream");
                        ctx.reachable_again.notify_one();
                    }
                    Event::StandbyReachable {
                        standby: ctx.standby.clone(),
                    }
                }
                Err(TransportError::StaleEpoch { epoch, leader }) => Event::HigherEpoch {
                    epoch,
                    leader: leader.map(|l| l.id),
                },
                Err(e) => {
                    ctx.metrics.heartbeat_error();
                    if !failing {
                        tracing::warn!(peer = %ctx.standby, error = %e, "heartbeat failed");
                        failing = true;
                    }
                    Event::StandbyUnreachable {
                        standby: ctx.standby.clone(),
                    }
                }
            };
            if ctx.tx.send(Msg::Event(event)).await.is_err() {
                return;
            }
        }
    })
}
