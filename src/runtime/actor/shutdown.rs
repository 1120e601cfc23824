//! Stopping the node: a primary first hands over to its standby when the
//! node says so (`Effect::HandOver`); then every caller is answered, every
//! task stopped and awaited, and what was appended made durable.

use crate::runtime::Msg;
use crate::transport::{PromoteRequest, Refusal, RefusalKind};
use crate::types::Epoch;

use super::Actor;

impl Actor {
    /// Carries out `Effect::HandOver`: asks the standby `to` to take over (a
    /// planned switchover that fences us meanwhile) and stops once it
    /// answered, or after about `switchover_timeout` whatever happened.
    /// The actor keeps serving the fence and the stream until then.
    pub(super) fn hand_over(&mut self, to: crate::types::NodeId) {
        self.handing_over = true;
        let (to, peer) = self.peer_named(Some(&to));
        self.handing_over_to = Some(to);
        let header = self.header();
        let tx = self.tx.clone();
        let limit = self.cfg.switchover_timeout + self.cfg.rpc_timeout * 2;
        let asked = tokio::spawn(async move {
            let asked = peer.promote(PromoteRequest {
                header,
                force: false,
            });
            match tokio::time::timeout(limit, asked).await {
                Ok(Ok(reply)) => Ok(reply.epoch),
                Ok(Err(e)) => Err(format!("the standby could not take over: {e}")),
                Err(_) => Err(format!("the standby did not take over within {limit:?}")),
            }
        });
        // A separate task, so the node stops even if the call panics.
        tokio::spawn(async move {
            let result = asked
                .await
                .unwrap_or_else(|e| Err(format!("the handover task failed: {e}")));
            let _ = tx.send(Msg::HandOverDone(result)).await;
        });
    }

    pub(super) fn hand_over_done(&mut self, result: std::result::Result<Epoch, String>) {
        match result {
            Ok(epoch) => {
                tracing::info!(node = %self.cfg.node_id, peer = ?self.handing_over_to, %epoch, role = %self.node.role(), "handed over: the standby is the primary of the new epoch; stopping")
            }
            Err(why) => {
                tracing::warn!(node = %self.cfg.node_id, %why, role = %self.node.role(), "handover failed; stopping anyway (the standby takes over by failover if it may)")
            }
        }
        self.stop_now = true;
    }

    pub(super) async fn shutdown(&mut self) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        tracing::info!(node = %self.cfg.node_id, "shutting down");
        self.fail_waiters_shutting_down();
        if let Some(reply) = self.pending_fence.take() {
            let _ = reply.send(Err(Refusal::new(
                RefusalKind::ShuttingDown,
                "node shutting down",
                self.node.epoch(),
            )));
        }
        self.session = None;
        if let Some(stopping) = self.rejoin_stopping.take() {
            let _ = stopping.await;
        }
        for tasks in [
            self.primary_tasks.take(),
            self.rejoin.take(),
            self.applier.take(),
            self.flusher.take(),
        ]
        .into_iter()
        .flatten()
        {
            tasks.stop().await;
        }
        // A trim still removing old segments holds the WAL (and with a
        // `FileWal`, its directory's lock): the node is stopped only once
        // it is done, so the WAL can be opened again at once.
        if let Some(trimming) = self.trimming.take() {
            let _ = trimming.await;
        }
        // Whatever was appended is made durable before we go. A failure
        // here is the last word on records this node may have reported
        // written (remote-write) but not flushed: say so loudly.
        if let Err(e) = self.wal.sync() {
            tracing::error!(node = %self.cfg.node_id, "the last fsync before stopping failed ({e}): records appended since the last successful one may not be on disk; check the disk before starting this node again");
        }
    }
}
