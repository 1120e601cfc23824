//! `Link`: a `Peer` a test can cut (a dead network) and that can cut a
//! snapshot transfer part-way; `Pair` puts one between each node and its
//! peers.

use crate::error::TransportError;
use crate::transport::{
    AckStream, FenceReply, FenceRequest, Header, HeartbeatReply, HeartbeatRequest, HistoryReply,
    Peer, PromoteReply, PromoteRequest, RequestIds, SnapshotPart, SnapshotRequest, SnapshotStream,
    StatusReply, WalBatch,
};
use crate::types::Lsn;
use async_trait::async_trait;
use futures::StreamExt;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// A `Peer` whose link a test can cut: calls fail as a dead network
/// would, and open WAL streams end. It also records snapshot requests and
/// can cut one snapshot transfer part-way.
pub struct Link {
    inner: Arc<dyn Peer>,
    cut: Arc<watch::Sender<bool>>,
    /// `(snapshot_id, offset)` of every snapshot request, in order.
    pub snapshot_requests: std::sync::Mutex<Vec<(u64, u64)>>,
    /// Cut the next snapshot transfer after this many data chunks (once;
    /// the link is fine afterwards).
    pub cut_snapshot_after: std::sync::Mutex<Option<usize>>,
    /// With `cut_snapshot_after`: the whole link is cut at that moment too,
    /// and stays cut (a network that died mid-transfer).
    cut_link_with_snapshot: std::sync::atomic::AtomicBool,
    /// How many snapshot transfers this link cut.
    snapshot_cuts: Arc<watch::Sender<u64>>,
}

impl Link {
    /// A link over `inner`, not cut.
    pub fn new(inner: impl Peer + 'static) -> Arc<Link> {
        Arc::new(Link {
            inner: Arc::new(inner),
            cut: Arc::new(watch::channel(false).0),
            snapshot_requests: Default::default(),
            cut_snapshot_after: Default::default(),
            cut_link_with_snapshot: Default::default(),
            snapshot_cuts: Arc::new(watch::channel(0).0),
        })
    }

    /// Cuts (`true`) or restores the link.
    pub fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }

    /// Lets the next snapshot transfer deliver `chunks` data chunks, then
    /// cuts the whole link (every call fails from then on, as a dead
    /// network): the node keeps what it received and cannot resume it
    /// while this link lives. [`Link::wait_snapshot_cut`] says when.
    pub fn cut_link_after_snapshot_chunks(&self, chunks: usize) {
        self.cut_link_with_snapshot
            .store(true, std::sync::atomic::Ordering::SeqCst);
        *self.cut_snapshot_after.lock().unwrap() = Some(chunks);
    }

    /// Waits until this link has cut a snapshot transfer (the chunks
    /// before the cut were all handed to the node, which wrote each one
    /// before it asked for the next).
    pub async fn wait_snapshot_cut(&self) {
        let mut cuts = self.snapshot_cuts.subscribe();
        let _ = cuts.wait_for(|n| *n > 0).await;
    }

    fn check(&self) -> std::result::Result<(), TransportError> {
        if *self.cut.borrow() {
            Err(TransportError::Unreachable("link cut by the test".into()))
        } else {
            Ok(())
        }
    }
}

type TResult<T> = std::result::Result<T, TransportError>;

#[async_trait]
impl Peer for Link {
    async fn heartbeat(&self, req: HeartbeatRequest) -> TResult<HeartbeatReply> {
        self.check()?;
        self.inner.heartbeat(req).await
    }
    async fn fence(&self, req: FenceRequest) -> TResult<FenceReply> {
        self.check()?;
        self.inner.fence(req).await
    }
    async fn promote(&self, req: PromoteRequest) -> TResult<PromoteReply> {
        self.check()?;
        self.inner.promote(req).await
    }
    async fn status(&self, header: Header) -> TResult<StatusReply> {
        self.check()?;
        self.inner.status(header).await
    }
    async fn history(&self, header: Header) -> TResult<HistoryReply> {
        self.check()?;
        self.inner.history(header).await
    }
    async fn read_wal(&self, header: Header, after: Lsn, up_to: Lsn) -> TResult<WalBatch> {
        self.check()?;
        self.inner.read_wal(header, after, up_to).await
    }
    async fn open_wal_stream(&self, batches: mpsc::Receiver<WalBatch>) -> TResult<AckStream> {
        self.check()?;
        let acks = self.inner.open_wal_stream(batches).await?;
        let mut cut = self.cut.subscribe();
        let ended = async move {
            let _ = cut.wait_for(|c| *c).await;
        };
        Ok(Box::pin(acks.take_until(Box::pin(ended))))
    }
    async fn fetch_request_ids(
        &self,
        header: Header,
        after: Lsn,
        up_to: Lsn,
    ) -> TResult<Option<RequestIds>> {
        self.check()?;
        self.inner.fetch_request_ids(header, after, up_to).await
    }
    async fn fetch_snapshot(&self, req: SnapshotRequest) -> TResult<SnapshotStream> {
        self.check()?;
        self.snapshot_requests
            .lock()
            .unwrap()
            .push((req.snapshot_id, req.offset));
        let parts = self.inner.fetch_snapshot(req).await?;
        let cut_after = self.cut_snapshot_after.lock().unwrap().take();
        let cut_link = self
            .cut_link_with_snapshot
            .load(std::sync::atomic::Ordering::SeqCst);
        let (link, cuts) = (self.cut.clone(), self.snapshot_cuts.clone());
        let mut data_seen = 0usize;
        Ok(Box::pin(parts.scan(false, move |done, part| {
            if *done {
                return futures::future::ready(None);
            }
            if let Ok(SnapshotPart::Data { .. }) = &part {
                if cut_after == Some(data_seen) {
                    *done = true;
                    if cut_link {
                        link.send_replace(true);
                    }
                    cuts.send_modify(|n| *n += 1);
                    return futures::future::ready(Some(Err(TransportError::Unreachable(
                        "snapshot transfer cut by the test".into(),
                    ))));
                }
                data_seen += 1;
            }
            futures::future::ready(Some(part))
        })))
    }
}
