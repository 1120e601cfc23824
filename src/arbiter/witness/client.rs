//! The node's side: [`Arbiter`] over the witness's gRPC service.
//!
//! Every call has a deadline (`Config::rpc_timeout`) and the channel the
//! HTTP/2 keepalive of [`channel_settings`], so a witness behind a
//! partition is noticed instead of hanging the connection. Errors map to
//! what the role logic needs: no answer (connection refused or cut, a
//! timeout, a witness that could not write) is `Unreachable`: the register
//! may or may not have changed (a refused TLS handshake looks the same
//! from here: the witness counts and logs it); `FAILED_PRECONDITION` is `Refused` with
//! the witness's [`SwapRefusal`]; anything else (a refused identity, a
//! malformed request or reply) is `Invalid`.

use crate::arbiter::wire::refusal_from_pb;
use crate::arbiter::{Arbiter, ArbiterError, Caller, CasOutcome, Register};
use crate::pb;
use crate::pb::witness_client::WitnessClient as PbClient;
use crate::transport::channel_settings;
use async_trait::async_trait;
use std::fmt;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// A witness as a node's [`Arbiter`]. Cheap to clone.
#[derive(Clone)]
pub struct WitnessClient {
    client: PbClient<Channel>,
    addr: String,
    rpc_timeout: Duration,
}

impl fmt::Debug for WitnessClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WitnessClient")
            .field("addr", &self.addr)
            .field("rpc_timeout", &self.rpc_timeout)
            .finish()
    }
}

/// `HOST:PORT` of a witness address given as `HOST:PORT` or
/// `witness://HOST:PORT`.
pub fn witness_host_port(addr: &str) -> Result<String, crate::Error> {
    let url = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("witness://{addr}")
    };
    match crate::arbiter::ArbiterUrl::parse(&url) {
        Ok(crate::arbiter::ArbiterUrl::Witness(endpoint)) => Ok(endpoint.to_string()),
        Ok(_) => Err(crate::Error::InvalidInput(format!(
            "witness address {addr:?} is not HOST:PORT or witness://HOST:PORT"
        ))),
        Err(e) => Err(crate::Error::InvalidInput(format!(
            "witness address {addr:?} is not HOST:PORT or witness://HOST:PORT: {e}"
        ))),
    }
}

fn endpoint(host_port: &str, cfg: &crate::Config) -> Result<Endpoint, crate::Error> {
    let endpoint = Endpoint::from_shared(format!("http://{host_port}"))
        .map_err(|e| crate::Error::InvalidInput(format!("witness address {host_port:?}: {e}")))?;
    Ok(channel_settings(endpoint, cfg))
}

impl WitnessClient {
    /// Dials the witness at `addr` (`HOST:PORT` or `witness://HOST:PORT`)
    /// lazily, in clear text, with `cfg`'s deadlines and keepalive.
    pub fn connect_lazy(addr: &str, cfg: &crate::Config) -> Result<WitnessClient, crate::Error> {
        let host_port = witness_host_port(addr)?;
        let channel = endpoint(&host_port, cfg)?.connect_lazy();
        Ok(WitnessClient::from_channel(
            channel,
            &host_port,
            cfg.rpc_timeout,
        ))
    }

    /// As `connect_lazy`, over mutual TLS: this node presents its own
    /// certificate (`tls`, reloaded with it) and requires the witness's to
    /// chain to the same CA and to name
    /// [`WITNESS_NAME`](crate::arbiter::WITNESS_NAME), whatever address it
    /// is reached at.
    #[cfg(feature = "tls")]
    pub fn connect_lazy_tls(
        addr: &str,
        cfg: &crate::Config,
        tls: &crate::Tls,
    ) -> Result<WitnessClient, crate::Error> {
        use crate::transport::tls::{ClientIdentity, TlsConnector};
        let server =
            tokio_rustls::rustls::pki_types::ServerName::try_from(crate::transport::WITNESS_NAME)
                .expect("a DNS name");
        let connector = TlsConnector {
            identity: ClientIdentity::NodeTo {
                tls: tls.clone(),
                server,
            },
            timeout: cfg.rpc_timeout,
        };
        WitnessClient::connect_with(addr, cfg, connector)
    }

    /// Dials with `connector` (a fixed TLS identity in tests).
    #[cfg(feature = "tls")]
    pub(crate) fn connect_with(
        addr: &str,
        cfg: &crate::Config,
        connector: crate::transport::tls::TlsConnector,
    ) -> Result<WitnessClient, crate::Error> {
        let host_port = witness_host_port(addr)?;
        let channel = endpoint(&host_port, cfg)?.connect_with_connector_lazy(connector);
        Ok(WitnessClient::from_channel(
            channel,
            &host_port,
            cfg.rpc_timeout,
        ))
    }

    /// Uses a channel made by the caller (a simulated network, a proxy):
    /// make it from an endpoint passed through `channel_settings`. `addr`
    /// names the witness in `describe`; each call waits at most
    /// `rpc_timeout`.
    pub fn from_channel(channel: Channel, addr: &str, rpc_timeout: Duration) -> WitnessClient {
        WitnessClient {
            client: PbClient::new(channel)
                .max_decoding_message_size(super::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(super::MAX_MESSAGE_BYTES),
            addr: addr.to_string(),
            rpc_timeout,
        }
    }

    async fn call<T, F>(&self, fut: F) -> Result<T, ArbiterError>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        match tokio::time::timeout(self.rpc_timeout, fut).await {
            Err(_) => Err(ArbiterError::Unreachable(format!(
                "{} did not answer within {:?}",
                self.describe(),
                self.rpc_timeout
            ))),
            Ok(Err(status)) => Err(self.error(status)),
            Ok(Ok(r)) => Ok(r.into_inner()),
        }
    }

    fn error(&self, status: tonic::Status) -> ArbiterError {
        use tonic::Code;
        let at = self.describe();
        match status.code() {
            // Unknown and Internal: tonic's codes for a connection that
            // broke under the call (a TLS alert, an HTTP/2 reset or
            // GOAWAY); the witness never answers either. The swap may have
            // landed: an unknown outcome, never a refusal.
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Aborted
            | Code::Unknown
            | Code::Internal => ArbiterError::Unreachable(format!("{at}: {}", status.message())),
            Code::FailedPrecondition => {
                let refusal = <pb::SwapRefused as prost::Message>::decode(status.details())
                    .ok()
                    .and_then(refusal_from_pb);
                match refusal {
                    Some(r) => ArbiterError::Refused(r),
                    None => ArbiterError::Invalid(format!(
                        "{at} refused the swap without a reason this node knows: {}",
                        status.message()
                    )),
                }
            }
            code => ArbiterError::Invalid(format!("{at}: {code:?}: {}", status.message())),
        }
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(self.rpc_timeout);
        r
    }
}

fn register(r: Option<pb::ArbiterRegister>, at: &str) -> Result<Register, ArbiterError> {
    r.map(Register::from)
        .ok_or_else(|| ArbiterError::Invalid(format!("{at} answered without a register")))
}

#[async_trait]
impl Arbiter for WitnessClient {
    async fn read(&self, cluster_id: &str, caller: &Caller) -> Result<Register, ArbiterError> {
        let msg = pb::ReadRegisterRequest {
            cluster_id: cluster_id.to_string(),
            caller: Some(pb::ArbiterCaller::from(caller)),
        };
        let mut client = self.client.clone();
        let reply = self.call(client.read(self.request(msg))).await?;
        register(reply.register, &self.describe())
    }

    async fn compare_and_swap(
        &self,
        cluster_id: &str,
        caller: &Caller,
        expected_version: u64,
        next: &Register,
    ) -> Result<CasOutcome, ArbiterError> {
        let msg = pb::CompareAndSwapRequest {
            cluster_id: cluster_id.to_string(),
            caller: Some(pb::ArbiterCaller::from(caller)),
            expected_version,
            next: Some(pb::ArbiterRegister::from(next)),
        };
        let mut client = self.client.clone();
        let reply = self
            .call(client.compare_and_swap(self.request(msg)))
            .await?;
        let at = self.describe();
        let register = register(reply.register, &at)?;
        if reply.swapped {
            // A create (from version 0) of a register the witness lost and
            // rebuilt continues above every version a member reported
            // seeing, so it lands above the caller's, not at 1.
            let fits = if expected_version == 0 {
                register.version > caller.seen_version
            } else {
                register.version == expected_version.wrapping_add(1)
            };
            if !fits {
                // It says the swap was made, yet not the one asked for: the
                // outcome is unknown, so the node keeps counting on a swap
                // that may have landed rather than forgetting it.
                return Err(ArbiterError::Unreachable(format!(
                    "{at} answered a swap at version {expected_version} with a register at version {}; the swap's outcome is unknown",
                    register.version
                )));
            }
            Ok(CasOutcome::Swapped(register))
        } else {
            Ok(CasOutcome::Conflict(register))
        }
    }

    fn describe(&self) -> String {
        format!("witness://{}", self.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection broken under a call (tonic says Unknown or Internal
    /// for a reset or a GOAWAY) leaves the swap's outcome unknown: it is
    /// `Unreachable`, which the node treats as "may have landed", never a
    /// refusal.
    #[tokio::test]
    async fn a_call_broken_under_it_is_unreachable_not_a_refusal() {
        let client = WitnessClient::connect_lazy("127.0.0.1:9", &crate::Config::default()).unwrap();
        for code in [tonic::Code::Unknown, tonic::Code::Internal] {
            let err = client.error(tonic::Status::new(code, "h2 protocol error: stream reset"));
            assert!(
                matches!(err, ArbiterError::Unreachable(_)),
                "{code:?}: {err:?}"
            );
        }
        let err = client.error(tonic::Status::permission_denied("not a member"));
        assert!(matches!(err, ArbiterError::Invalid(_)), "{err:?}");
    }

    #[test]
    fn a_witness_address_is_host_port_with_or_without_its_scheme() {
        assert_eq!(witness_host_port("w:7010").unwrap(), "w:7010");
        assert_eq!(
            witness_host_port("witness://10.0.0.3:7010/").unwrap(),
            "10.0.0.3:7010"
        );
        assert_eq!(witness_host_port("[::1]:7010").unwrap(), "[::1]:7010");
        for bad in ["w", ":7010", "http://w:7010", "w:port", "witness://w"] {
            assert!(witness_host_port(bad).is_err(), "{bad}");
        }
    }
}
