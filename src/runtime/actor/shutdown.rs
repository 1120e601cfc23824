//! Stopping the node: every caller is answered, every task stopped and
//! awaited, and what was appended made durable.

use crate::transport::{Refusal, RefusalKind};

use super::Actor;

impl Actor {
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
        // Whatever was appended is made durable before we go.
        let _ = self.wal.sync();
    }
}
