//! The server side of the `Witness` gRPC service: the rules of
//! [`Registers`] over the witness's file.
//!
//! One lock serves every request: a swap is applied to a copy of the
//! registers, the copy is written to the file (fsync and rename before the
//! answer), and only then replaces the registers in memory. A write that
//! fails answers `UNAVAILABLE` and changes nothing a later request sees.
//! The fsync runs on the task that holds the lock, so swaps are one after
//! the other: at one fsync each, far beyond what nodes ask (a node asks
//! only to promote, to go on alone, to take its standby back).
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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

/// Longest cluster id or node id the witness takes, in bytes.
pub const MAX_NAME_BYTES: usize = 255;
/// Most members (and so most standbys in a sync set) of one cluster.
pub const MAX_MEMBERS: usize = 64;
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
    /// `epoch_below_reported`, `epoch_goes_back`, `caller_not_member`).
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
    /// Swaps whose write to the file failed (`UNAVAILABLE`).
    pub write_failures: u64,
    /// The last failed write, until a write succeeds again.
    pub write_error: Option<String>,
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
    state: tokio::sync::Mutex<State>,
    stats: Mutex<WitnessStats>,
    path: PathBuf,
    observe_write: Option<WriteObserver>,
}

struct State {
    registers: Registers,
    file: RegisterFile,
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
                state: tokio::sync::Mutex::new(State { registers, file }),
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
        self.shared.stats.lock().expect("stats lock").clone()
    }

    /// Every cluster's register as it stands (for tests and tools).
    pub async fn registers(&self) -> Vec<(String, Register)> {
        let state = self.shared.state.lock().await;
        state
            .registers
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
        move || shared.stats.lock().expect("stats lock").unauthenticated += 1
    }

    fn count(&self, f: impl FnOnce(&mut WitnessStats)) {
        f(&mut self.shared.stats.lock().expect("stats lock"));
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

    async fn swap(
        &self,
        cluster_id: &str,
        caller: &Caller,
        expected_version: u64,
        next: &Register,
    ) -> Result<CasOutcome, Status> {
        let mut state = self.shared.state.lock().await;
        // Applied to a copy: memory changes only once the file has.
        let mut registers = state.registers.clone();
        let old = registers.read(cluster_id, caller);
        if old.exists() && !old.members.contains(&caller.node_id) {
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
        }
        let outcome = match registers.compare_and_swap(cluster_id, caller, expected_version, next) {
            Ok(outcome) => outcome,
            Err(refusal) => {
                // Keep the caller's report (it is what rebuilds a lost
                // register); nothing to write.
                state.registers = registers;
                let reason = refusal_reason(&refusal);
                self.count(|s| *s.refused.entry(reason).or_default() += 1);
                tracing::warn!(cluster = cluster_id, node = %caller.node_id, caller_epoch = %caller.epoch, reason, "witness refused a swap: {refusal}");
                return Err(refused_status(&refusal));
            }
        };
        let swapped = match outcome {
            CasOutcome::Conflict(current) => {
                state.registers = registers;
                self.count(|s| s.conflicts += 1);
                tracing::debug!(cluster = cluster_id, node = %caller.node_id, expected_version, current = %current, "witness swap at a stale version");
                return Ok(CasOutcome::Conflict(current));
            }
            CasOutcome::Swapped(swapped) => swapped,
        };
        let started = Instant::now();
        let written = state.file.save(&registers);
        let took = started.elapsed();
        if let Some(observe) = &self.shared.observe_write {
            observe(took);
        }
        if let Err(e) = written {
            self.count(|s| {
                s.write_failures += 1;
                s.write_error = Some(e.to_string());
            });
            tracing::error!(cluster = cluster_id, error = %e, "witness could not make a swap durable; answered UNAVAILABLE and kept the register as it was");
            return Err(Status::unavailable(format!(
                "the witness could not make the swap durable ({e}); the register may or may not have changed: read it again"
            )));
        }
        let clusters = registers.len();
        state.registers = registers;
        drop(state);
        self.count(|s| {
            s.swaps += 1;
            s.write_error = None;
            s.clusters = clusters;
        });
        tracing::info!(cluster = cluster_id, node = %caller.node_id, old = %old, new = %swapped, took_us = took.as_micros() as u64, "witness swap");
        Ok(CasOutcome::Swapped(swapped))
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
        let register = self
            .shared
            .state
            .lock()
            .await
            .registers
            .read(&cluster, &who);
        self.count(|s| s.reads += 1);
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
mod tests {
    use super::*;

    fn read_req(cluster: &str, node: &str, epoch: u64) -> Request<pb::ReadRegisterRequest> {
        Request::new(pb::ReadRegisterRequest {
            cluster_id: cluster.into(),
            caller: Some(pb::ArbiterCaller {
                node_id: node.into(),
                epoch,
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
            }),
            expected_version,
            next: Some(pb::ArbiterRegister::from(next)),
        })
    }

    fn pair(epoch: u64, primary: &str) -> Register {
        Register::fresh(Epoch(epoch), &primary.into(), &["n1".into(), "n2".into()])
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
        assert!(w.registers().await.is_empty());
    }

    #[tokio::test]
    async fn only_a_member_may_change_an_existing_register() {
        let dir = tempfile::tempdir().unwrap();
        let w = WitnessService::open(dir.path()).unwrap();
        Witness::read(&w, read_req("c", "n2", 0)).await.unwrap();
        Witness::compare_and_swap(&w, cas_req("c", "n1", 0, &pair(1, "n1")))
            .await
            .unwrap();
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
        assert_eq!(w.registers().await[0].1.primary, Some("n1".into()));
    }
}
