//! The witness service's tests: decisions, group-commit writes and what
//! a failed write does.

use super::*;

fn read_req(cluster: &str, node: &str, epoch: u64) -> Request<pb::ReadRegisterRequest> {
    Request::new(pb::ReadRegisterRequest {
        cluster_id: cluster.into(),
        caller: Some(pb::ArbiterCaller {
            node_id: node.into(),
            epoch,
            seen_version: 0,
            leads: false,
        }),
    })
}

fn cas_req(
    cluster: &str,
    node: &str,
    expected_version: u64,
    next: &Register,
) -> Request<pb::CompareAndSwapRequest> {
    Request::new(pb::CompareAndSwapRequest {
        cluster_id: cluster.into(),
        caller: Some(pb::ArbiterCaller {
            node_id: node.into(),
            epoch: next.epoch.0,
            seen_version: 0,
            leads: false,
        }),
        expected_version,
        next: Some(pb::ArbiterRegister::from(next)),
    })
}

fn pair(epoch: u64, primary: &str) -> Register {
    Register::fresh(Epoch(epoch), &primary.into(), &["n1".into(), "n2".into()])
}

/// A witness in a new directory whose cluster `c` (n1 primary at
/// epoch 1, n2 its standby) was created: register version 1.
async fn with_cluster_c() -> (tempfile::TempDir, WitnessService) {
    let dir = tempfile::tempdir().unwrap();
    let w = WitnessService::open(dir.path()).unwrap();
    Witness::read(&w, read_req("c", "n2", 0)).await.unwrap();
    Witness::compare_and_swap(&w, cas_req("c", "n1", 0, &pair(1, "n1")))
        .await
        .unwrap();
    (dir, w)
}

#[tokio::test]
async fn a_failed_write_answers_unavailable_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let w = WitnessService::open(dir.path()).unwrap();
    Witness::read(&w, read_req("c", "n2", 0)).await.unwrap();
    let created = Witness::compare_and_swap(&w, cas_req("c", "n1", 0, &pair(1, "n1")))
        .await
        .unwrap()
        .into_inner();
    assert!(created.swapped);
    // The next write cannot create its temporary file.
    std::fs::create_dir(dir.path().join("registers.tmp")).unwrap();
    let status = Witness::compare_and_swap(&w, cas_req("c", "n2", 1, &pair(2, "n2")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let stats = w.stats();
    assert_eq!((stats.swaps, stats.write_failures), (1, 1));
    assert!(!stats.healthy());
    // Memory still holds version 1: a swap at 1 works once the disk does.
    let r = Witness::read(&w, read_req("c", "n1", 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.register.unwrap().version, 1);
    std::fs::remove_dir(dir.path().join("registers.tmp")).unwrap();
    let again = Witness::compare_and_swap(&w, cas_req("c", "n2", 1, &pair(2, "n2")))
        .await
        .unwrap()
        .into_inner();
    assert!(again.swapped && again.register.unwrap().version == 2);
    assert!(w.stats().healthy());
}

/// A write whose rename happened but whose directory fsync failed
/// leaves the file's contents after a crash unknown: answering from
/// the old registers (the rename may survive) or the new ones (it may
/// not) could each show a register a restart then contradicts. The
/// witness answers nothing more, reads included, until a restart
/// reads the file again.
#[tokio::test]
async fn a_write_whose_directory_fsync_failed_stops_answering_until_a_restart() {
    let (dir, w) = with_cluster_c().await;
    w.shared
        .file
        .fail_dir_syncs
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let status = Witness::compare_and_swap(&w, cas_req("c", "n2", 1, &pair(2, "n2")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let read = Witness::read(&w, read_req("c", "n1", 1)).await.unwrap_err();
    assert_eq!(read.code(), tonic::Code::Unavailable, "{read:?}");
    assert!(read.message().contains("restarted"), "{read:?}");
    assert!(!w.stats().healthy());
    drop(w);
    // Here the rename survived (no crash): the restart answers it.
    let w = WitnessService::open(dir.path()).unwrap();
    let r = Witness::read(&w, read_req("c", "n1", 2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.register.unwrap().version, 2);
}

/// A writer that panics stops the witness instead of leaving every
/// later swap waiting for a write that never comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_panics_stops_the_witness_instead_of_hanging_it() {
    let dir = tempfile::tempdir().unwrap();
    let observe: WriteObserver = Arc::new(|_| panic!("an observer that panics"));
    let w = Arc::new(WitnessService::open_observed(dir.path(), Some(observe)).unwrap());
    Witness::read(&*w, read_req("c", "n2", 0)).await.unwrap();
    let writer = w.clone();
    let first = tokio::spawn(async move {
        Witness::compare_and_swap(&*writer, cas_req("c", "n1", 0, &pair(1, "n1"))).await
    });
    assert!(first.await.is_err(), "the writing request panicked");
    let next = tokio::time::timeout(
        Duration::from_secs(10),
        Witness::read(&*w, read_req("c", "n1", 0)),
    )
    .await
    .expect("a request after the panic was answered")
    .unwrap_err();
    assert_eq!(next.code(), tonic::Code::Unavailable, "{next:?}");
    assert!(!w.stats().healthy());
}

#[tokio::test]
async fn malformed_requests_are_invalid_argument_and_refusals_failed_precondition() {
    let dir = tempfile::tempdir().unwrap();
    let w = WitnessService::open(dir.path()).unwrap();
    let long = "x".repeat(MAX_NAME_BYTES + 1);
    for req in [
        read_req("", "n1", 0),
        read_req("c", "", 0),
        read_req(&long, "n1", 0),
        read_req("c", &long, 0),
        read_req("c", "n1", Epoch::MAX.0),
    ] {
        let status = Witness::read(&w, req).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    }
    let mut crowded = pair(1, "n1");
    crowded.members = (0..=MAX_MEMBERS).map(|i| NodeId(format!("n{i}"))).collect();
    let status = Witness::compare_and_swap(&w, cas_req("c", "n1", 0, &crowded))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert_eq!(w.stats().invalid, 6);
    // n2 has not reported: the create is refused, with the reason.
    let status = Witness::compare_and_swap(&w, cas_req("c", "n1", 0, &pair(1, "n1")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(status.message().contains("n2"), "{}", status.message());
    let details = <pb::SwapRefused as prost::Message>::decode(status.details()).unwrap();
    assert_eq!(
        crate::arbiter::wire::refusal_from_pb(details),
        Some(SwapRefusal::MembersNotHeard {
            missing: vec!["n2".into()]
        })
    );
    assert_eq!(w.stats().refused.get("members_not_heard"), Some(&1));
    assert!(w.registers().is_empty());
}

/// A node's claim to lead its epoch reaches the witness over the wire: a
/// witness that lost its file then refuses a create naming the other
/// node primary of that epoch, and says why.
#[tokio::test]
async fn a_create_naming_another_primary_of_an_epoch_a_member_leads_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let w = WitnessService::open(dir.path()).unwrap();
    let mut leading = read_req("c", "n1", 2);
    leading.get_mut().caller.as_mut().unwrap().leads = true;
    Witness::read(&w, leading).await.unwrap();
    let status = Witness::compare_and_swap(&w, cas_req("c", "n2", 0, &pair(2, "n2")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    let details = <pb::SwapRefused as prost::Message>::decode(status.details()).unwrap();
    assert_eq!(
        crate::arbiter::wire::refusal_from_pb(details),
        Some(SwapRefusal::EpochLedByAnother {
            epoch: Epoch(2),
            by: "n1".into()
        })
    );
    assert_eq!(w.stats().refused.get("epoch_led_by_another"), Some(&1));
    assert!(w.registers().is_empty());
}

#[tokio::test]
async fn only_a_member_may_change_an_existing_register() {
    let (_dir, w) = with_cluster_c().await;
    // x, a node of another cluster, tries to make itself primary.
    let mut hijack = pair(2, "x");
    hijack.members.insert("x".into());
    let status = Witness::compare_and_swap(&w, cas_req("c", "x", 1, &hijack))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("not a member"),
        "{}",
        status.message()
    );
    assert_eq!(w.stats().not_members, 1);
    assert_eq!(w.registers()[0].1.primary, Some("n1".into()));
}

/// Holds a write of the file (after it is done, before its swaps are
/// answered) once armed, and counts the writes.
#[derive(Default)]
struct Hold {
    armed: std::sync::atomic::AtomicBool,
    holding: std::sync::atomic::AtomicBool,
    writes: std::sync::atomic::AtomicU64,
    release: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

fn held_witness(dir: &std::path::Path) -> (WitnessService, Arc<Hold>) {
    use std::sync::atomic::Ordering::SeqCst;
    let hold = Arc::new(Hold::default());
    let h = hold.clone();
    let observer: WriteObserver = Arc::new(move |_| {
        h.writes.fetch_add(1, SeqCst);
        if h.armed.swap(false, SeqCst) {
            let release = h.release.lock().unwrap().take().unwrap();
            h.holding.store(true, SeqCst);
            let _ = release.recv();
        }
    });
    (
        WitnessService::open_observed(dir, Some(observer)).unwrap(),
        hold,
    )
}

type Swap = tokio::task::JoinHandle<Result<Response<pb::CompareAndSwapReply>, Status>>;

/// Creates `clusters` registers (n1 primary, n2 reported), then starts
/// a swap of each (n1 taking n2 into its sync set) such that c0's is
/// being written, held, while all the others are decided and wait.
/// Returns the swaps and the sender that releases the held write.
async fn swaps_behind_a_held_write(
    w: &WitnessService,
    hold: &Hold,
    clusters: usize,
) -> (Vec<Swap>, std::sync::mpsc::Sender<()>) {
    use std::sync::atomic::Ordering::SeqCst;
    for c in 0..clusters {
        let cluster = format!("c{c}");
        Witness::read(w, read_req(&cluster, "n2", 0)).await.unwrap();
        let created = Witness::compare_and_swap(w, cas_req(&cluster, "n1", 0, &pair(1, "n1")));
        assert!(created.await.unwrap().into_inner().swapped);
    }
    let (release, released) = std::sync::mpsc::channel();
    *hold.release.lock().unwrap() = Some(released);
    hold.armed.store(true, SeqCst);
    let mut with_standby = pair(1, "n1");
    with_standby.sync_set.insert("n2".into());
    let swap = |c: usize| {
        let (w, next) = (w.clone(), with_standby.clone());
        tokio::spawn(async move {
            Witness::compare_and_swap(&w, cas_req(&format!("c{c}"), "n1", 1, &next)).await
        })
    };
    let mut swaps = vec![swap(0)];
    // c0's swap is written and held on one worker thread...
    while !hold.holding.load(SeqCst) {
        tokio::task::yield_now().await;
    }
    // ...while the others decide on the other and wait (c0's is not
    // marked durable until its write returns).
    swaps.extend((1..clusters).map(swap));
    while w.pending() != clusters as u64 {
        tokio::task::yield_now().await;
    }
    (swaps, release)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_decided_during_a_write_share_the_next_one() {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let (w, hold) = held_witness(dir.path());
    let (swaps, release) = swaps_behind_a_held_write(&w, &hold, 20).await;
    let writes = hold.writes.load(SeqCst);
    release.send(()).unwrap();
    for s in swaps {
        let reply = s.await.unwrap().unwrap().into_inner();
        assert!(reply.swapped && reply.register.unwrap().version == 2);
    }
    assert_eq!(hold.writes.load(SeqCst), writes + 1, "19 swaps, one write");
    assert!(
        w.registers()
            .iter()
            .all(|(_, r)| r.sync_set.contains(&NodeId::from("n2")))
    );
    // And the file holds them.
    drop(w);
    let (w, _) = held_witness(dir.path());
    assert_eq!(w.registers().len(), 20);
    assert!(w.registers().iter().all(|(_, r)| r.version == 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_group_write_fails_every_swap_in_it_and_rolls_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let (w, hold) = held_witness(dir.path());
    let (swaps, release) = swaps_behind_a_held_write(&w, &hold, 10).await;
    // The next write cannot create its temporary file.
    std::fs::create_dir(dir.path().join("registers.tmp")).unwrap();
    release.send(()).unwrap();
    let mut outcomes = Vec::new();
    for s in swaps {
        outcomes.push(s.await.unwrap().map(|r| r.into_inner().swapped));
    }
    assert_eq!(
        outcomes[0].as_ref().ok(),
        Some(&true),
        "c0's write was done"
    );
    for o in &outcomes[1..] {
        assert_eq!(
            o.as_ref().unwrap_err().code(),
            tonic::Code::Unavailable,
            "{o:?}"
        );
    }
    let versions: Vec<u64> = w.registers().iter().map(|(_, r)| r.version).collect();
    assert_eq!(versions, [2, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
    assert!(!w.stats().healthy());
    // The rolled-back swaps are at version 1 again: retried, they swap.
    std::fs::remove_dir(dir.path().join("registers.tmp")).unwrap();
    let mut with_standby = pair(1, "n1");
    with_standby.sync_set.insert("n2".into());
    let again = Witness::compare_and_swap(&w, cas_req("c1", "n1", 1, &with_standby))
        .await
        .unwrap()
        .into_inner();
    assert!(again.swapped);
    assert!(w.stats().healthy());
}

#[tokio::test]
async fn requests_past_the_bounds_are_refused_and_known_ones_still_served() {
    let dir = tempfile::tempdir().unwrap();
    let w = WitnessService::open(dir.path()).unwrap();
    for n in 0..MAX_REPORTERS {
        Witness::read(&w, read_req("c", &format!("n{n}"), 0))
            .await
            .unwrap();
    }
    let status = Witness::read(&w, read_req("c", "one-too-many", 0))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    // A node that reported before is still served.
    Witness::read(&w, read_req("c", "n1", 1)).await.unwrap();
    assert_eq!(w.stats().over_limit, 1);
    let regs = w.shared.state.lock().unwrap().pending.clone();
    assert!(!regs.admits("c", &"x".into(), MAX_CLUSTERS, MAX_REPORTERS));
    assert!(!regs.admits("new", &"n1".into(), 1, MAX_REPORTERS));
    assert!(regs.admits("c", &"n1".into(), 1, MAX_REPORTERS));
}

/// `read_req` from a node that was answered the register at `version`.
fn read_req_seen(
    cluster: &str,
    node: &str,
    epoch: u64,
    version: u64,
) -> Request<pb::ReadRegisterRequest> {
    let mut req = read_req(cluster, node, epoch);
    if let Some(caller) = req.get_mut().caller.as_mut() {
        caller.seen_version = version;
    }
    req
}

/// A witness of cluster `c` restarted on a copy of its file taken at
/// version 1, after the register had reached version 2.
async fn restarted_on_an_older_copy() -> (tempfile::TempDir, WitnessService) {
    let (dir, w) = with_cluster_c().await;
    let file = dir.path().join(super::super::file::FILE);
    let old_copy = std::fs::read(&file).unwrap();
    let swapped = Witness::compare_and_swap(&w, cas_req("c", "n2", 1, &pair(2, "n2")))
        .await
        .unwrap()
        .into_inner();
    assert!(swapped.swapped);
    drop(w);
    std::fs::write(&file, &old_copy).unwrap();
    let w = WitnessService::open(dir.path()).unwrap();
    (dir, w)
}

/// The witness's directory restored from a copy taken at version 1: a
/// node's call reporting version 2 finds the register behind, forgets it
/// (answering no register), counts it, and writes the file without it,
/// so a restart does not bring the stale register back.
#[tokio::test]
async fn a_file_restored_from_an_older_copy_is_forgotten_at_the_first_call_that_saw_newer() {
    let (dir, w) = restarted_on_an_older_copy().await;
    assert_eq!(w.registers()[0].1.version, 1, "the old copy was not read");
    // A node that saw only version 1 learns nothing new: the witness
    // cannot tell yet.
    let r = Witness::read(&w, read_req_seen("c", "n1", 1, 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.register.unwrap().version, 1);
    assert_eq!(w.stats().registers_went_back, 0);
    let r = Witness::read(&w, read_req_seen("c", "n2", 2, 2))
        .await
        .unwrap()
        .into_inner();
    let answered = Register::from(r.register.unwrap());
    assert!(
        !answered.exists(),
        "the stale register was answered: {answered}"
    );
    assert_eq!(w.stats().registers_went_back, 1);
    assert!(w.registers().is_empty(), "the file still holds it");
    drop(w);
    let w = WitnessService::open(dir.path()).unwrap();
    assert!(w.registers().is_empty(), "a restart brought it back");
}

/// The same uncovered by a member's swap: the swap meets no register (a
/// conflict at version 0, nothing swapped), and its answer waits for the
/// file written without the stale register.
#[tokio::test]
async fn a_swap_that_uncovers_an_older_copy_meets_no_register_and_the_file_drops_it() {
    let (dir, w) = restarted_on_an_older_copy().await;
    let mut req = cas_req("c", "n2", 1, &pair(2, "n2"));
    if let Some(caller) = req.get_mut().caller.as_mut() {
        caller.seen_version = 2;
    }
    let answer = Witness::compare_and_swap(&w, req)
        .await
        .unwrap()
        .into_inner();
    assert!(!answer.swapped, "swapped from the stale register");
    assert!(!Register::from(answer.register.unwrap()).exists());
    assert_eq!(w.stats().registers_went_back, 1);
    assert!(w.registers().is_empty(), "the file still holds it");
    drop(w);
    assert!(
        WitnessService::open(dir.path())
            .unwrap()
            .registers()
            .is_empty()
    );
}
