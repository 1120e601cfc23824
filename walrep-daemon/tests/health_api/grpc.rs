//! gRPC health checking (`grpc.health.v1`) on the replication port, asked
//! with tonic-health's own client, as Kubernetes' gRPC probe asks it.

use crate::daemon_support::*;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use walrep_daemon::client::HttpClient;
use walrep_daemon::pair::{Pair as ProcessPair, PairPorts};

async fn client(port: u16) -> HealthClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connecting to 127.0.0.1:{port}: {e}"));
    HealthClient::new(channel)
}

async fn check(c: &mut HealthClient<tonic::transport::Channel>, service: &str) -> ServingStatus {
    let reply = c
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("Check({service:?}): {e}"));
    ServingStatus::try_from(reply.into_inner().status).unwrap()
}

/// Follows `service` with the `Watch` RPC until it reports `want`;
/// panics after `WAIT`.
async fn wait_status(
    c: &mut HealthClient<tonic::transport::Channel>,
    service: &str,
    want: ServingStatus,
) {
    let mut updates = c
        .watch(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("Watch({service:?}): {e}"))
        .into_inner();
    let seen = tokio::time::timeout(WAIT, async {
        while let Some(update) = updates.message().await.unwrap() {
            if ServingStatus::try_from(update.status) == Ok(want) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(seen, Ok(true), "{service:?} did not become {want:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_serves_by_role_on_the_replication_port() {
    let dir = tempfile::tempdir().unwrap();
    let ports = PairPorts::free().unwrap();
    let mut p = ProcessPair::on_ports(dir.path(), &test_options(&[]), &ports).unwrap();
    p.n1.spawn().unwrap();
    p.n2.spawn().unwrap();
    wait_streaming(&p.n1.http, &p.n2.http).await;
    let (mut c1, mut c2) = (client(ports.grpc[0]).await, client(ports.grpc[1]).await);
    for c in [&mut c1, &mut c2] {
        for service in ["", walrep::REPLICATION_SERVICE, walrep::LIVENESS_SERVICE] {
            assert_eq!(
                check(c, service).await,
                ServingStatus::Serving,
                "{service:?}"
            );
        }
        let unknown = c
            .check(HealthCheckRequest {
                service: "no.such.Service".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::NotFound);
    }
    // Replication still works beside it on the same port.
    HttpClient::new(&p.n1.http)
        .put("k", "v".into())
        .await
        .unwrap();
    wait_health(&p.n2.http, "replicated", |h| h.applied_lsn == 1).await;

    // A standby cut off from its primary (held back by maintenance, so it
    // stays one) is not ready, and alive.
    let mut n2 = HttpClient::new(&p.n2.http);
    n2.set_maintenance(true).await.unwrap();
    p.n1.kill();
    wait_status(&mut c2, "", ServingStatus::NotServing).await;
    assert_eq!(
        check(&mut c2, walrep::REPLICATION_SERVICE).await,
        ServingStatus::NotServing
    );
    assert_eq!(
        check(&mut c2, walrep::LIVENESS_SERVICE).await,
        ServingStatus::Serving
    );
    // Resumed, it takes over and serves again.
    n2.set_maintenance(false).await.unwrap();
    wait_health(&p.n2.http, "promoted", is_writable_primary).await;
    wait_status(&mut c2, "", ServingStatus::Serving).await;
    assert_eq!(
        check(&mut c2, walrep::REPLICATION_SERVICE).await,
        ServingStatus::Serving
    );
}
