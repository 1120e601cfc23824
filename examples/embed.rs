//! The smallest engine that embeds walrep: a counter. Run two of them:
//!
//! ```sh
//! cargo run --example embed -- a 127.0.0.1:7101 127.0.0.1:7102 primary &
//! cargo run --example embed -- b 127.0.0.1:7102 127.0.0.1:7101 standby
//! ```

use bytes::Bytes;
use std::sync::{Arc, Mutex};
use walrep::{
    Config, FileWal, FileWalOptions, InitialRole, Lsn, NodeId, Replica, Replicator, StateMachine,
    StateMachineError,
};

/// The engine's state: a sum of the numbers it was told to add, and the
/// last LSN it applied. One lock holds both, so a snapshot (which may run
/// beside `apply`) sees a sum and the LSN it belongs to.
#[derive(Default)]
struct Counter {
    state: Mutex<State>,
}

#[derive(Default, Clone, Copy)]
struct State {
    sum: u64,
    applied: Lsn,
}

impl Counter {
    fn sum(&self) -> u64 {
        self.state.lock().unwrap().sum
    }
}

impl StateMachine for Counter {
    fn apply(&self, lsn: Lsn, payload: &[u8]) -> Result<(), StateMachineError> {
        let n: [u8; 8] = payload
            .try_into()
            .map_err(|_| StateMachineError::new(format!("record {lsn} is not a u64")))?;
        let mut state = self.state.lock().unwrap();
        state.sum += u64::from_le_bytes(n);
        state.applied = lsn;
        Ok(())
    }

    fn applied_lsn(&self) -> Lsn {
        self.state.lock().unwrap().applied
    }

    fn snapshot(&self, out: &mut dyn std::io::Write) -> Result<Lsn, StateMachineError> {
        let state = *self.state.lock().unwrap();
        out.write_all(&state.sum.to_le_bytes())
            .map_err(|e| StateMachineError::new(format!("writing the snapshot: {e}")))?;
        Ok(state.applied)
    }

    fn restore(&self, lsn: Lsn, input: &mut dyn std::io::Read) -> Result<(), StateMachineError> {
        let mut n = [0u8; 8];
        input
            .read_exact(&mut n)
            .map_err(|e| StateMachineError::new(format!("snapshot is not a u64: {e}")))?;
        *self.state.lock().unwrap() = State {
            sum: u64::from_le_bytes(n),
            applied: lsn,
        };
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [id, listen, peer, role] = &args[..] else {
        return Err("usage: embed ID LISTEN PEER primary|standby".into());
    };
    let cfg = Config {
        node_id: NodeId::from(id.as_str()),
        peer_id: NodeId::from(if id == "a" { "b" } else { "a" }),
        advertise_addr: listen.clone(),
        peer_addr: peer.clone(),
        initial_role: role.parse::<InitialRole>()?,
        ..Config::default()
    };
    let dir = std::env::temp_dir().join(format!("walrep-embed-{id}"));
    let wal = Arc::new(FileWal::open(&dir, FileWalOptions::default())?);
    let counter = Arc::new(Counter::default());
    // Binds `listen` and serves the peer on a task the replica owns.
    let replica = Replica::builder(cfg, wal, counter.clone())
        .listen(listen)
        .start()?;

    loop {
        match replica
            .apply(Bytes::copy_from_slice(&1u64.to_le_bytes()))
            .await
        {
            Ok(at) => println!("sum = {} at {:?}", counter.sum(), at),
            Err(e) => println!("{e}"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}
