//! The arbiter on etcd: each cluster's register is one etcd key, changed
//! only by a transaction that compares the key's version.
//!
//! # The mapping
//!
//! * Key: `<prefix><cluster_id>/register` (prefix `/walrep/` unless the
//!   URL gives another); value: [`encode_register`] of the register.
//! * `Register::version` is the key's `version`, etcd's count of writes to
//!   that key: 0 while it does not exist, 1 once created, +1 with every
//!   put. That is exactly the register's contract (0 = none, +1 per
//!   successful swap, never reused), with no translation. (The key's
//!   `mod_revision` would do too, but it moves with the whole store's
//!   revision, so the register's version would jump instead of counting
//!   swaps.) A delete would reset it to 0; walrep never deletes the key,
//!   and neither may an operator (see docs/ARBITER-ETCD.md).
//! * A compare-and-swap is one `Txn`: if `VERSION(key) == expected` then
//!   `Put(key, next)` else `Range(key)`, so a conflict answers with the
//!   current register in the same round trip. Creation is the same with
//!   expected version 0 (etcd compares a missing key's version as 0).
//! * A read is a linearizable `Range` (through the leader), so it never
//!   returns a register older than a swap that already succeeded.
//! * etcd answers a `Txn` only once the Raft log holds it on a quorum and
//!   it has been applied: a `Swapped` answer is durable.
//!
//! Of the witness's rules ([`Registers`](super::Registers)) this backend
//! keeps the two that guard against a confused caller: a swap never moves
//! the epoch back, and a create must list its caller among the members.
//! The create-time rules that rebuild a lost witness file from the nodes'
//! reports do not apply: etcd does not lose an acknowledged write.
//!
//! # Why no etcd client crate
//!
//! `etcd-client` compiles all of etcd's protos in its build script, which
//! needs `protoc` and the well-known `.proto` files from the system (apt's
//! `protobuf-compiler` + `libprotobuf-dev`). walrep's build must need
//! nothing from apt, so `proto/etcd/` holds the few messages of etcd's v3
//! API this module calls (KV `Range` and `Txn`), with etcd's names, field
//! numbers and enum values, and `build.rs` compiles them with the vendored
//! `protoc` beside walrep's own protos. The wire is etcd's v3 gRPC API as
//! every 3.x server speaks it; tested against etcd 3.4. There is no cargo
//! feature: the code is small and its dependencies (tonic, prost) are the
//! library's anyway.
//!
//! # Not supported
//!
//! TLS and user/password authentication to etcd: the endpoints are dialed
//! over plain HTTP/2, so etcd must accept unauthenticated clients on a
//! network only walrep's nodes reach.

#[cfg(test)]
mod tests;

use super::url::{ArbiterUrlError, parse_endpoints, scheme};
use super::{Arbiter, ArbiterError, Caller, CasOutcome, Register, SwapRefusal};
use super::{decode_register, encode_register};
use async_trait::async_trait;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

/// Generated client code for the subset of etcd's API in `proto/etcd`.
mod pb {
    #![allow(clippy::all, missing_docs, dead_code, unreachable_pub)]
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
}

use pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::etcdserverpb::kv_client::KvClient;
use pb::etcdserverpb::request_op::Request;
use pb::etcdserverpb::response_op::Response;
use pb::etcdserverpb::{Compare, PutRequest, RangeRequest, RangeResponse, RequestOp, TxnRequest};

/// One etcd client endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EtcdEndpoint {
    /// Host name or IP address (an IPv6 address without brackets).
    pub host: String,
    /// Client port (etcd's default is 2379).
    pub port: u16,
}

/// Where an [`EtcdArbiter`] keeps its registers, as
/// `etcd://HOST:PORT[,HOST:PORT...][/PREFIX/]` names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdTarget {
    /// The client endpoints of one etcd cluster, tried in turn.
    pub endpoints: Vec<EtcdEndpoint>,
    /// Prepended to `<cluster_id>/register`; starts and ends with `/`.
    pub prefix: String,
}

impl EtcdTarget {
    /// The key prefix when the URL gives none.
    pub const DEFAULT_PREFIX: &'static str = "/walrep/";

    /// Parses `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`. A path, when
    /// present and not just `/`, is the key prefix (a trailing `/` is
    /// added); IPv6 addresses go in brackets.
    pub fn parse(url: &str) -> Result<EtcdTarget, ArbiterUrlError> {
        let (scheme, rest) = scheme(url)?;
        if scheme != "etcd" {
            return Err(ArbiterUrlError::UnsupportedScheme {
                scheme: scheme.to_string(),
            });
        }
        let (list, path) = match rest.find('/') {
            Some(at) => rest.split_at(at),
            None => (rest, ""),
        };
        let endpoints = parse_endpoints(url, list)?;
        let prefix = match path.trim_end_matches('/') {
            "" => Self::DEFAULT_PREFIX.to_string(),
            path => format!("{path}/"),
        };
        Ok(EtcdTarget { endpoints, prefix })
    }

    /// The key that holds the register of `cluster_id`.
    pub fn key(&self, cluster_id: &str) -> String {
        format!("{}{cluster_id}/register", self.prefix)
    }
}

impl fmt::Display for EtcdTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<String> = self.endpoints.iter().map(|e| e.to_string()).collect();
        write!(f, "etcd://{}", list.join(","))?;
        if self.prefix != Self::DEFAULT_PREFIX {
            f.write_str(&self.prefix)?;
        }
        Ok(())
    }
}

impl std::str::FromStr for EtcdTarget {
    type Err = ArbiterUrlError;
    fn from_str(url: &str) -> Result<EtcdTarget, ArbiterUrlError> {
        EtcdTarget::parse(url)
    }
}

/// An [`Arbiter`] whose registers are keys of an etcd cluster (v3 API,
/// etcd 3.4 or later).
///
/// Every call has one deadline, [`timeout`](EtcdArbiter::with_timeout),
/// for all its attempts: it starts at the endpoint that answered last and
/// moves to the next on a transport error, a timeout or an etcd that says
/// it is unavailable (no leader, leader changed), each attempt getting a
/// share of the time left so one silent endpoint cannot use it all; it
/// goes round again until the deadline, then answers
/// [`ArbiterError::Unreachable`]. Any other error from etcd (a permission
/// error from an etcd with authentication on, say) is
/// [`ArbiterError::Invalid`].
pub struct EtcdArbiter {
    target: EtcdTarget,
    slots: Vec<Slot>,
    timeout: Duration,
    /// The endpoint that answered last: calls start there.
    preferred: AtomicUsize,
    /// The last register seen of each cluster, so a swap that expects it
    /// can check the epoch without a read first (a version names one
    /// register: the key is never deleted).
    seen: Mutex<HashMap<String, Register>>,
}

/// One endpoint's channel. A call that timed out replaces it with a fresh
/// one: a connection cut by a partition may otherwise hang until TCP gives
/// up, and HTTP/2 keepalive pings cannot find it out for us (etcd's server
/// closes connections that ping while idle or more often than every 5 s).
struct Slot {
    endpoint: Endpoint,
    channel: Mutex<Channel>,
}

impl Slot {
    fn client(&self) -> KvClient<Channel> {
        KvClient::new(self.channel.lock().expect("etcd channel lock").clone())
    }

    fn reconnect(&self) {
        *self.channel.lock().expect("etcd channel lock") = self.endpoint.connect_lazy();
    }
}

/// How one attempt failed.
enum Failure {
    /// Try another endpoint.
    Transport(String),
    /// etcd answered with an error retrying will not fix.
    Refused(tonic::Status),
}

impl EtcdArbiter {
    /// The default deadline of a call, all attempts included: the default
    /// `Config::rpc_timeout`, which cuts every arbiter call of a node. A
    /// longer deadline is never reached there: the node would cancel each
    /// call while its first endpoint's share runs, so a silent endpoint
    /// would be tried first forever. Give `connect_lazy` your
    /// `rpc_timeout` when you change it.
    pub const DEFAULT_TIMEOUT: Duration = crate::Config::DEFAULT_RPC_TIMEOUT;

    /// An arbiter over `target`, with a deadline of `timeout` per call.
    /// Connects lazily (at the first call, and again after a failure);
    /// must be called within a Tokio runtime.
    pub fn connect_lazy(target: EtcdTarget, timeout: Duration) -> EtcdArbiter {
        let slots = target
            .endpoints
            .iter()
            .map(|e| {
                // Validated by the parser: a host name, an IP address or a
                // bracketed IPv6 address, and a port.
                let endpoint = Endpoint::from_shared(format!("http://{e}"))
                    .expect("a parsed etcd endpoint is a valid URI")
                    .tcp_nodelay(true)
                    .connect_timeout(timeout);
                let channel = Mutex::new(endpoint.connect_lazy());
                Slot { endpoint, channel }
            })
            .collect();
        EtcdArbiter {
            target,
            slots,
            timeout,
            preferred: AtomicUsize::new(0),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The arbiter `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]` names, with
    /// the default deadline (see [`EtcdTarget::parse`]).
    pub fn from_url(url: &str) -> Result<EtcdArbiter, ArbiterUrlError> {
        Ok(EtcdArbiter::connect_lazy(
            EtcdTarget::parse(url)?,
            Self::DEFAULT_TIMEOUT,
        ))
    }

    /// The same arbiter with a deadline of `timeout` per call.
    pub fn with_timeout(mut self, timeout: Duration) -> EtcdArbiter {
        self.timeout = timeout;
        for slot in &mut self.slots {
            slot.endpoint = slot.endpoint.clone().connect_timeout(timeout);
            slot.reconnect();
        }
        self
    }

    /// Where it keeps the registers.
    pub fn target(&self) -> &EtcdTarget {
        &self.target
    }

    /// Runs `op` against the endpoints in turn until one answers or the
    /// deadline passes. Returns the answer and whether an earlier attempt
    /// failed (so a write may have been applied without an answer).
    async fn call<T, F, Fut>(&self, what: &str, mut op: F) -> Result<(T, bool), ArbiterError>
    where
        F: FnMut(KvClient<Channel>, Duration) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let deadline = Instant::now() + self.timeout;
        let n = self.slots.len();
        let start = self.preferred.load(Ordering::Relaxed) % n;
        let mut failures: Vec<String> = Vec::new();
        for attempt in 0.. {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if attempt > 0 && attempt % n == 0 {
                // Every endpoint failed once: pause before the next round
                // (an etcd electing a leader answers "unavailable" at once).
                tokio::time::sleep((deadline - now).min(Duration::from_millis(100))).await;
                if Instant::now() >= deadline {
                    break;
                }
            }
            let index = (start + attempt) % n;
            let slot = &self.slots[index];
            let left = deadline.saturating_duration_since(Instant::now());
            // This round's endpoints left share the time left.
            let share = left / (n - attempt % n) as u32;
            let outcome = match tokio::time::timeout(share, op(slot.client(), share)).await {
                Ok(Ok(answer)) => Ok(answer),
                Ok(Err(status)) if retryable(&status) => Err(Failure::Transport(format!(
                    "{:?}: {}",
                    status.code(),
                    status.message()
                ))),
                Ok(Err(status)) => Err(Failure::Refused(status)),
                Err(_) => {
                    slot.reconnect();
                    Err(Failure::Transport(format!("no answer within {share:?}")))
                }
            };
            let endpoint = &self.target.endpoints[index];
            match outcome {
                Ok(answer) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok((answer, attempt > 0));
                }
                Err(Failure::Transport(why)) => {
                    tracing::debug!(%endpoint, what, %why, "etcd attempt failed");
                    failures.push(format!("{endpoint}: {why}"));
                }
                Err(Failure::Refused(status)) => {
                    return Err(ArbiterError::Invalid(format!(
                        "etcd {endpoint} refused the {what}: {:?}: {}",
                        status.code(),
                        status.message()
                    )));
                }
            }
        }
        // The last attempt per endpoint says most.
        let mut last: Vec<&String> = failures.iter().rev().take(n).collect();
        last.reverse();
        Err(ArbiterError::Unreachable(format!(
            "etcd {what} got no answer within {:?} ({} attempts; {})",
            self.timeout,
            failures.len(),
            last.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        )))
    }

    /// The register of `cluster_id` as etcd holds it now.
    async fn fetch(&self, cluster_id: &str) -> Result<Register, ArbiterError> {
        let key = self.target.key(cluster_id);
        let request = RangeRequest {
            key: key.clone().into_bytes(),
            ..Default::default()
        };
        let (response, _) = self
            .call("read", |mut client, share| {
                let mut request = tonic::Request::new(request.clone());
                request.set_timeout(share);
                async move { client.range(request).await.map(|r| r.into_inner()) }
            })
            .await?;
        let register = register_of(&key, &response)?;
        self.remember(cluster_id, &register);
        Ok(register)
    }

    fn remember(&self, cluster_id: &str, register: &Register) {
        self.seen
            .lock()
            .expect("seen lock")
            .insert(cluster_id.to_string(), register.clone());
    }

    fn seen(&self, cluster_id: &str, version: u64) -> Option<Register> {
        let seen = self.seen.lock().expect("seen lock");
        seen.get(cluster_id)
            .filter(|r| r.version == version)
            .cloned()
    }
}

/// Status codes that say "this endpoint, now" rather than "this request":
/// transport failures, and etcd's own "no leader", "leader changed",
/// "request timed out" (all `Unavailable`) and "too many requests".
fn retryable(status: &tonic::Status) -> bool {
    use tonic::Code::*;
    matches!(
        status.code(),
        Unavailable | DeadlineExceeded | Cancelled | Unknown | Internal | ResourceExhausted
    )
}

/// The register a range over `key` found (version 0 when it found none).
fn register_of(key: &str, response: &RangeResponse) -> Result<Register, ArbiterError> {
    let Some(kv) = response.kvs.first() else {
        return Ok(Register::default());
    };
    let mut register = decode_register(&kv.value).map_err(|e| {
        ArbiterError::Invalid(format!(
            "etcd key {key} (version {}) does not hold a walrep register: {e}",
            kv.version
        ))
    })?;
    register.version = u64::try_from(kv.version)
        .map_err(|_| ArbiterError::Invalid(format!("etcd key {key} has version {}", kv.version)))?;
    Ok(register)
}

#[async_trait]
impl Arbiter for EtcdArbiter {
    async fn read(&self, cluster_id: &str, _caller: &Caller) -> Result<Register, ArbiterError> {
        self.fetch(cluster_id).await
    }

    async fn compare_and_swap(
        &self,
        cluster_id: &str,
        caller: &Caller,
        expected_version: u64,
        next: &Register,
    ) -> Result<CasOutcome, ArbiterError> {
        // The witness's guards against a confused caller, checked against
        // the register at `expected_version` (from the last answer when it
        // was at that version, else read now). The transaction below
        // compares that version, so the register checked is the one
        // replaced.
        let creating = expected_version == 0;
        let misnamed = creating && !next.members.contains(&caller.node_id);
        let backwards = |current: &Register| current.exists() && next.epoch < current.epoch;
        if misnamed || !creating {
            let current = match self.seen(cluster_id, expected_version) {
                Some(current) => current,
                None => self.fetch(cluster_id).await?,
            };
            if current.version != expected_version {
                return Ok(CasOutcome::Conflict(current));
            }
            if misnamed {
                return Err(ArbiterError::Refused(SwapRefusal::CallerNotMember {
                    caller: caller.node_id.clone(),
                }));
            }
            if backwards(&current) {
                return Err(ArbiterError::Refused(SwapRefusal::EpochGoesBack {
                    current: current.epoch,
                    proposed: next.epoch,
                }));
            }
        }

        let key = self.target.key(cluster_id);
        let expected = i64::try_from(expected_version).map_err(|_| {
            ArbiterError::Invalid(format!(
                "expected version {expected_version} is beyond etcd's versions"
            ))
        })?;
        let swapped = Register {
            version: expected_version + 1,
            ..next.clone()
        };
        let txn = TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Version as i32,
                key: key.clone().into_bytes(),
                target_union: Some(TargetUnion::Version(expected)),
            }],
            success: vec![RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: key.clone().into_bytes(),
                    value: encode_register(&swapped),
                    ..Default::default()
                })),
            }],
            failure: vec![RequestOp {
                request: Some(Request::RequestRange(RangeRequest {
                    key: key.clone().into_bytes(),
                    ..Default::default()
                })),
            }],
        };
        let (response, retried) = self
            .call("compare-and-swap", |mut client, share| {
                let mut request = tonic::Request::new(txn.clone());
                request.set_timeout(share);
                async move { client.txn(request).await.map(|r| r.into_inner()) }
            })
            .await?;
        if response.succeeded {
            self.remember(cluster_id, &swapped);
            return Ok(CasOutcome::Swapped(swapped));
        }
        let current = match response.responses.first().and_then(|r| r.response.as_ref()) {
            Some(Response::ResponseRange(range)) => register_of(&key, range)?,
            other => {
                return Err(ArbiterError::Invalid(format!(
                    "etcd answered a failed compare-and-swap of {key} without the key's range: {other:?}"
                )));
            }
        };
        self.remember(cluster_id, &current);
        // An earlier attempt may have been applied without an answer
        // reaching us (it timed out, or the connection broke): the register
        // is then exactly this swap's result, and the swap did take effect.
        // (No other caller proposes the same primary, epoch and sets.)
        if retried && current == swapped {
            return Ok(CasOutcome::Swapped(current));
        }
        Ok(CasOutcome::Conflict(current))
    }

    fn describe(&self) -> String {
        self.target.to_string()
    }
}

impl fmt::Debug for EtcdArbiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdArbiter")
            .field("target", &self.target.to_string())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}
