//! The built-in witness as a third turmoil host: its service added to a
//! plain tonic server on the simulated network, nodes' `WitnessClient`s
//! over simulated channels. A node cut off from the witness gets
//! `Unreachable` within its deadline while the other swaps; once the link
//! is repaired its calls get through again as soon as the HTTP/2 keepalive
//! has replaced the cut connection, and its stale swap is a conflict that
//! shows it the other's register.

use crate::net;
use std::time::Duration;
use walrep::arbiter::{
    Arbiter, ArbiterError, Caller, CasOutcome, Register, WitnessClient, WitnessService,
};
use walrep::{Config, Epoch};

const PORT: u16 = 7010;

fn caller(node: &str, epoch: u64) -> Caller {
    Caller::new(node, Epoch(epoch))
}

fn pair(epoch: u64, primary: &str) -> Register {
    Register::fresh(Epoch(epoch), &primary.into(), &["n1".into(), "n2".into()])
}

fn client() -> WitnessClient {
    let cfg = Config {
        rpc_timeout: Duration::from_millis(500),
        heartbeat_interval: Duration::from_millis(200),
        failover_timeout: Duration::from_secs(1),
        ..Config::default()
    };
    let channel = net::channel("witness", PORT, &cfg);
    WitnessClient::from_channel(channel, &format!("witness:{PORT}"), cfg.rpc_timeout)
}

#[test]
fn a_node_cut_off_from_the_witness_is_unreachable_then_sees_the_others_swap() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let mut sim = turmoil::Builder::new()
        .rng_seed(7)
        .simulation_duration(Duration::from_secs(60))
        .build();
    sim.host("witness", move || {
        let data = data.clone();
        async move {
            let service = WitnessService::open(&data)?;
            let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
            tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(Duration::from_millis(500)))
                .http2_keepalive_timeout(Some(Duration::from_secs(1)))
                .serve_with_incoming(service.into_server(), net::incoming(listener))
                .await?;
            Ok(())
        }
    });
    // n2 has reported, n1 is cut off, n2 has promoted: each step waits
    // for the one before.
    let (step_tx, step_rx) = tokio::sync::watch::channel(0u8);
    let (n1_step, n2_step) = (step_tx.clone(), step_tx);
    let (mut n1_sees, mut n2_sees) = (step_rx.clone(), step_rx);
    sim.client("n2", async move {
        let n2 = client();
        n2.read("c", &caller("n2", 1)).await?;
        n2_step.send(1)?;
        n2_sees.wait_for(|s| *s == 2).await?;
        let current = n2.read("c", &caller("n2", 1)).await?;
        let promoted = n2
            .compare_and_swap("c", &caller("n2", 1), current.version, &pair(2, "n2"))
            .await?;
        assert!(
            matches!(promoted, CasOutcome::Swapped(ref r) if r.epoch == Epoch(2)),
            "{promoted:?}"
        );
        n2_step.send(3)?;
        Ok(())
    });
    sim.client("n1", async move {
        let n1 = client();
        // n1 creates the register once n2 has reported.
        n1_sees.wait_for(|s| *s == 1).await?;
        let CasOutcome::Swapped(created) = n1
            .compare_and_swap("c", &caller("n1", 1), 0, &pair(1, "n1"))
            .await?
        else {
            panic!("not created")
        };
        turmoil::partition("n1", "witness");
        n1_step.send(2)?;
        let started = tokio::time::Instant::now();
        let err = n1.read("c", &caller("n1", 1)).await.unwrap_err();
        assert!(matches!(err, ArbiterError::Unreachable(_)), "{err:?}");
        assert!(
            started.elapsed() <= Duration::from_millis(600),
            "{:?}",
            started.elapsed()
        );
        n1_sees.wait_for(|s| *s == 3).await?;
        turmoil::repair("n1", "witness");
        // Its swap at the version it last saw: a conflict naming n2. The
        // connection the partition cut may still look open until its
        // keepalive gives up (failover_timeout): calls until then may be
        // Unreachable, none may hang, and one after it gets through.
        let repaired = tokio::time::Instant::now();
        let mut solo = created.clone();
        solo.sync_set.clear();
        let outcome = loop {
            match n1
                .compare_and_swap("c", &caller("n1", 1), created.version, &solo)
                .await
            {
                Err(ArbiterError::Unreachable(_))
                    if repaired.elapsed() < Duration::from_millis(1500) => {}
                other => break other,
            }
        };
        match outcome? {
            CasOutcome::Conflict(r) => {
                assert_eq!((r.epoch, r.primary), (Epoch(2), Some("n2".into())));
            }
            other => panic!("after the repair: {other:?}"),
        }
        Ok(())
    });
    sim.run().unwrap();
}
