//! A TCP proxy the test controls, placed on a peer link: it passes bytes,
//! blackholes them (connections stay open, nothing flows, as when a network
//! drops packets), or resets every connection.

use std::net::SocketAddr;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkMode {
    Pass,
    Blackhole,
    Reset,
}

pub struct Proxy {
    pub addr: SocketAddr,
    mode: watch::Sender<LinkMode>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, _) = watch::channel(LinkMode::Pass);
        let modes = mode.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let rx = modes.subscribe();
                tokio::spawn(forward(client, target, rx));
            }
        });
        Proxy { addr, mode, task }
    }

    pub fn set(&self, mode: LinkMode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Closes a connection with a reset (RST), not an orderly FIN.
fn reset(stream: TcpStream) {
    // With a zero linger time close(2) sends the RST at once and does not
    // block, which is what the deprecation warns about.
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(std::time::Duration::ZERO));
    drop(stream);
}

async fn forward(mut client: TcpStream, target: SocketAddr, mut mode: watch::Receiver<LinkMode>) {
    let current = *mode.borrow_and_update();
    match current {
        LinkMode::Reset => return reset(client),
        LinkMode::Blackhole => {
            // Hold the connection without a byte either way until the
            // link heals, then drop it as a timed-out connection would be.
            let _ = mode.wait_for(|m| *m != LinkMode::Blackhole).await;
            return;
        }
        LinkMode::Pass => {}
    }
    let mut server = match TcpStream::connect(target).await {
        // A dial of a local port nobody listens on can get that port as its
        // own source and connect to itself: that is no server.
        Ok(s) if s.local_addr().ok() != s.peer_addr().ok() => s,
        Ok(s) => {
            reset(s);
            return reset(client);
        }
        Err(_) => return reset(client),
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let changed = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => None,
        m = mode.wait_for(|m| *m != LinkMode::Pass) => m.ok().map(|m| *m),
    };
    match changed {
        Some(LinkMode::Reset) => {
            reset(client);
            reset(server);
        }
        Some(LinkMode::Blackhole) => {
            // Stop forwarding but keep both sockets open until healed.
            let _ = mode.wait_for(|m| *m != LinkMode::Blackhole).await;
            let _ = client.shutdown().await;
            let _ = server.shutdown().await;
        }
        _ => {
            let _ = client.shutdown().await;
            let _ = server.shutdown().await;
        }
    }
}
