//! `grpc.health.v1` on the replication port: what Kubernetes' gRPC probes
//! and `grpc_health_probe` ask. The statuses follow the node's `Health`:
//!
//! | service name | `SERVING` while the node is | `NOT_SERVING` |
//! |---|---|---|
//! | `""` (the server) and `walrep.v1.Replication` | a primary, or a standby receiving the WAL stream | promoting, fenced, rejoining, failed, a standby cut off from its primary |
//! | `liveness` | anything but failed | failed |
//!
//! So a readiness probe names no service (or `walrep.v1.Replication`) and
//! a liveness probe names `liveness`: a standby whose primary died, or
//! one held back by maintenance mode, is not ready but is alive, and must
//! not be restarted. Once the node has stopped, every name is
//! `NOT_SERVING` until the server closes.

use crate::node::RoleKind;
use crate::pb::replication_server::ReplicationServer;
use crate::replicator::Health;
use crate::transport::ReplicationService;
use tokio::sync::watch;
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

/// The service name of walrep's replication service.
pub const REPLICATION_SERVICE: &str = <ReplicationServer<ReplicationService> as NamedService>::NAME;

/// The service name a liveness probe asks for.
pub const LIVENESS_SERVICE: &str = "liveness";

fn status(serving: bool) -> ServingStatus {
    if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

/// Whether the node does its part of the replication now.
fn ready(h: &Health) -> bool {
    match h.role {
        RoleKind::Primary => true,
        RoleKind::Standby => h.peer.connected,
        _ => false,
    }
}

/// Whether the node can still do it without a restart: a standby that
/// tries its WAL again after a full disk can.
fn alive(h: &Health) -> bool {
    h.role != RoleKind::Failed || h.retrying_wal
}

/// The `grpc.health.v1.Health` service of the node whose health `rx`
/// follows, kept up to date by a task that ends when the node stops.
pub(crate) fn service(mut rx: watch::Receiver<Health>) -> HealthServer<HealthService> {
    let reporter = HealthReporter::new();
    let server = HealthServer::new(HealthService::from_health_reporter(reporter.clone()));
    tokio::spawn(async move {
        loop {
            let (ready, alive) = {
                let h = rx.borrow_and_update();
                (ready(&h), alive(&h))
            };
            report(&reporter, status(ready), status(alive)).await;
            if rx.changed().await.is_err() {
                break;
            }
        }
        let stopped = ServingStatus::NotServing;
        report(&reporter, stopped, stopped).await;
    });
    server
}

async fn report(reporter: &HealthReporter, ready: ServingStatus, alive: ServingStatus) {
    reporter.set_service_status("", ready).await;
    reporter
        .set_service_status(REPLICATION_SERVICE, ready)
        .await;
    reporter.set_service_status(LIVENESS_SERVICE, alive).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_on_a_primary_or_a_streaming_standby_alive_unless_failed_for_good() {
        let mut h = crate::runtime::actor::placeholder_health(&crate::Config::default());
        let cases = [
            (RoleKind::Primary, false, true, true),
            (RoleKind::Standby, true, true, true),
            (RoleKind::Standby, false, false, true),
            (RoleKind::Promoting, false, false, true),
            (RoleKind::Fenced, false, false, true),
            (RoleKind::Rejoining, true, false, true),
            (RoleKind::Failed, false, false, false),
        ];
        for (role, connected, want_ready, want_alive) in cases {
            h.role = role;
            h.peer.connected = connected;
            assert_eq!(
                (ready(&h), alive(&h)),
                (want_ready, want_alive),
                "{role} connected={connected}"
            );
        }
        // A standby retrying its WAL after a full disk needs no restart.
        h.role = RoleKind::Failed;
        h.retrying_wal = true;
        assert_eq!((ready(&h), alive(&h)), (false, true));
        assert_eq!(REPLICATION_SERVICE, "walrep.v1.Replication");
    }
}

/// The replication service with the health service beside it on one
/// server: requests for `grpc.health.v1.Health` go to `health`, the rest
/// to `replication` (tonic's router would bring axum into the library).
#[derive(Clone)]
pub(crate) struct WithHealth<R> {
    pub(crate) replication: R,
    pub(crate) health: Option<HealthServer<HealthService>>,
}

/// The path prefix of the health service's methods.
const HEALTH_PATH: &str = "/grpc.health.v1.Health/";

type Request = tonic::codegen::http::Request<tonic::body::Body>;
type Response = tonic::codegen::http::Response<tonic::body::Body>;

impl<R> tonic::codegen::Service<Request> for WithHealth<R>
where
    R: tonic::codegen::Service<Request, Response = Response, Error = std::convert::Infallible>,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = futures::future::Either<
        R::Future,
        <HealthServer<HealthService> as tonic::codegen::Service<Request>>::Future,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        // Both are tonic's generated servers, always ready; ask anyway.
        if let Some(health) = &mut self.health {
            std::task::ready!(tonic::codegen::Service::<Request>::poll_ready(health, cx))?;
        }
        self.replication.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        match &mut self.health {
            Some(health) if req.uri().path().starts_with(HEALTH_PATH) => {
                futures::future::Either::Right(tonic::codegen::Service::<Request>::call(
                    health, req,
                ))
            }
            _ => futures::future::Either::Left(self.replication.call(req)),
        }
    }
}
