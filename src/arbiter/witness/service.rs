//! The server side of the `Witness` gRPC service: the rules of
//! [`Registers`] over the witness's file.
//!
//! Swaps are decided one at a time, under one lock, and written to the
//! file in groups: every answer waits until the file (fsync and rename,
//! before the answer) holds every swap it could have seen, and one write
//! covers every swap decided before it began, so many clusters swapping
//! at once (a partition cutting many pairs) cost a few fsyncs, not one
//! each (see `State`). A write that fails answers `UNAVAILABLE` to every
//! swap it carried, and to every answer resting on them, and rolls the
//! registers back to what the file held: nothing a later request sees
//! changed.
//!
//! Status codes: a refused swap (`SwapRefusal`) is `FAILED_PRECONDITION`
//! with the reason in the message and, structured, in the details; a
//! malformed request (an empty or oversized name, an epoch at the bound,
//! too many members) `INVALID_ARGUMENT`; a swap of an existing register
//! by a node that is not one of its members, and over mutual TLS a node id
//! the client's certificate does not name, `PERMISSION_DENIED`.

use super::file::{RegisterFile, StoreError};
use crate::arbiter::{Caller, CasOutcome, Register, Registers, SwapRefusal};
use crate::pb;
use crate::pb::witness_server::{Witness, WitnessServer};
use crate::types::{Epoch, NodeId};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

/// Longest cluster id or node id the witness takes, in bytes.
pub const MAX_NAME_BYTES: usize = 255;
/// Most members (and so most standbys in a sync set) of one cluster.
pub const MAX_MEMBERS: usize = 64;
/// Most clusters the witness tracks (with a register, or with reports
/// only): past it, requests about a new cluster are `RESOURCE_EXHAUSTED`.
pub const MAX_CLUSTERS: usize = 100_000;
/// Most nodes reporting for one cluster since start: past it, requests of
/// a new node about that cluster are `RESOURCE_EXHAUSTED`.
pub const MAX_REPORTERS: usize = 2 * MAX_MEMBERS;
/// Largest request the witness decodes: a register of `MAX_MEMBERS`
/// names of `MAX_NAME_BYTES`, twice (members and sync set), and change.
pub const MAX_MESSAGE_BYTES: usize = 64 << 10;

/// What the witness has answered since it started, for `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WitnessStats {
    /// `Read` requests answered.
    pub reads: u64,
    /// `CompareAndSwap` requests received.
    pub swap_requests: u64,
    /// Swaps that took effect (and were made durable).
    pub swaps: u64,
    /// Swaps at a version the register had left (answered with it).
    pub conflicts: u64,
    /// Swaps refused whatever the version, by reason (`members_not_heard`,
    /// `epoch_below_reported`, `epoch_goes_back`, `epoch_led_by_another`,
    /// `caller_not_member`).
    pub refused: BTreeMap<&'static str, u64>,
    /// Malformed requests (`INVALID_ARGUMENT`).
    pub invalid: u64,
    /// Requests or connections whose identity was refused: no client
    /// certificate, another CA, or a node id the certificate does not name.
    pub unauthenticated: u64,
    /// Swaps of an existing register by a node that is not one of its
    /// members (`PERMISSION_DENIED`): another cluster's node, or a node
    /// with a wrong cluster id.
    pub not_members: u64,
    /// Requests past `MAX_CLUSTERS` or `MAX_REPORTERS`
    /// (`RESOURCE_EXHAUSTED`).
    pub over_limit: u64,
    /// Swaps whose write to the file failed (`UNAVAILABLE`).
    pub write_failures: u64,
    /// The last failed write, until a write succeeds again.
    pub write_error: Option<String>,
    /// Registers found older than a version the witness had answered a
    /// node, and forgotten to be rebuilt from the members: its file went
    /// back (`Registers::take_went_back`).
    pub registers_went_back: u64,
    /// Clusters that have a register.
    pub clusters: usize,
}

impl WitnessStats {
    /// Whether the witness can make swaps durable: no write has failed
    /// since the last one that succeeded.
    pub fn healthy(&self) -> bool {
        self.write_error.is_none()
    }
}

/// The label of a refusal in `WitnessStats::refused` and in metrics.
pub fn refusal_reason(r: &SwapRefusal) -> &'static str {
    match r {
        SwapRefusal::CallerNotMember { .. } => "caller_not_member",
        SwapRefusal::MembersNotHeard { .. } => "members_not_heard",
        SwapRefusal::EpochBelowReported { .. } => "epoch_below_reported",
        SwapRefusal::EpochGoesBack { .. } => "epoch_goes_back",
        SwapRefusal::EpochLedByAnother { .. } => "epoch_led_by_another",
    }
}

/// Called with how long each write of the file took (temp write, fsync,
/// rename, fsync of the directory).
pub type WriteObserver = Arc<dyn Fn(Duration) + Send + Sync>;

/// The witness: every cluster's register over its file. Clones share it.
/// Serve it with [`serve_witness`](super::serve_witness) (or
/// `serve_witness_tls`), or add [`WitnessService::into_server`] to a
/// tonic server of your own.
#[derive(Clone)]
pub struct WitnessService {
    shared: Arc<Shared>,
    /// Served over mutual TLS: every request must come with the client's
    /// certificate, which must name the caller's node id.
    require_certificate: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Written only by the request that holds `State::writing`.
    file: RegisterFile,
    stats: Mutex<WitnessStats>,
    path: PathBuf,
    observe_write: Option<WriteObserver>,
}

impl Shared {
    /// The state, taken past a poisoning: a panic under the lock leaves
    /// the witness refusing requests (`State::stopped`, set by the
    /// writer's guard), not panicking on each.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The counters, taken past a poisoning as `state`.
    fn stats(&self) -> MutexGuard<'_, WitnessStats> {
        self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The registers, and the swaps not yet in the file (group commit).
///
/// Every decision is made on `pending`, which holds every swap decided so
/// far; `durable` is what the file holds. A swap bumps `pending_gen`.
/// An answer that depends on a generation the file does not hold yet
/// waits (in `waiters`) for a write that covers it: one write of the file
/// covers every swap decided before it began. The request that finds no
/// write under way writes (sync, holding no lock, with no await between
/// taking `writing` and giving it back, so a cancelled request cannot
/// leave it taken) until nothing is pending. A failed write rolls
/// `pending` back to `durable` and fails every waiter: nothing a request
/// was told about the failed swaps holds.
struct State {
    pending: Registers,
    pending_gen: u64,
    durable: Registers,
    durable_gen: u64,
    writing: bool,
    waiters: Vec<(u64, Waiter)>,
    /// Why the witness answers nothing more until restarted: a write
    /// whose outcome on disk is unknown (or that panicked), after which
    /// neither the registers in memory before it nor those after it are
    /// known to be what a restart reads.
    stopped: Option<String>,
}

type Waiter = tokio::sync::oneshot::Sender<Result<(), String>>;

/// What a request must wait for before it answers.
enum Ticket {
    /// Nothing: what it saw is in the file.
    Now,
    /// A write covering what it saw; `write` if this request must do it.
    Wait {
        done: tokio::sync::oneshot::Receiver<Result<(), String>>,
        write: bool,
    },
}

/// Stops the witness if the writer unwinds (see `write_pending`).
struct WriterGuard<'a>(&'a WitnessService);

impl Drop for WriterGuard<'_> {
    fn drop(&mut self) {
        let st = self.0.shared.state();
        tracing::error!(
            "a write of the witness's register file panicked: it answers nothing until restarted"
        );
        self.0
            .stop(st, "a write of the register file panicked".into());
    }
}

impl fmt::Debug for WitnessService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WitnessService")
            .field("file", &self.shared.path)
            .field("require_certificate", &self.require_certificate)
            .finish()
    }
}

impl WitnessService {
    /// The witness of the data directory `dir` (see
    /// [`RegisterFile::open`]): a damaged file is an error, a directory
    /// without one starts with no registers.
    pub fn open(dir: impl Into<PathBuf>) -> Result<WitnessService, StoreError> {
        WitnessService::open_observed(dir, None)
    }

    /// As `open`, calling `observe_write` with the time of each write of
    /// the file (for a latency histogram).
    pub fn open_observed(
        dir: impl Into<PathBuf>,
        observe_write: Option<WriteObserver>,
    ) -> Result<WitnessService, StoreError> {
        let (file, registers) = RegisterFile::open(dir)?;
        let stats = WitnessStats {
            clusters: registers.len(),
            ..WitnessStats::default()
        };
        tracing::info!(file = %file.path().display(), clusters = registers.len(), "witness registers loaded");
        Ok(WitnessService {
            shared: Arc::new(Shared {
                path: file.path().to_path_buf(),
                state: Mutex::new(State {
                    pending: registers.clone(),
                    pending_gen: 0,
                    durable: registers,
                    durable_gen: 0,
                    writing: false,
                    waiters: Vec::new(),
                    stopped: None,
                }),
                file,
                stats: Mutex::new(stats),
                observe_write,
            }),
            require_certificate: false,
        })
    }

    /// The file the registers are kept in.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// What it has answered so far.
    pub fn stats(&self) -> WitnessStats {
        self.shared.stats().clone()
    }

    /// Every cluster's register as the file holds it (for tests and
    /// tools); once a write's outcome on disk is unknown (the witness
    /// answers nothing until restarted), as the file held it before that
    /// write, which a restart may or may not find.
    pub fn registers(&self) -> Vec<(String, Register)> {
        let state = self.shared.state();
        state
            .durable
            .registers()
            .map(|(id, r)| (id.to_string(), r.clone()))
            .collect()
    }

    /// The tonic service, with the witness's message limit, to add to a
    /// `tonic::transport::Server` (a simulated network's, one behind a
    /// TLS of your own). Served this way nothing checks who asks: over an
    /// untrusted network use `serve_witness_tls`.
    pub fn into_server(self) -> WitnessServer<WitnessService> {
        WitnessServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// This service, refusing every request that does not come with a
    /// client certificate naming its caller (see `serve_witness_tls`).
    #[cfg(feature = "tls")]
    pub(crate) fn requiring_certificates(mut self) -> WitnessService {
        self.require_certificate = true;
        self
    }

    /// Counts a connection refused before it made a request.
    #[cfg(feature = "tls")]
    pub(crate) fn refusal_counter(&self) -> impl Fn() + Send + Sync + 'static {
        let shared = self.shared.clone();
        move || shared.stats().unauthenticated += 1
    }

    fn count(&self, f: impl FnOnce(&mut WitnessStats)) {
        f(&mut self.shared.stats());
    }

    fn invalid(&self, what: String) -> Status {
        self.count(|s| s.invalid += 1);
        tracing::warn!(reason = %what, "malformed witness request refused");
        Status::invalid_argument(what)
    }

    /// Over mutual TLS, the caller's node id must be a name the client's
    /// certificate carries.
    fn check_identity<T>(&self, request: &Request<T>, caller: &Caller) -> Result<(), Status> {
        if !self.require_certificate {
            return Ok(());
        }
        #[cfg(feature = "tls")]
        if let Some(cert) = request
            .extensions()
            .get::<crate::transport::ClientCertificate>()
        {
            return cert.proves(&caller.node_id).map_err(|e| {
                self.count(|s| s.unauthenticated += 1);
                tracing::warn!(node = %caller.node_id, remote = ?cert.remote, reason = %e, "witness request refused: the client's certificate does not name the node it asks as");
                Status::permission_denied(format!(
                    "this connection's certificate does not name node {:?}: {e}",
                    caller.node_id.0
                ))
            });
        }
        let _ = (request, caller);
        self.count(|s| s.unauthenticated += 1);
        Err(Status::permission_denied(
            "this witness requires mutual TLS: connect with a node certificate of the cluster's CA",
        ))
    }

    /// Runs `decide` on the pending registers and says what the answer
    /// must wait for: a write of the file, if anything `decide` could
    /// have seen is not in it yet. A register the request found behind a
    /// version its caller was answered, and forgot, is a change too (the
    /// file is written without it), and is said loudly.
    fn decide<R>(
        &self,
        cluster_id: &str,
        caller: &Caller,
        decide: impl FnOnce(&mut Registers) -> (R, bool),
    ) -> Result<(R, Ticket), Status> {
        let mut st = self.shared.state();
        if let Some(why) = &st.stopped {
            return Err(Status::unavailable(format!(
                "the witness answers nothing until it is restarted ({why}); a restart reads the register file again"
            )));
        }
        if !st
            .pending
            .admits(cluster_id, &caller.node_id, MAX_CLUSTERS, MAX_REPORTERS)
        {
            drop(st);
            self.count(|s| s.over_limit += 1);
            tracing::warn!(cluster = cluster_id, node = %caller.node_id, "witness request refused: past its bounds of {MAX_CLUSTERS} clusters or {MAX_REPORTERS} nodes per cluster");
            return Err(Status::resource_exhausted(format!(
                "the witness tracks at most {MAX_CLUSTERS} clusters and {MAX_REPORTERS} nodes per cluster; cluster {cluster_id:?} or node {:?} would be past them",
                caller.node_id.0
            )));
        }
        let (result, changed) = decide(&mut st.pending);
        let went_back = st.pending.take_went_back(cluster_id);
        if changed || went_back.is_some() {
            st.pending_gen += 1;
        }
        if let Some(w) = went_back {
            self.count(|s| s.registers_went_back += 1);
            tracing::error!(cluster = cluster_id, node = %w.by, stale = %w.stale, seen_version = w.seen_version, "the witness's register is older than one it answered {}: its file went back (restored from an older copy, a machine rolled back to a snapshot, or a disk that lost writes); forgot it, and rebuilds it from the members as after a lost file. Do not restore the witness's file: start it empty instead", w.by);
        }
        if st.pending_gen == st.durable_gen {
            return Ok((result, Ticket::Now));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let generation = st.pending_gen;
        st.waiters.push((generation, tx));
        let write = !st.writing;
        st.writing = true;
        Ok((result, Ticket::Wait { done: rx, write }))
    }

    /// Waits until what a request saw is in the file (writing it if the
    /// ticket says so); `Err` (UNAVAILABLE) if that write failed.
    async fn settle(&self, ticket: Ticket) -> Result<(), Status> {
        let (done, write) = match ticket {
            Ticket::Now => return Ok(()),
            Ticket::Wait { done, write } => (done, write),
        };
        if write {
            // The write blocks (fsync). On a multi-threaded runtime the
            // worker's other tasks move to another thread meanwhile (one
            // left waiting behind a long run of writes would stall every
            // request on its connection); on a single-threaded one (a
            // simulation) the write simply runs here.
            let flavor = tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor());
            if matches!(flavor, Ok(tokio::runtime::RuntimeFlavor::MultiThread)) {
                tokio::task::block_in_place(|| self.write_pending());
            } else {
                self.write_pending();
            }
        }
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Status::unavailable(format!(
                "the witness could not make the swap durable ({e}); the register may or may not have changed: read it again"
            ))),
            Err(_) => Err(Status::unavailable(
                "the witness stopped before the swap was durable; read the register again",
            )),
        }
    }

    /// Writes the pending registers until the file holds all of them;
    /// called by the one request that took `State::writing`. Should it
    /// panic, its guard stops the witness rather than leave `writing` set
    /// (every later swap would wait for a write that never comes).
    fn write_pending(&self) {
        let guard = WriterGuard(self);
        self.write_pending_until_done();
        std::mem::forget(guard);
    }

    fn write_pending_until_done(&self) {
        loop {
            let (snapshot, generation) = {
                let mut st = self.shared.state();
                if st.pending_gen == st.durable_gen {
                    for (_, w) in st.waiters.drain(..) {
                        let _ = w.send(Ok(()));
                    }
                    st.writing = false;
                    return;
                }
                (st.pending.clone(), st.pending_gen)
            };
            let started = Instant::now();
            let written = self.shared.file.save(&snapshot);
            let took = started.elapsed();
            if let Some(observe) = &self.shared.observe_write {
                observe(took);
            }
            let clusters = snapshot.len();
            let mut st = self.shared.state();
            match written {
                Ok(()) => {
                    st.durable = snapshot;
                    st.durable_gen = generation;
                    let (done, waiting): (Vec<_>, Vec<_>) =
                        st.waiters.drain(..).partition(|(g, _)| *g <= generation);
                    st.waiters = waiting;
                    drop(st);
                    for (_, w) in done {
                        let _ = w.send(Ok(()));
                    }
                    self.count(|s| {
                        s.write_error = None;
                        s.clusters = clusters;
                    });
                }
                Err(e @ StoreError::Unsettled { .. }) => {
                    let e = e.to_string();
                    tracing::error!(error = %e, "witness could not make its register file durable and cannot tell which registers a restart would read: it answers nothing until restarted");
                    self.stop(st, e);
                    return;
                }
                Err(e) => {
                    let failed = std::mem::take(&mut st.waiters);
                    {
                        let st = &mut *st;
                        st.pending.roll_back_registers_to(&st.durable);
                        st.pending_gen = st.durable_gen;
                    }
                    drop(st);
                    let e = e.to_string();
                    tracing::error!(error = %e, swaps = failed.len(), "witness could not make swaps durable; answered UNAVAILABLE and kept the registers as they were");
                    self.count(|s| {
                        s.write_failures += 1;
                        s.write_error = Some(e.clone());
                    });
                    for (_, w) in failed {
                        let _ = w.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// Stops answering: every waiting request gets UNAVAILABLE, every
    /// later one too (`decide`), and health reports `why` until a restart.
    fn stop(&self, mut st: MutexGuard<'_, State>, why: String) {
        st.stopped = Some(why.clone());
        st.writing = false;
        let failed = std::mem::take(&mut st.waiters);
        drop(st);
        self.count(|s| {
            s.write_failures += 1;
            s.write_error = Some(why.clone());
        });
        for (_, w) in failed {
            let _ = w.send(Err(why.clone()));
        }
    }

    /// Swaps decided but not yet in the file.
    #[cfg(test)]
    fn pending(&self) -> u64 {
        let st = self.shared.state();
        st.pending_gen - st.durable_gen
    }

    async fn read_register(&self, cluster_id: &str, caller: &Caller) -> Result<Register, Status> {
        let (register, ticket) = self.decide(cluster_id, caller, |regs| {
            (regs.read(cluster_id, caller), false)
        })?;
        self.settle(ticket).await?;
        Ok(register)
    }

    async fn swap(
        &self,
        cluster_id: &str,
        caller: &Caller,
        expected_version: u64,
        next: &Register,
    ) -> Result<CasOutcome, Status> {
        let ((old, outcome), ticket) = self.decide(cluster_id, caller, |regs| {
            let old = regs.read(cluster_id, caller);
            if old.exists() && !old.members.contains(&caller.node_id) {
                return ((old, None), false);
            }
            let outcome = regs.compare_and_swap(cluster_id, caller, expected_version, next);
            let changed = matches!(outcome, Ok(CasOutcome::Swapped(_)));
            ((old, Some(outcome)), changed)
        })?;
        // Whatever it saw must be durable before it answers, a refusal
        // or a conflict too (it may rest on a swap not yet written, such as
        // the create that made the caller a non-member).
        self.settle(ticket).await?;
        let Some(outcome) = outcome else {
            self.count(|s| s.not_members += 1);
            tracing::warn!(cluster = cluster_id, node = %caller.node_id, register = %old, "witness refused a swap by a node that is not a member of the cluster");
            return Err(Status::permission_denied(format!(
                "node {:?} is not a member of cluster {cluster_id:?} (members: {}); only a member may change its register",
                caller.node_id.0,
                old.members
                    .iter()
                    .map(|n| n.0.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        match outcome {
            Err(refusal) => {
                let reason = refusal_reason(&refusal);
                self.count(|s| *s.refused.entry(reason).or_default() += 1);
                tracing::warn!(cluster = cluster_id, node = %caller.node_id, caller_epoch = %caller.epoch, reason, "witness refused a swap: {refusal}");
                Err(refused_status(&refusal))
            }
            Ok(CasOutcome::Conflict(current)) => {
                self.count(|s| s.conflicts += 1);
                tracing::debug!(cluster = cluster_id, node = %caller.node_id, expected_version, current = %current, "witness swap at a stale version");
                Ok(CasOutcome::Conflict(current))
            }
            Ok(CasOutcome::Swapped(swapped)) => {
                self.count(|s| s.swaps += 1);
                tracing::info!(cluster = cluster_id, node = %caller.node_id, old = %old, new = %swapped, "witness swap");
                Ok(CasOutcome::Swapped(swapped))
            }
        }
    }
}

/// The status of a refused swap: the reason in words and, structured, in
/// the details (a `SwapRefused`), so a node sees the refusal itself.
fn refused_status(refusal: &SwapRefusal) -> Status {
    let details = prost::Message::encode_to_vec(&pb::SwapRefused::from(refusal));
    Status::with_details(
        tonic::Code::FailedPrecondition,
        refusal.to_string(),
        details.into(),
    )
}

/// A request's cluster id, checked.
fn cluster_id(id: &str) -> Result<&str, String> {
    name("cluster_id", id)?;
    Ok(id)
}

fn name(what: &str, v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if v.len() > MAX_NAME_BYTES {
        return Err(format!(
            "{what} is {} bytes, more than {MAX_NAME_BYTES}",
            v.len()
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(format!("{what} {v:?} holds control characters"));
    }
    Ok(())
}

fn epoch(what: &str, e: u64) -> Result<Epoch, String> {
    if e >= Epoch::MAX.0 {
        return Err(format!(
            "{what} {e} is at or above the bound {}",
            Epoch::MAX
        ));
    }
    Ok(Epoch(e))
}

fn caller(c: Option<pb::ArbiterCaller>) -> Result<Caller, String> {
    let c = c.ok_or("the request names no caller")?;
    name("caller.node_id", &c.node_id)?;
    Ok(Caller {
        epoch: epoch("caller.epoch", c.epoch)?,
        node_id: NodeId(c.node_id),
        seen_version: c.seen_version,
        leads: c.leads,
    })
}

fn proposal(r: Option<pb::ArbiterRegister>) -> Result<Register, String> {
    let r = r.ok_or("the request proposes no register")?;
    epoch("next.epoch", r.epoch)?;
    if !r.primary.is_empty() {
        name("next.primary", &r.primary)?;
    }
    for (what, set) in [("next.members", &r.members), ("next.sync_set", &r.sync_set)] {
        if set.len() > MAX_MEMBERS {
            return Err(format!(
                "{what} has {} names, more than {MAX_MEMBERS}",
                set.len()
            ));
        }
        for n in set.iter() {
            name(what, n)?;
        }
    }
    Ok(Register::from(r))
}

#[tonic::async_trait]
impl Witness for WitnessService {
    async fn read(
        &self,
        request: Request<pb::ReadRegisterRequest>,
    ) -> Result<Response<pb::ReadRegisterReply>, Status> {
        let (cluster, who) = {
            let r = request.get_ref();
            let checked = cluster_id(&r.cluster_id)
                .map(str::to_string)
                .and_then(|c| Ok((c, caller(r.caller.clone())?)));
            checked.map_err(|e| self.invalid(e))?
        };
        self.check_identity(&request, &who)?;
        self.count(|s| s.reads += 1);
        let register = self.read_register(&cluster, &who).await?;
        Ok(Response::new(pb::ReadRegisterReply {
            register: Some(pb::ArbiterRegister::from(&register)),
        }))
    }

    async fn compare_and_swap(
        &self,
        request: Request<pb::CompareAndSwapRequest>,
    ) -> Result<Response<pb::CompareAndSwapReply>, Status> {
        self.count(|s| s.swap_requests += 1);
        let (cluster, who, next) = {
            let r = request.get_ref();
            let checked = cluster_id(&r.cluster_id)
                .map(str::to_string)
                .and_then(|c| Ok((c, caller(r.caller.clone())?, proposal(r.next.clone())?)));
            checked.map_err(|e| self.invalid(e))?
        };
        self.check_identity(&request, &who)?;
        let expected = request.get_ref().expected_version;
        let (swapped, register) = match self.swap(&cluster, &who, expected, &next).await? {
            CasOutcome::Swapped(r) => (true, r),
            CasOutcome::Conflict(r) => (false, r),
        };
        Ok(Response::new(pb::CompareAndSwapReply {
            swapped,
            register: Some(pb::ArbiterRegister::from(&register)),
        }))
    }
}

#[cfg(test)]
mod tests;
