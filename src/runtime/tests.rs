//! The runtime with a mocked peer (mockall) and an in-memory WAL, under
//! paused tokio time: failover, fencing, commit timeouts, restarts.

use crate::config::{CommitMode, Config, InitialRole, OnStandbyLoss};
use crate::error::{Error, TransportError};
use crate::node::{RoleKind, SyncState};
use crate::replicator::Replicator;
use crate::testing::MemStateMachine;
use crate::transport::{
    FenceReply, Header, HeartbeatReply, HeartbeatRequest, MockPeer, Refusal, RefusalKind, WalAck,
};
use crate::types::{Epoch, Lsn, NodeId};
use crate::wal::gated::{GatedWal, Held};
use crate::wal::{MemWal, WalMeta, WalStore};
use crate::{Replica, ReplicationService};
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub(crate) fn cfg(role: InitialRole) -> Config {
    Config {
        node_id: NodeId::from("n1"),
        peer_id: NodeId::from("n2"),
        cluster_id: "c".into(),
        initial_role: role,
        ..Config::default()
    }
}

pub(crate) fn start(
    cfg: Config,
    wal: Arc<dyn WalStore>,
    peer: MockPeer,
) -> (Replica, ReplicationService) {
    Replica::builder(cfg, wal, Arc::new(MemStateMachine::new()))
        .peer(Arc::new(peer))
        .start_without_server()
        .unwrap()
}

fn put() -> Bytes {
    Bytes::from_static(b"put k v")
}

pub(crate) fn header(epoch: u64, from: &str) -> Header {
    Header {
        cluster_id: "c".into(),
        epoch: Epoch(epoch),
        node_id: NodeId::from(from),
        node_addr: "127.0.0.1:1".into(),
        leader_id: Some(NodeId::from(from)),
        client_addr: None,
    }
}

/// A heartbeat from `from` at `epoch`, handed to the node the way the gRPC
/// service hands it (the service's own checks are the transport's tests).
async fn heartbeat(
    service: &ReplicationService,
    epoch: u64,
    from: &str,
    sync: SyncState,
) -> Result<HeartbeatReply, Refusal> {
    service
        .inbox()
        .heartbeat(HeartbeatRequest {
            header: header(epoch, from),
            last_lsn: Lsn::ZERO,
            commit_lsn: Lsn::ZERO,
            sync,
            confirmed: true,
            commit_rule: String::new(),
        })
        .await
        .expect("the node answers")
}

/// The primary n2 at epoch 1 heartbeats us, telling us whether we are in sync.
async fn heartbeat_from_primary(service: &ReplicationService, sync: SyncState) {
    heartbeat(service, 1, "n2", sync)
        .await
        .expect("heartbeat accepted");
}

/// A standby's WAL that has followed n2 to `epoch`.
pub(crate) fn wal_at_epoch(epoch: u64) -> Arc<MemWal> {
    let wal = MemWal::new();
    wal.set_meta(&WalMeta {
        epoch: Epoch(epoch),
        leader: Some(NodeId::from("n2")),
        confirmed: true,
        restart_points: Default::default(),
    })
    .unwrap();
    Arc::new(wal)
}

/// A standby's WAL that has followed n2 to epoch 1.
pub(crate) fn standby_wal() -> Arc<MemWal> {
    wal_at_epoch(1)
}

/// `standby_wal` holding records `1..=last` of epoch 1, made durable.
fn standby_wal_holding(last: u64) -> Arc<MemWal> {
    let wal = standby_wal();
    let records: Vec<crate::types::Record> = (1..=last)
        .map(|i| crate::types::Record {
            lsn: Lsn(i),
            epoch: Epoch(1),
            payload: put(),
            request_id: None,
        })
        .collect();
    wal.append(&records).unwrap();
    wal.sync().unwrap();
    wal
}

/// The WAL of a primary (n1) of epoch 1 that its peer confirmed before it
/// restarted: it takes writes without waiting for the peer again.
pub(crate) fn confirmed_primary_wal() -> Arc<MemWal> {
    let wal = MemWal::new();
    confirm_as_primary(&wal);
    Arc::new(wal)
}

/// Makes `wal` that of a primary (n1) of epoch 1 its peer confirmed.
fn confirm_as_primary(wal: &dyn WalStore) {
    wal.set_meta(&WalMeta {
        epoch: Epoch(1),
        leader: Some(NodeId::from("n1")),
        confirmed: true,
        restart_points: Default::default(),
    })
    .unwrap();
}

/// Waits until a fresh primary's peer confirmed it and it takes writes.
async fn writable(replica: &Replica) {
    replica
        .wait_for(Duration::from_secs(5), "writable", |h| h.writable)
        .await
        .unwrap();
}

/// Ten (paused) seconds pass and the node is still a standby.
async fn assert_stays_standby(replica: &Replica) {
    let waited = replica
        .wait_for(Duration::from_secs(10), "promotion", |h| {
            h.role != RoleKind::Standby
        })
        .await;
    assert!(matches!(waited, Err(Error::Timeout(_))), "{waited:?}");
}

/// A peer that never answers: every call fails as an unreachable host.
pub(crate) fn unreachable_peer() -> MockPeer {
    let mut peer = MockPeer::new();
    peer.expect_heartbeat()
        .returning(|_| Err(TransportError::Unreachable("down".into())));
    peer.expect_open_wal_stream()
        .returning(|_| Err(TransportError::Unreachable("down".into())));
    peer.expect_history()
        .returning(|_| Err(TransportError::Unreachable("down".into())));
    peer
}

#[tokio::test(start_paused = true)]
async fn silent_primary_is_fenced_then_the_standby_promotes() {
    let mut peer = unreachable_peer();
    peer.expect_fence().times(1).returning(|req| {
        assert_eq!(req.header.epoch, Epoch(2));
        Ok(FenceReply {
            epoch: Epoch(2),
            last_lsn: Lsn::ZERO,
            last_epoch: Epoch::ZERO,
        })
    });
    let (replica, service) = start(cfg(InitialRole::Standby), standby_wal(), peer);
    heartbeat_from_primary(&service, SyncState::Sync).await;
    let h = replica
        .wait_for(Duration::from_secs(5), "promotion", |h| {
            h.role == RoleKind::Primary && h.writable
        })
        .await
        .unwrap();
    assert_eq!(h.epoch, Epoch(2));
    replica.shutdown().await;
}

/// A promote request that arrives during a planned switchover (here the
/// old primary's handover as it stops) waits for that switchover, and both
/// requests get its outcome: neither is refused nor superseded. The
/// primary refuses the fence, so the outcome is "nothing changed", once.
#[tokio::test(start_paused = true)]
async fn a_promote_during_a_planned_switchover_gets_that_switchovers_outcome() {
    let mut peer = unreachable_peer();
    peer.expect_fence()
        .times(1)
        .returning(|_| Err(TransportError::Unreachable("stopping".into())));
    let (replica, service) = start(cfg(InitialRole::Standby), standby_wal(), peer);
    heartbeat_from_primary(&service, SyncState::Sync).await;
    let operator = tokio::spawn({
        let replica = replica.clone();
        async move { replica.promote(false).await }
    });
    let handover = tokio::spawn({
        let service = service.clone();
        async move {
            service
                .inbox()
                .promote(crate::transport::PromoteRequest {
                    header: header(1, "n2"),
                    force: false,
                })
                .await
        }
    });
    let operator = operator.await.unwrap();
    let handover = handover.await.unwrap().expect("the node answers");
    let outcome = "the primary refused or did not answer the switchover";
    assert!(
        matches!(&operator, Err(Error::PromotionRefused { reason }) if reason.contains(outcome)),
        "{operator:?}"
    );
    assert!(
        matches!(&handover, Err(r) if r.message.contains(outcome)),
        "{handover:?}"
    );
    replica.shutdown().await;
}

/// A promote from a node of an older epoch asks for a switchover that is
/// over (an old primary's handover that arrives after it finished): it is
/// refused, and no switchover starts (the mocked peer takes no fence).
#[tokio::test(start_paused = true)]
async fn a_promote_from_an_older_epoch_is_refused_as_stale() {
    let (replica, service) = start(
        cfg(InitialRole::Standby),
        wal_at_epoch(2),
        unreachable_peer(),
    );
    heartbeat(&service, 2, "n2", SyncState::Sync)
        .await
        .expect("heartbeat accepted");
    let refused = service
        .inbox()
        .promote(crate::transport::PromoteRequest {
            header: header(1, "n2"),
            force: false,
        })
        .await
        .expect("the node answers");
    assert!(
        matches!(&refused, Err(r) if r.kind == RefusalKind::StaleEpoch),
        "{refused:?}"
    );
    assert_eq!(replica.health().role, RoleKind::Standby);
    replica.shutdown().await;
}

/// A standby that cannot save its new epoch (a full disk) must not act on
/// it (G1): no fence goes to the old primary, no primary tasks start, and
/// the node stops as failed instead of primary.
#[tokio::test(start_paused = true)]
async fn a_promotion_whose_epoch_cannot_be_saved_sends_no_fence_and_fails_the_node() {
    let fences = Arc::new(AtomicU32::new(0));
    let mut peer = unreachable_peer();
    let counted = fences.clone();
    peer.expect_fence().returning(move |req| {
        counted.fetch_add(1, Ordering::SeqCst);
        Ok(FenceReply {
            epoch: req.header.epoch,
            last_lsn: Lsn::ZERO,
            last_epoch: Epoch::ZERO,
        })
    });
    let wal = standby_wal();
    let (replica, service) = start(cfg(InitialRole::Standby), wal.clone(), peer);
    heartbeat_from_primary(&service, SyncState::Sync).await;
    wal.fail_meta_writes(true);
    let h = replica
        .wait_for(Duration::from_secs(5), "the node fails", |h| {
            h.role == RoleKind::Failed
        })
        .await
        .unwrap();
    assert!(!h.writable);
    assert_eq!(wal.meta().epoch, Epoch(1));
    assert_eq!(
        (h.epoch, h.leader.map(|l| l.id)),
        (Epoch(1), Some(NodeId::from("n2"))),
        "the failed node answers under an epoch it never saved"
    );
    // Paused time: this lets any fence the failed promotion had spawned
    // reach the peer (it would within one rpc_timeout).
    tokio::time::sleep(cfg(InitialRole::Standby).rpc_timeout * 2).await;
    assert_eq!(
        fences.load(Ordering::SeqCst),
        0,
        "a fence for an epoch that was never saved went out"
    );
    replica.shutdown().await;
}

/// A forced promotion whose epoch cannot be saved fails the node, and
/// the caller is told why at once rather than at its own timeout.
#[tokio::test(start_paused = true)]
async fn a_promotion_whose_epoch_cannot_be_saved_tells_its_caller_why() {
    let wal = standby_wal();
    let (replica, service) = start(cfg(InitialRole::Standby), wal.clone(), unreachable_peer());
    heartbeat_from_primary(&service, SyncState::Sync).await;
    wal.fail_meta_writes(true);
    let err = replica
        .promote(true)
        .await
        .expect_err("a promotion to an unsaved epoch succeeded");
    match err {
        Error::PromotionRefused { reason } => assert!(
            reason.contains("failed before the promotion finished") && reason.contains("persist"),
            "{reason}"
        ),
        other => panic!("the caller waited for its timeout instead: {other}"),
    }
    assert_eq!(replica.health().role, RoleKind::Failed);
    replica.shutdown().await;
}

/// The primary's stream to a standby whose promotion could not save its
/// epoch ends as with a node that cannot take it, under the epoch on
/// disk: a refusal naming the unsaved epoch would make the primary step
/// down into an epoch nobody leads.
#[tokio::test(start_paused = true)]
async fn a_promotion_whose_epoch_cannot_be_saved_ends_the_primarys_stream_without_naming_it() {
    let wal = standby_wal();
    let (replica, service) = start(cfg(InitialRole::Standby), wal.clone(), unreachable_peer());
    heartbeat_from_primary(&service, SyncState::Sync).await;
    let (_session, mut acks) = service.inbox().open_stream().await.unwrap();
    wal.fail_meta_writes(true);
    replica
        .promote(true)
        .await
        .expect_err("a promotion to an unsaved epoch succeeded");
    let refusal = acks
        .wait_for(Result::is_err)
        .await
        .expect("the stream's watch is open")
        .clone()
        .expect_err("waited for an error");
    assert_eq!(
        (refusal.kind, refusal.epoch),
        (RefusalKind::Unavailable, Epoch(1)),
        "{refusal:?}"
    );
    replica.shutdown().await;
}

/// n2's forced promotion to epoch 2 fences this node: its answer.
async fn forced_fence_from_n2(
    service: &crate::transport::ReplicationService,
) -> std::result::Result<crate::transport::FenceReply, crate::transport::Refusal> {
    service
        .inbox()
        .fence(crate::transport::FenceRequest {
            header: header(2, "n2"),
            reason: crate::node::FenceReason::Forced,
            candidate_end: None,
        })
        .await
        .expect("the node answers")
}

/// A fence from a newer primary that this node cannot save is not
/// accepted: the peer is told no, the node fails, its saved epoch stays.
#[tokio::test(start_paused = true)]
async fn a_fence_whose_epoch_cannot_be_saved_is_refused_and_fails_the_node() {
    for wal in [standby_wal(), confirmed_primary_wal()] {
        let role = if wal.meta().leader == Some(NodeId::from("n1")) {
            InitialRole::Primary
        } else {
            InitialRole::Standby
        };
        let mut peer = unreachable_peer();
        peer.expect_fence().times(0);
        let (replica, service) = start(cfg(role), wal.clone(), peer);
        wal.fail_meta_writes(true);
        let refusal = forced_fence_from_n2(&service)
            .await
            .expect_err("a fence to an unsaved epoch was accepted");
        assert_eq!(refusal.kind, RefusalKind::Unavailable, "{refusal:?}");
        assert!(refusal.message.contains("persist"), "{}", refusal.message);
        assert_eq!(
            refusal.epoch,
            Epoch(1),
            "the refusal names the unsaved epoch"
        );
        let h = replica
            .wait_for(Duration::from_secs(5), "the node fails", |h| {
                h.role == RoleKind::Failed
            })
            .await
            .unwrap();
        assert!(!h.writable);
        assert_eq!(wal.meta().epoch, Epoch(1));
        assert_eq!(
            h.epoch,
            Epoch(1),
            "the node answers under the unsaved epoch"
        );
        replica.shutdown().await;
    }
}

/// A node started as primary on a fresh directory whose peer never
/// answers takes no write, in any mode, and says what to do; forced, it
/// takes a new epoch and writes.
#[tokio::test(start_paused = true)]
async fn a_fresh_primary_nobody_confirmed_refuses_writes_until_forced() {
    // What its heartbeats say about it: unconfirmed, then confirmed.
    let said = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut peer = MockPeer::new();
    let heard = said.clone();
    peer.expect_heartbeat().returning(move |req| {
        heard
            .lock()
            .unwrap()
            .push((req.header.epoch, req.confirmed));
        Err(TransportError::Unreachable("down".into()))
    });
    peer.expect_open_wal_stream()
        .returning(|_| Err(TransportError::Unreachable("down".into())));
    peer.expect_fence()
        .returning(|_| Err(TransportError::Unreachable("down".into())));
    let cfg = Config {
        commit_mode: CommitMode::Async,
        ..cfg(InitialRole::Primary)
    };
    let wal = Arc::new(MemWal::new());
    let (replica, _service) = start(cfg, wal.clone(), peer);
    // Far beyond sync_timeout and failover_timeout: still not writable.
    let waited = replica
        .wait_for(Duration::from_secs(30), "writable", |h| h.writable)
        .await;
    assert!(matches!(waited, Err(Error::Timeout(_))), "{waited:?}");
    let h = replica.health();
    assert_eq!(h.role, RoleKind::Primary);
    assert!(!h.solo);
    assert!(
        h.note
            .as_deref()
            .is_some_and(|n| n.contains("promote --force")),
        "{:?}",
        h.note
    );
    let err = replica.apply(put()).await.unwrap_err();
    assert!(
        matches!(&err, Error::Unavailable { reason, appended: false } if reason.contains("n2") && reason.contains("promote --force")),
        "{err}"
    );
    assert_eq!(wal.last_lsn(), Lsn::ZERO, "nothing was appended");
    assert!(!wal.meta().confirmed);
    let before = std::mem::take(&mut *said.lock().unwrap());
    assert!(
        !before.is_empty() && before.iter().all(|s| *s == (Epoch(1), false)),
        "{before:?}"
    );
    // The operator means it: a forced promotion takes epoch 2.
    assert_eq!(replica.promote(true).await.unwrap(), Epoch(2));
    assert_eq!(replica.apply(put()).await.unwrap().epoch, Epoch(2));
    assert!(wal.meta().confirmed);
    // Paused time: two heartbeat intervals pass, as soon as all is idle.
    tokio::time::sleep(Config::default().heartbeat_interval * 2).await;
    let after = said.lock().unwrap().clone();
    assert!(after.contains(&(Epoch(2), true)), "{after:?}");
    replica.shutdown().await;
}

/// The peer's answer confirms a fresh primary, and the confirmation is on
/// disk before the first write; one that cannot be saved takes no write.
#[tokio::test(start_paused = true)]
async fn a_fresh_primary_saves_its_confirmation_before_its_first_write() {
    for saving_fails in [false, true] {
        let wal = Arc::new(MemWal::new());
        // Start-up persists epoch 1, unconfirmed, before `start` returns;
        // the peer's first answer comes once the test awaits.
        let (replica, _service) = start(cfg(InitialRole::Primary), wal.clone(), silent_standby());
        assert!(!wal.meta().confirmed);
        wal.fail_meta_writes(saving_fails);
        if saving_fails {
            let h = replica
                .wait_for(Duration::from_secs(5), "the node fails", |h| {
                    h.role == RoleKind::Failed
                })
                .await
                .unwrap();
            assert!(!h.writable);
            assert!(replica.apply(put()).await.is_err());
            assert!(!wal.meta().confirmed);
            assert_eq!(wal.last_lsn(), Lsn::ZERO);
        } else {
            writable(&replica).await;
            assert!(
                wal.meta().confirmed,
                "writable before the confirmation was saved"
            );
        }
        replica.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_standby_not_in_sync_never_promotes() {
    let mut peer = unreachable_peer();
    peer.expect_fence().times(0);
    let (replica, service) = start(cfg(InitialRole::Standby), standby_wal(), peer);
    heartbeat_from_primary(&service, SyncState::NotSync).await;
    assert_stays_standby(&replica).await;
    replica.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn auto_failover_off_means_the_standby_waits() {
    let mut peer = unreachable_peer();
    peer.expect_fence().times(0);
    let cfg = Config {
        auto_failover: false,
        ..cfg(InitialRole::Standby)
    };
    let (replica, service) = start(cfg, standby_wal(), peer);
    heartbeat_from_primary(&service, SyncState::Sync).await;
    assert_stays_standby(&replica).await;
    replica.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_restarted_standby_does_not_promote_before_hearing_from_the_primary() {
    let mut peer = unreachable_peer();
    peer.expect_fence().times(0);
    let wal = standby_wal();
    let (replica, service) = start(cfg(InitialRole::Standby), wal.clone(), peer);
    heartbeat_from_primary(&service, SyncState::Sync).await;
    replica.shutdown().await;
    // Restart from what the disk kept: eligibility is not on disk.
    let mut peer = unreachable_peer();
    peer.expect_fence().times(0);
    let (replica, _service) = start(cfg(InitialRole::Standby), Arc::new(wal.crash()), peer);
    assert_stays_standby(&replica).await;
    replica.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_higher_epoch_in_a_heartbeat_reply_fences_the_primary() {
    let mut peer = MockPeer::new();
    peer.expect_heartbeat().returning(|_| {
        Err(TransportError::StaleEpoch {
            epoch: Epoch(5),
            leader: None,
        })
    });
    peer.expect_open_wal_stream()
        .returning(|_| Err(TransportError::Unreachable("down".into())));
    peer.expect_history()
        .returning(|_| Err(TransportError::Unreachable("down".into())));
    let (replica, _service) = start(cfg(InitialRole::Primary), Arc::new(MemWal::new()), peer);
    let h = replica
        .wait_for(Duration::from_secs(5), "fenced", |h| h.epoch == Epoch(5))
        .await
        .unwrap();
    assert!(matches!(h.role, RoleKind::Fenced | RoleKind::Rejoining));
    let err = replica.apply(put()).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Fenced {
                epoch: Epoch(5),
                appended: false
            }
        ),
        "{err}"
    );
    replica.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_heartbeat_from_a_stale_epoch_is_refused_with_our_epoch() {
    let (replica, service) = start(
        cfg(InitialRole::Standby),
        wal_at_epoch(3),
        unreachable_peer(),
    );
    let refusal = heartbeat(&service, 2, "n2", SyncState::Sync)
        .await
        .unwrap_err();
    assert_eq!(refusal.kind, RefusalKind::StaleEpoch);
    assert_eq!(refusal.epoch, Epoch(3));
    assert_eq!(replica.epoch(), Epoch(3));
    replica.shutdown().await;
}

/// A standby that answers heartbeats and opens the stream but never acks.
fn silent_standby() -> MockPeer {
    let mut peer = MockPeer::new();
    peer.expect_heartbeat().returning(|_| {
        Ok(HeartbeatReply {
            ack: WalAck::default(),
            role: RoleKind::Standby,
        })
    });
    peer.expect_open_wal_stream().returning(|_| {
        let first = futures::stream::once(async { Ok(WalAck::default()) });
        Ok(Box::pin(futures::StreamExt::chain(
            first,
            futures::stream::pending(),
        )))
    });
    peer
}

#[tokio::test(start_paused = true)]
async fn a_write_the_standby_does_not_confirm_fails_with_sync_timeout() {
    let (replica, _service) = start(
        cfg(InitialRole::Primary),
        Arc::new(MemWal::new()),
        silent_standby(),
    );
    writable(&replica).await;
    let err = replica.apply(put()).await.unwrap_err();
    assert!(matches!(err, Error::SyncTimeout { lsn: Lsn(1) }), "{err}");
    // Not applied here either: nothing half-applied.
    assert_eq!(replica.health().applied_lsn, Lsn::ZERO);
    assert!(
        !replica.health().solo,
        "a reachable standby never triggers solo"
    );
    replica.shutdown().await;
}

/// `put()` written with request id `id`, in a task of its own.
fn spawn_apply_once(
    replica: &Replica,
    id: crate::types::RequestId,
) -> tokio::task::JoinHandle<Result<crate::Applied, Error>> {
    let replica = replica.clone();
    tokio::spawn(async move { replica.apply_once(id, put()).await })
}

/// A retry of a write still waiting for its record has a `sync_timeout`
/// of its own, counted from the retry: the first attempt's timeout ends
/// the first attempt only, and the retry fails a whole `sync_timeout`
/// after it arrived (paused time: the check is exact).
#[tokio::test(start_paused = true)]
async fn a_retry_times_out_a_whole_sync_timeout_after_it_arrived() {
    let cfg = cfg(InitialRole::Primary);
    let sync_timeout = cfg.sync_timeout;
    let (replica, _service) = start(cfg, Arc::new(MemWal::new()), silent_standby());
    writable(&replica).await;
    let id = crate::types::RequestId::from(7u128);
    let first = spawn_apply_once(&replica, id);
    tokio::time::sleep(sync_timeout / 2).await;
    let retried_at = tokio::time::Instant::now();
    let retry = spawn_apply_once(&replica, id);
    let first = first.await.unwrap();
    assert!(
        matches!(first, Err(Error::SyncTimeout { lsn: Lsn(1) })),
        "{first:?}"
    );
    let retry = retry.await.unwrap();
    assert!(
        matches!(retry, Err(Error::SyncTimeout { lsn: Lsn(1) })),
        "{retry:?}"
    );
    assert!(
        retried_at.elapsed() >= sync_timeout,
        "the retry failed {:?} after it arrived, before its own sync_timeout ({sync_timeout:?})",
        retried_at.elapsed()
    );
    replica.shutdown().await;
}

/// A retry that arrives while its record waits, shortly before the
/// primary blocks on its lost standby (`on_standby_loss = block`), is
/// answered when it blocks: the block drops the retry's own timeout, and
/// nothing commits until the standby answers.
#[tokio::test(start_paused = true)]
async fn a_retry_waiting_when_the_primary_blocks_on_its_lost_standby_is_answered() {
    let cfg = Config {
        on_standby_loss: crate::config::OnStandbyLoss::Block,
        ..cfg(InitialRole::Primary)
    };
    let sync_timeout = cfg.sync_timeout;
    let (replica, _service) = start(cfg, confirmed_primary_wal(), unreachable_peer());
    writable(&replica).await;
    let id = crate::types::RequestId::from(9u128);
    let first = spawn_apply_once(&replica, id);
    tokio::time::sleep(sync_timeout / 2).await;
    let retry = spawn_apply_once(&replica, id);
    let first = first.await.unwrap();
    assert!(
        matches!(first, Err(Error::SyncTimeout { lsn: Lsn(1) })),
        "{first:?}"
    );
    let retry = tokio::time::timeout(sync_timeout * 10, retry)
        .await
        .expect("the retry was never answered")
        .unwrap();
    assert!(
        matches!(retry, Err(Error::SyncTimeout { lsn: Lsn(1) })),
        "{retry:?}"
    );
    replica.shutdown().await;
}

/// A standby that answers heartbeats as a standby and, on the WAL stream,
/// sends its start ack, then `ack(last record)` once the first batch with
/// records arrives, then nothing more (it keeps receiving, so the
/// primary's sends never fail).
fn standby_acking_first_batch(
    ack: impl Fn(&crate::types::Record) -> WalAck + Send + Sync + Copy + 'static,
) -> MockPeer {
    let mut peer = MockPeer::new();
    peer.expect_heartbeat().returning(|_| {
        Ok(HeartbeatReply {
            ack: WalAck::default(),
            role: RoleKind::Standby,
        })
    });
    peer.expect_open_wal_stream()
        .times(1)
        .returning(move |batches| {
            let acks =
                futures::stream::unfold((0u8, batches), move |(step, mut batches)| async move {
                    match step {
                        0 => Some((Ok(WalAck::default()), (1, batches))),
                        1 => loop {
                            let b = batches.recv().await?;
                            if let Some(last) = b.records.last() {
                                break Some((Ok(ack(last)), (2, batches)));
                            }
                        },
                        _ => {
                            while batches.recv().await.is_some() {}
                            None
                        }
                    }
                });
            Ok(Box::pin(acks))
        });
    peer
}

/// A write that is committed but not yet applied when a later write times
/// out is answered with its result, not with that later write's
/// `SyncTimeout`: its caller would take "maybe written" for a reason to
/// retry, and a plain retry would apply it twice. The standby confirms the
/// first write's batch and nothing after; the engine holds every apply
/// until the second write has failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_write_waiting_for_its_apply_is_not_failed_by_a_later_timeout() {
    // The first batch's records are flushed on the standby, nothing after.
    let peer = standby_acking_first_batch(|last| WalAck {
        epoch: last.epoch,
        written: last.lsn,
        flushed: last.lsn,
        applied: Lsn::ZERO,
        flushed_epoch: last.epoch,
        first: Lsn(1),
    });
    let engine = Arc::new(MemStateMachine::new());
    engine.hold_applies();
    let wal = confirmed_primary_wal();
    wal.set_may_block(true);
    let cfg = Config {
        sync_timeout: Duration::from_millis(200),
        // Shorter still, as solo without an arbiter needs (see validate).
        failover_timeout: Duration::from_millis(150),
        heartbeat_interval: Duration::from_millis(50),
        ..cfg(InitialRole::Primary)
    };
    let (replica, _service) = Replica::builder(cfg, wal, engine.clone())
        .peer(Arc::new(peer))
        .start_without_server()
        .unwrap();
    replica
        .wait_for(Duration::from_secs(10), "stream up", |h| h.peer.connected)
        .await
        .unwrap();
    let first = tokio::spawn({
        let replica = replica.clone();
        async move { replica.apply(put()).await }
    });
    replica
        .wait_for(Duration::from_secs(10), "first write committed", |h| {
            h.commit_lsn == Lsn(1)
        })
        .await
        .unwrap();
    let second = replica.apply(put()).await.unwrap_err();
    assert!(
        matches!(second, Error::SyncTimeout { lsn: Lsn(2) }),
        "{second}"
    );
    engine.release_applies();
    let first = first.await.unwrap();
    assert!(
        matches!(&first, Ok(a) if a.lsn == Lsn(1)),
        "the committed write was answered {first:?}"
    );
    replica.shutdown().await;
}

/// A standby whose WAL failed (its disk filled): it answers heartbeats, as
/// a failed node, and never acks. The primary counts it as lost and its
/// solo policy applies, instead of every write ending in `SyncTimeout`;
/// the episode is counted, with its epoch.
#[tokio::test(start_paused = true)]
async fn a_standby_that_answers_but_cannot_write_counts_as_lost() {
    let mut peer = MockPeer::new();
    // Healthy at first; then its disk fills.
    let calls = Arc::new(AtomicU32::new(0));
    peer.expect_heartbeat().returning(move |_| {
        let healthy = calls.fetch_add(1, Ordering::SeqCst) == 0;
        Ok(HeartbeatReply {
            ack: WalAck::default(),
            role: if healthy {
                RoleKind::Standby
            } else {
                RoleKind::Failed
            },
        })
    });
    peer.expect_open_wal_stream().returning(|_| {
        let first = futures::stream::once(async { Ok(WalAck::default()) });
        Ok(Box::pin(futures::StreamExt::chain(
            first,
            futures::stream::pending(),
        )))
    });
    let (replica, _service) = start(cfg(InitialRole::Primary), Arc::new(MemWal::new()), peer);
    assert_eq!(replica.metrics().solo_episodes, 0);
    let solo = replica
        .wait_for(Duration::from_secs(10), "solo", |h| h.solo)
        .await
        .unwrap();
    let m = replica.metrics();
    assert_eq!((m.solo_episodes, m.last_solo_epoch), (1, Some(solo.epoch)));
    let applied = replica.apply(put()).await.unwrap();
    assert_eq!(applied.lsn, Lsn(1));
    replica.shutdown().await;
}

/// Answers the first heartbeat, then the standby disappears.
fn standby_lost_after_contact() -> MockPeer {
    let mut peer = MockPeer::new();
    let calls = Arc::new(AtomicU32::new(0));
    peer.expect_heartbeat().returning(move |_| {
        if calls.fetch_add(1, Ordering::SeqCst) == 0 {
            Ok(HeartbeatReply {
                ack: WalAck::default(),
                role: RoleKind::Standby,
            })
        } else {
            Err(TransportError::Timeout)
        }
    });
    peer.expect_open_wal_stream()
        .returning(|_| Err(TransportError::Unreachable("down".into())));
    peer
}

#[tokio::test(start_paused = true)]
async fn solo_goes_on_alone_after_the_standby_is_lost() {
    let (replica, _service) = start(
        cfg(InitialRole::Primary),
        Arc::new(MemWal::new()),
        standby_lost_after_contact(),
    );
    replica
        .wait_for(Duration::from_secs(10), "solo", |h| h.solo)
        .await
        .unwrap();
    let applied = replica.apply(put()).await.unwrap();
    assert_eq!(applied.lsn, Lsn(1));
    replica.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn block_refuses_writes_after_the_standby_is_lost() {
    let cfg = Config {
        on_standby_loss: OnStandbyLoss::Block,
        ..cfg(InitialRole::Primary)
    };
    let (replica, _service) = start(cfg, Arc::new(MemWal::new()), standby_lost_after_contact());
    writable(&replica).await;
    let first = replica.apply(put()).await.unwrap_err();
    assert!(matches!(first, Error::SyncTimeout { .. }), "{first}");
    replica
        .wait_for(Duration::from_secs(10), "blocked", |h| !h.writable)
        .await
        .unwrap();
    let next = replica.apply(put()).await.unwrap_err();
    assert!(
        matches!(
            next,
            Error::Unavailable {
                appended: false,
                ..
            }
        ),
        "refused on arrival, so not written: {next:?}"
    );
    assert!(!replica.health().solo);
    replica.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn async_mode_acknowledges_without_any_standby() {
    let (replica, _service) = async_primary(unreachable_peer()).await;
    for i in 1..=3 {
        assert_eq!(replica.apply(put()).await.unwrap().lsn, Lsn(i));
    }
    replica.shutdown().await;
}

/// An `async` primary alone (its peer unreachable) applying to `sm`.
fn lone_async_primary_applying_to(sm: Arc<MemStateMachine>) -> (Replica, ReplicationService) {
    let cfg = Config {
        commit_mode: CommitMode::Async,
        ..cfg(InitialRole::Primary)
    };
    Replica::builder(cfg, confirmed_primary_wal(), sm)
        .peer(Arc::new(unreachable_peer()))
        .start_without_server()
        .unwrap()
}

/// The engine's output for a record reaches its writer; an apply error
/// fails the node: what was applied stays, the failing batch is not, and
/// every write from then on is refused.
#[tokio::test(start_paused = true)]
async fn the_engines_output_reaches_the_writer_and_an_apply_error_fails_the_node() {
    let sm = Arc::new(MemStateMachine::new());
    let (replica, _service) = lone_async_primary_applying_to(sm.clone());
    let applied = replica.apply(put()).await.unwrap();
    assert_eq!(applied.lsn, Lsn(1));
    assert_eq!(&applied.output[..], &sm.state_hash().to_le_bytes()[..]);
    let both = replica.apply_batch(vec![put(), put()]).await.unwrap();
    assert_eq!(&both[1].output[..], &sm.state_hash().to_le_bytes()[..]);
    assert_ne!(both[0].output, both[1].output);

    sm.fail_applies_from(Lsn(4));
    let err = replica.apply(put()).await.unwrap_err();
    // The engine failed, not the disk: the answer names it, and the write
    // may be retried where a primary serves (this one never will again
    // before a restart).
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("state machine failed"), "{err}");
    assert!(!err.to_string().contains("WAL"), "{err}");
    assert!(err.is_retryable());
    replica
        .wait_for(Duration::from_secs(5), "failed", |h| {
            h.role == RoleKind::Failed
        })
        .await
        .unwrap();
    let later = replica.apply(put()).await.unwrap_err();
    assert!(
        later.to_string().contains("state machine failed"),
        "{later}"
    );
    assert!(!later.to_string().contains("disk"), "{later}");
    assert_eq!(
        crate::StateMachine::applied_lsn(&*sm),
        Lsn(3),
        "the records before stay applied"
    );
    replica.shutdown().await;
}

/// A write of more records than the applier applies in one chunk (256)
/// gets every record's output, not only those of its last chunk: the
/// outputs of its first chunk wait for it.
#[tokio::test(start_paused = true)]
async fn a_write_applied_over_several_chunks_gets_every_records_output() {
    let sm = Arc::new(MemStateMachine::new());
    let (replica, _service) = lone_async_primary_applying_to(sm.clone());
    let applied = replica.apply_batch(vec![put(); 600]).await.unwrap();
    assert_eq!(applied.len(), 600);
    let empty: Vec<u64> = applied
        .iter()
        .filter(|a| a.output.is_empty())
        .map(|a| a.lsn.0)
        .collect();
    assert!(empty.is_empty(), "records without their output: {empty:?}");
    assert_eq!(&applied[599].output[..], &sm.state_hash().to_le_bytes()[..]);
    replica.shutdown().await;
}

/// An `async` primary alone (its peer unreachable) on a `MemWal` the test
/// can make fail.
fn lone_async_primary() -> (Replica, ReplicationService, Arc<MemWal>) {
    let wal = confirmed_primary_wal();
    let cfg = Config {
        commit_mode: CommitMode::Async,
        ..cfg(InitialRole::Primary)
    };
    let (replica, service) = start(cfg, wal.clone(), unreachable_peer());
    (replica, service, wal)
}

/// A write the primary's WAL refused (a full disk) is answered "not
/// written, retry": the log holds none of it, so a load balancer or a
/// client may send it to the next primary, keyed or not.
#[tokio::test(start_paused = true)]
async fn a_write_the_primarys_wal_refused_is_not_written_and_may_be_retried() {
    let (replica, _service, wal) = lone_async_primary();
    replica.apply(put()).await.unwrap();
    wal.fail_appends(true);
    let err = replica.apply(put()).await.unwrap_err();
    assert_eq!(
        err.outcome(),
        crate::error::WriteOutcome::NotWritten,
        "{err:?}"
    );
    assert!(err.is_retryable(), "{err:?}");
    assert_eq!(wal.last_lsn(), Lsn(1));
    replica.shutdown().await;
    // A writer whose command retries a record the log holds is not told
    // "nothing written": that record may be, whatever the new one's fate.
    let (replica, _service, wal) = lone_async_primary();
    let id = crate::types::RequestId::from(7u128);
    replica.apply_once(id, put()).await.unwrap();
    wal.fail_appends(true);
    let err = replica
        .apply_batch_once(vec![
            (id, put()),
            (crate::types::RequestId::from(8u128), put()),
        ])
        .await
        .unwrap_err();
    assert_eq!(
        err.outcome(),
        crate::error::WriteOutcome::MaybeWritten,
        "{err:?}"
    );
    replica.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_fsync_stops_acknowledgements_and_steps_down() {
    let (replica, _service, wal) = lone_async_primary();
    replica.apply(put()).await.unwrap();
    wal.fail_syncs(true);
    let err = replica.apply(put()).await.unwrap_err();
    assert!(
        matches!(err, Error::Unavailable { appended: true, .. }),
        "appended before its fsync failed, so maybe written: {err:?}"
    );
    let h = replica
        .wait_for(Duration::from_secs(5), "failed", |h| {
            h.role == RoleKind::Failed
        })
        .await
        .unwrap();
    assert!(!h.writable);
    // The fsync is not retried as if nothing happened: later writes fail too.
    wal.fail_syncs(false);
    assert!(replica.apply(put()).await.is_err());
    replica.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_standby_answering_heartbeats_again_is_streamed_to_without_waiting_out_the_backoff() {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicBool;
    use tokio::time::Instant;
    // The standby is down long enough for the stream's backoff to grow
    // well past a heartbeat interval, then comes back.
    let up = Arc::new(AtomicBool::new(false));
    let back_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let attempts: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let mut peer = MockPeer::new();
    let is_up = up.clone();
    peer.expect_heartbeat().returning(move |_| {
        if is_up.load(Ordering::SeqCst) {
            Ok(HeartbeatReply {
                ack: WalAck::default(),
                role: RoleKind::Standby,
            })
        } else {
            Err(TransportError::Unreachable("down".into()))
        }
    });
    let (is_up, back, tries) = (up.clone(), back_at.clone(), attempts.clone());
    peer.expect_open_wal_stream().returning(move |_| {
        let mut tries = tries.lock().unwrap();
        tries.push(Instant::now());
        if tries.len() == 7 {
            // The backoff is now 20 ms * 2^7 = 2.56 s.
            is_up.store(true, Ordering::SeqCst);
            *back.lock().unwrap() = Some(Instant::now());
        }
        Err(TransportError::Unreachable("not yet".into()))
    });
    let cfg = Config {
        reconnect_backoff_max: Duration::from_secs(10),
        ..cfg(InitialRole::Primary)
    };
    let (replica, _service) = start(cfg.clone(), Arc::new(MemWal::new()), peer);
    let deadline = Instant::now() + Duration::from_secs(30);
    while attempts.lock().unwrap().len() < 8 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let back = back_at.lock().unwrap().expect("the standby came back");
    let next = *attempts
        .lock()
        .unwrap()
        .get(7)
        .expect("the stream was tried again");
    assert!(
        next - back <= cfg.heartbeat_interval + Duration::from_millis(50),
        "the stream was retried {:?} after heartbeats were answered again",
        next - back
    );
    replica.shutdown().await;
}

/// The standby promoted while we were paused and kept acknowledging on our
/// old stream with its own positions at its new epoch. Those are not
/// positions in our log: the write must not be acknowledged, and the newer
/// epoch must fence us (found by `chaos a_paused_primary_refuses_writes_once_it_learns_the_new_epoch`).
#[tokio::test(start_paused = true)]
async fn an_ack_from_a_higher_epoch_is_not_standby_progress_and_fences_the_primary() {
    // Once our write's batch arrives, the positions of the promoted peer's
    // own log at epoch 2.
    let mut peer = standby_acking_first_batch(|_| WalAck {
        epoch: Epoch(2),
        written: Lsn(100),
        flushed: Lsn(100),
        applied: Lsn(100),
        flushed_epoch: Epoch(2),
        first: Lsn(1),
    });
    peer.expect_history()
        .returning(|_| Err(TransportError::Unreachable("down".into())));
    let (replica, _service) = start(cfg(InitialRole::Primary), Arc::new(MemWal::new()), peer);
    replica
        .wait_for(Duration::from_secs(5), "stream up", |h| h.peer.connected)
        .await
        .unwrap();
    let result = replica.apply(put()).await;
    assert!(
        matches!(
            result,
            Err(Error::Fenced { appended: true, .. } | Error::NotPrimary { appended: true, .. })
        ),
        "the write was appended, then the node was deposed: its fate is unknown, not 'not written' ({result:?})"
    );
    let h = replica
        .wait_for(Duration::from_secs(5), "fenced", |h| h.epoch == Epoch(2))
        .await
        .unwrap();
    assert!(
        matches!(h.role, RoleKind::Fenced | RoleKind::Rejoining),
        "{h:?}"
    );
    assert_eq!(h.commit_lsn, Lsn::ZERO);
    replica.shutdown().await;
}

/// Removing old WAL can wait on the disk for long; the node's task must
/// go on meanwhile (a write completes while a removal is stuck).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_completes_while_a_wal_removal_is_stuck_on_the_disk() {
    let (wal, mut removals) = GatedWal::new(Held::Removals);
    let wal = Arc::new(wal);
    let _open_at_the_end = wal.open_on_drop();
    let cfg = Config {
        commit_mode: CommitMode::Async,
        // Over the bound at once: the node trims at its next tick.
        wal_retention_bytes: 1,
        ..cfg(InitialRole::Primary)
    };
    let (replica, _service) = start(cfg, wal.clone(), silent_standby());
    writable(&replica).await;
    replica.apply(put()).await.unwrap();
    replica.apply(put()).await.unwrap();
    removals
        .recv()
        .await
        .expect("the node never trimmed its WAL");
    let during = tokio::time::timeout(Duration::from_secs(10), replica.apply(put())).await;
    wal.open();
    let during = during.expect("a write waited for the stuck WAL removal");
    assert_eq!(during.unwrap().lsn, Lsn(3));
    replica.shutdown().await;
}

/// An `async` primary's settings and confirmed WAL whose fsyncs are held
/// until the test opens the gate (opened at the latest when the returned
/// guard drops), and where each held fsync reports its start.
fn async_primary_with_held_syncs() -> (
    Arc<GatedWal>,
    tokio::sync::mpsc::UnboundedReceiver<Lsn>,
    crate::wal::gated::OpenOnDrop,
    Config,
) {
    let (wal, syncs) = GatedWal::new(Held::Syncs);
    let wal = Arc::new(wal);
    let open_at_the_end = wal.open_on_drop();
    confirm_as_primary(&*wal);
    let cfg = Config {
        commit_mode: CommitMode::Async,
        ..cfg(InitialRole::Primary)
    };
    (wal, syncs, open_at_the_end, cfg)
}

/// A node told to stop with its mailbox full (more writers queued than it
/// holds) and an fsync in flight still stops: the flusher, which the stop
/// waits for, is not left blocked sending the fsync's result to a mailbox
/// nobody reads any more, and every queued writer is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_told_to_stop_with_its_mailbox_full_stops() {
    let (wal, mut syncs, _open_at_the_end, cfg) = async_primary_with_held_syncs();
    let (replica, _service) = start(cfg, wal.clone(), unreachable_peer());
    writable(&replica).await;
    let first = tokio::spawn({
        let r = replica.clone();
        async move { r.apply(put()).await }
    });
    syncs.recv().await.expect("the write's fsync never started");
    let stopping = tokio::spawn({
        let r = replica.clone();
        async move { r.shutdown().await }
    });
    // The stop has begun once the waiting write is answered.
    let answered = first.await.unwrap();
    assert!(matches!(answered, Err(Error::ShuttingDown)), "{answered:?}");
    // More writers than the mailbox holds: it fills, since nobody reads it,
    // unless the stop refuses them at once.
    let room = replica.mailbox_room();
    let writers: Vec<_> = (0..room + 16)
        .map(|_| {
            let r = replica.clone();
            tokio::spawn(async move { r.apply(put()).await })
        })
        .collect();
    while replica.mailbox_room() > 0 && !writers.iter().all(|w| w.is_finished()) {
        tokio::task::yield_now().await;
    }
    wal.open();
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("the node never stopped: a task it waits for is stuck on its full mailbox")
        .unwrap();
    for w in writers {
        let answer = tokio::time::timeout(Duration::from_secs(10), w)
            .await
            .expect("a queued writer was never answered")
            .unwrap();
        assert!(matches!(answer, Err(Error::ShuttingDown)), "{answer:?}");
    }
}

/// As `start`, with the replication server on a free port of 127.0.0.1
/// and a peer that never answers.
fn serving(cfg: Config, wal: Arc<dyn WalStore>) -> Replica {
    Replica::builder(cfg, wal, Arc::new(MemStateMachine::new()))
        .peer(Arc::new(unreachable_peer()))
        .listen("127.0.0.1:0")
        .start()
        .unwrap()
}

/// A shutdown whose caller gave up (its future dropped mid-stop) still
/// runs to its end: the replication server stops with nobody calling
/// `shutdown` again, and a later call returns once everything stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_whose_caller_gave_up_still_stops_the_server() {
    let (wal, mut syncs, _open_at_the_end, cfg) = async_primary_with_held_syncs();
    let replica = serving(cfg, wal.clone());
    writable(&replica).await;
    let addr = replica.local_addr().expect("a server");
    tokio::net::TcpStream::connect(addr)
        .await
        .expect("the server accepts before the stop");
    let given_up = tokio::spawn({
        let r = replica.clone();
        async move { r.shutdown().await }
    });
    // The stop is under way: its last fsync is held.
    syncs.recv().await.expect("the stop's fsync never started");
    given_up.abort();
    assert!(given_up.await.unwrap_err().is_cancelled());
    wal.open();
    let refused = async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), refused)
        .await
        .expect("the server still accepts: the stop ended with its caller");
    tokio::time::timeout(Duration::from_secs(10), replica.shutdown())
        .await
        .expect("a later shutdown did not return");
}

/// A shutdown polled on a thread with no runtime (an engine's own
/// executor) runs the stop on the node's runtime: it returns once the
/// server stopped, instead of panicking on the server's drain timer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_polled_outside_any_runtime_stops_the_node() {
    let wal = Arc::new(crate::wal::MemWal::new());
    confirm_as_primary(&*wal);
    let replica = serving(cfg(InitialRole::Primary), wal);
    let addr = replica.local_addr().expect("a server");
    let stopping = std::thread::spawn(move || futures::executor::block_on(replica.shutdown()));
    let stopped = tokio::task::spawn_blocking(move || stopping.join());
    tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .expect("the shutdown did not return")
        .unwrap()
        .expect("the shutdown panicked");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the server still accepts after the shutdown returned"
    );
}

/// A standby that takes the WAL stream and never acknowledges a batch: the
/// batches the primary sent stay in `sent` for the test to count.
fn standby_that_never_acks(
    sent: Arc<std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<crate::transport::WalBatch>>>>,
) -> MockPeer {
    let mut peer = MockPeer::new();
    peer.expect_heartbeat().returning(|_| {
        Ok(HeartbeatReply {
            ack: WalAck::default(),
            role: RoleKind::Standby,
        })
    });
    peer.expect_open_wal_stream().returning(move |batches| {
        *sent.lock().unwrap() = Some(batches);
        let first = futures::stream::once(async { Ok(WalAck::default()) });
        Ok(Box::pin(futures::StreamExt::chain(
            first,
            futures::stream::pending(),
        )))
    });
    peer
}

/// Batches of one record above `max_batch_bytes` each: the streamer stops
/// sending once the unacknowledged payload reaches `max_batches_in_flight
/// × max_batch_bytes`, well before the count allows.
#[tokio::test(start_paused = true)]
async fn the_streamer_bounds_unacknowledged_batches_by_bytes() {
    let sent = Arc::new(std::sync::Mutex::new(None));
    let cfg = Config {
        commit_mode: CommitMode::Async,
        max_batch_bytes: 1024,
        max_batches_in_flight: 8,
        ..cfg(InitialRole::Primary)
    };
    let (replica, _service) = Replica::builder(
        cfg,
        Arc::new(MemWal::new()),
        Arc::new(MemStateMachine::new()),
    )
    .peer(Arc::new(standby_that_never_acks(sent.clone())))
    .start_without_server()
    .unwrap();
    writable(&replica).await;
    // 4 KiB records: two reach the 8 KiB bound, the count would allow 8.
    for _ in 0..6 {
        replica.apply(Bytes::from(vec![b'x'; 4096])).await.unwrap();
    }
    // With time paused this returns only once every task is idle: the
    // streamer has sent all it may.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut batches = sent.lock().unwrap().take().expect("the stream opened");
    let mut records = 0;
    while let Ok(b) = batches.try_recv() {
        records += b.records.len();
    }
    assert_eq!(records, 2, "records sent with none acknowledged");
    replica.shutdown().await;
}

/// A standby whose engine lost the state its trimmed WAL no longer covers
/// (the WAL starts at 11, the engine applied nothing) must wait for its
/// resync from the primary's snapshot: the applier may not first try to
/// replay from record 1 and fail the node (found by the simulation's
/// snapshot-cut scenario).
#[tokio::test(start_paused = true)]
async fn a_standby_behind_its_trimmed_wal_rejoins_instead_of_failing_on_a_missing_record() {
    let wal = standby_wal_holding(20);
    wal.remove_before(Lsn(11)).unwrap();
    let (replica, _service) = start(cfg(InitialRole::Standby), wal, unreachable_peer());
    let waited = replica
        .wait_for(Duration::from_secs(10), "a failed node", |h| {
            h.role == RoleKind::Failed
        })
        .await;
    assert!(matches!(waited, Err(Error::Timeout(_))), "{waited:?}");
    assert_eq!(replica.health().role, RoleKind::Rejoining);
    replica.shutdown().await;
}

/// A primary in `async` mode: its writes commit on its own fsync.
fn async_primary_cfg() -> Config {
    Config {
        commit_mode: CommitMode::Async,
        ..cfg(InitialRole::Primary)
    }
}

/// A confirmed primary in `async` mode (its writes commit on its own
/// fsync) with `peer`, taking writes.
async fn async_primary(peer: MockPeer) -> (Replica, ReplicationService) {
    let (replica, service) = start(async_primary_cfg(), confirmed_primary_wal(), peer);
    writable(&replica).await;
    (replica, service)
}

/// Where the engine's applies run: on a blocking thread, except a small
/// batch the engine says it can apply at once, which runs on the runtime's
/// own thread (two thread hand-offs fewer per commit). A test runtime of
/// one thread is where the node's tasks run, so an apply on that thread
/// ran inline.
#[tokio::test]
async fn only_small_batches_an_engine_can_apply_inline_are_applied_on_the_runtime_thread() {
    let runtime_thread = std::thread::current().id();
    for can_inline in [false, true] {
        let engine = Arc::new(MemStateMachine::new());
        engine.set_can_apply_inline(can_inline);
        engine.track_apply_threads();
        let wal = confirmed_primary_wal();
        wal.set_may_block(true);
        let (replica, _service) = Replica::builder(async_primary_cfg(), wal, engine.clone())
            .peer(Arc::new(unreachable_peer()))
            .start_without_server()
            .unwrap();
        writable(&replica).await;
        replica.apply(put()).await.unwrap();
        let big = Bytes::from(vec![7u8; crate::INLINE_APPLY_MAX_BYTES + 1]);
        replica.apply(big).await.unwrap();
        let threads = engine.apply_threads();
        assert_eq!(threads.len(), 2, "one apply per write: {threads:?}");
        assert_eq!(
            threads[0] == runtime_thread,
            can_inline,
            "a small batch ran inline: {}, for an engine that can apply it inline: {can_inline}",
            threads[0] == runtime_thread
        );
        assert_ne!(
            threads[1], runtime_thread,
            "a batch over INLINE_APPLY_MAX_BYTES runs on a blocking thread (can_inline: {can_inline})"
        );
        replica.shutdown().await;
    }
}

/// A retry that reaches the old primary after a newer one fenced it: its
/// record is in the old primary's log (and may be committed at the new
/// one), so the refusal says "maybe written", while a write it never saw
/// is "nothing written".
#[tokio::test(start_paused = true)]
async fn a_retry_refused_after_a_fence_reports_that_it_may_be_written() {
    let (replica, service) = async_primary(unreachable_peer()).await;
    let (seen, unseen) = (
        crate::types::RequestId::from(7u128),
        crate::types::RequestId::from(8u128),
    );
    replica.apply_once(seen, put()).await.unwrap();
    assert!(forced_fence_from_n2(&service).await.is_ok());
    let retry = replica.apply_once(seen, put()).await.unwrap_err();
    assert_eq!(
        retry.outcome(),
        crate::WriteOutcome::MaybeWritten,
        "{retry:?}"
    );
    let fresh = replica.apply_once(unseen, put()).await.unwrap_err();
    assert_eq!(
        fresh.outcome(),
        crate::WriteOutcome::NotWritten,
        "{fresh:?}"
    );
    replica.shutdown().await;
}

/// A primary fenced by a newer one that then vanished rejoins and waits;
/// the operator forces it to promote: the rejoin ends and the applier,
/// which the rejoin had stopped, runs again, so its writes are applied
/// and answered (they waited forever).
#[tokio::test(start_paused = true)]
async fn a_rejoining_node_forced_to_promote_applies_its_writes() {
    let mut peer = unreachable_peer();
    peer.expect_fence()
        .returning(|_| Err(TransportError::Unreachable("down".into())));
    let (replica, service) = async_primary(peer).await;
    replica.apply(put()).await.unwrap();
    let reply = forced_fence_from_n2(&service).await;
    assert!(reply.is_ok(), "{reply:?}");
    replica
        .wait_for(Duration::from_secs(5), "rejoining", |h| {
            h.role == RoleKind::Rejoining
        })
        .await
        .unwrap();
    assert_eq!(replica.promote(true).await.unwrap(), Epoch(3));
    writable(&replica).await;
    let applied = tokio::time::timeout(Duration::from_secs(10), replica.apply(put()))
        .await
        .expect("the write was never applied")
        .unwrap();
    assert_eq!(applied.epoch, Epoch(3));
    replica.shutdown().await;
}

/// A standby that refuses the WAL stream while it rejoins (a resync can
/// take many backoff periods) and then answers heartbeats as a standby:
/// the primary reopens the stream within a heartbeat interval of that
/// answer, not at the end of its backoff (1 s by then).
#[tokio::test(start_paused = true)]
async fn the_stream_reconnects_when_the_standby_answers_as_a_standby_again() {
    use std::sync::Mutex;
    use tokio::time::Instant;
    let cfg = cfg(InitialRole::Primary);
    let (interval, backoff_max) = (cfg.heartbeat_interval, cfg.reconnect_backoff_max);
    // When the standby finished its rejoin, and when the stream opened.
    let rejoined: Arc<Mutex<Option<Instant>>> = Arc::default();
    let opened: Arc<Mutex<Option<Instant>>> = Arc::default();
    let mut peer = MockPeer::new();
    let done = rejoined.clone();
    peer.expect_heartbeat().returning(move |_| {
        Ok(HeartbeatReply {
            ack: WalAck::default(),
            role: if done.lock().unwrap().is_some() {
                RoleKind::Standby
            } else {
                RoleKind::Rejoining
            },
        })
    });
    let (done, open, refusals) = (rejoined.clone(), opened.clone(), AtomicU32::new(0));
    peer.expect_open_wal_stream().returning(move |batches| {
        let mut done = done.lock().unwrap();
        if done.is_none() {
            // Refused while rejoining; the rejoin ends right after the
            // tenth refusal, when the backoff has reached its cap.
            if refusals.fetch_add(1, Ordering::SeqCst) + 1 == 10 {
                *done = Some(Instant::now());
            }
            return Err(TransportError::Refused("rejoining".into()));
        }
        open.lock().unwrap().get_or_insert(Instant::now());
        let first = futures::stream::once(async { Ok(WalAck::default()) });
        // The stream stays open while its batches are taken.
        let acks = futures::StreamExt::chain(first, futures::stream::pending());
        Ok(Box::pin(futures::StreamExt::map(acks, move |ack| {
            let _open = &batches;
            ack
        })))
    });
    let (replica, _service) = start(cfg, Arc::new(MemWal::new()), peer);
    replica
        .wait_for(Duration::from_secs(60), "the stream up", |h| {
            h.peer.connected
        })
        .await
        .unwrap();
    let rejoined = rejoined.lock().unwrap().expect("the rejoin ended");
    let opened = opened.lock().unwrap().expect("the stream opened");
    let waited = opened - rejoined;
    assert!(
        waited <= interval + Duration::from_millis(50),
        "reopened {waited:?} after the standby became one again (heartbeat interval \
         {interval:?}, backoff {backoff_max:?})"
    );
    replica.shutdown().await;
}

/// A standby publishes no ack on a new stream before it accepted one of
/// its batches: the primary counts the positions it gets as progress in
/// its own log, and ours may hold records its log does not (the next
/// batch would find out and rewind them). An apply finishing meanwhile
/// published them anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_sends_no_ack_on_a_stream_before_it_accepted_a_batch_of_it() {
    let wal = standby_wal_holding(3);
    wal.set_may_block(true);
    let engine = Arc::new(MemStateMachine::new());
    engine.hold_applies();
    let (replica, service) = Replica::builder(cfg(InitialRole::Standby), wal, engine.clone())
        .peer(Arc::new(unreachable_peer()))
        .start_without_server()
        .unwrap();
    let (_session, mut acks) = service.inbox().open_stream().await.unwrap();
    let opening = acks.borrow_and_update().clone().unwrap();
    assert_eq!(opening.applied, Lsn::ZERO, "the applies are held");

    engine.release_applies();
    replica
        .wait_for(Duration::from_secs(10), "applied 3", |h| {
            h.applied_lsn == Lsn(3)
        })
        .await
        .unwrap();
    assert!(
        !acks.has_changed().unwrap(),
        "an ack went out before any batch was checked: {:?}",
        *acks.borrow()
    );
}
