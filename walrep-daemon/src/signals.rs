//! SIGTERM and SIGINT: the requests to stop (and SIGHUP, which must not
//! stop anything). Watched from the moment
//! `StopSignals::install` returns, so one that arrives while a node is
//! still starting (opening a large WAL takes seconds) is kept and acted on
//! once it has started, instead of killing the process as an unhandled
//! signal would (or being ignored outright: in a container the binary is
//! PID 1, which gets no default signal handling, so `docker stop` would
//! wait and then kill).

use tracing::{info, warn};

/// The stop signals, watched since `install`; SIGHUP too, so that from
/// then on it never ends the process (its default action) while the node
/// starts; once started, the node rereads its TLS files on it
/// (`node::reload_on_sighup`).
pub struct StopSignals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
    _hangup: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    /// Starts watching SIGTERM and SIGINT now. Needs a Tokio runtime.
    pub fn install() -> StopSignals {
        use tokio::signal::unix::{SignalKind, signal};
        let watch = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, "cannot watch {name}; it stops the process as the OS decides");
                None
            }
        };
        StopSignals {
            term: watch(SignalKind::terminate(), "SIGTERM"),
            int: watch(SignalKind::interrupt(), "SIGINT"),
            _hangup: watch(SignalKind::hangup(), "SIGHUP"),
        }
    }

    /// Waits for the next stop signal (one that came since `install` and
    /// was not taken yet counts) and names it. Never returns if neither
    /// could be watched.
    pub async fn next(&mut self) -> &'static str {
        async fn on(s: &mut Option<tokio::signal::unix::Signal>) {
            let received = match s {
                Some(s) => s.recv().await.is_some(),
                None => false,
            };
            if !received {
                std::future::pending::<()>().await;
            }
        }
        tokio::select! {
            _ = on(&mut self.term) => "SIGTERM",
            _ = on(&mut self.int) => "SIGINT",
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT after this call (the handlers
/// are installed before it returns, not when the future is first polled).
pub fn first_stop_signal() -> impl Future<Output = ()> {
    let mut signals = StopSignals::install();
    async move {
        let name = signals.next().await;
        info!("{name} received");
    }
}
