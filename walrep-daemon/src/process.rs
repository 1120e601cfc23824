//! One `walrep node` as a child process: what the demo, the benchmarks and
//! the daemon's tests start, crash, pause and wait on. The child is killed
//! on every way out (`Drop`), errors and panics included.

use super::api::HealthReport;
use super::client::HttpClient;
use super::error::DaemonError;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A node's settings by name (`heartbeat_ms`, `data_dir`, ...), as flags.
pub type Flags = Vec<(&'static str, String)>;

/// `flags` with each of `extra` replacing the setting of its name, or
/// added.
pub fn with(mut flags: Flags, extra: &[(&'static str, String)]) -> Flags {
    for (key, value) in extra {
        flags.retain(|(k, _)| k != key);
        flags.push((key, value.clone()));
    }
    flags
}

/// The command line of `walrep node` with `flags`.
pub fn node_args(flags: &[(&'static str, String)]) -> Vec<String> {
    let mut args = vec!["node".to_string()];
    for (key, value) in flags {
        // A switch, not a flag with a value.
        if *key == "auto_failover" {
            if value == "false" {
                args.push(super::config::flag_name(key));
            }
            continue;
        }
        args.push(super::config::flag_name(key));
        args.push(value.clone());
    }
    args
}

/// How node processes are launched.
#[derive(Clone, Debug, Default)]
pub struct Launch {
    /// The `walrep` binary; `None` is this process's own executable (the
    /// binary's `demo` and `bench-*` commands run their own nodes).
    pub binary: Option<PathBuf>,
    /// Set in the child's environment. Every other `WALREP_` variable but
    /// `WALREP_LOG` is removed: the flags say everything.
    pub env: Vec<(String, String)>,
}

/// One node as a child process, not running until [`NodeProc::spawn`].
pub struct NodeProc {
    pub name: String,
    pub args: Vec<String>,
    /// Its HTTP address (the `http` setting).
    pub http: String,
    pub data_dir: PathBuf,
    /// Its stdout and stderr, appended to across restarts.
    pub log: PathBuf,
    launch: Launch,
    child: Option<Child>,
}

impl NodeProc {
    /// `walrep node` with `flags` (which must set `http` and `data_dir`),
    /// logging to `log_dir/<name>.log`.
    pub fn new(
        name: &str,
        flags: &[(&'static str, String)],
        log_dir: &Path,
        launch: &Launch,
    ) -> NodeProc {
        let setting = |key: &str| {
            flags
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("node {name} has no {key} setting"))
        };
        NodeProc {
            name: name.into(),
            args: node_args(flags),
            http: setting("http"),
            data_dir: PathBuf::from(setting("data_dir")),
            log: log_dir.join(format!("{name}.log")),
            launch: launch.clone(),
            child: None,
        }
    }

    /// `walrep witness` with `flags` (which must set `http` and
    /// `data_dir`), logging to `log_dir/<name>.log`.
    pub fn witness(
        name: &str,
        flags: &[(&'static str, String)],
        log_dir: &Path,
        launch: &Launch,
    ) -> NodeProc {
        let mut proc = NodeProc::new(name, flags, log_dir, launch);
        proc.args[0] = "witness".into();
        proc
    }

    /// The value this process was given for the setting `key`, if any.
    pub fn flag(&self, key: &str) -> Option<&str> {
        let flag = super::config::flag_name(key);
        self.args
            .windows(2)
            .find(|w| w[0] == flag)
            .map(|w| w[1].as_str())
    }

    /// Starts the process (again, after a kill); an error if it runs.
    pub fn spawn(&mut self) -> Result<(), DaemonError> {
        if self.child.is_some() {
            return Err(DaemonError::Failed(format!("{} is running", self.name)));
        }
        let exe = match &self.launch.binary {
            Some(b) => b.clone(),
            None => std::env::current_exe()
                .map_err(|e| DaemonError::io("finding the walrep binary", e))?,
        };
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| DaemonError::io(format!("opening {}", self.log.display()), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| DaemonError::io("cloning the log handle", e))?;
        let mut cmd = std::process::Command::new(exe);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        for (k, _) in std::env::vars_os() {
            if let Some(k) = k.to_str()
                && k.starts_with("WALREP_")
                && k != "WALREP_LOG"
            {
                cmd.env_remove(k);
            }
        }
        cmd.envs(self.launch.env.iter().map(|(k, v)| (k, v)));
        let child = cmd
            .spawn()
            .map_err(|e| DaemonError::io(format!("starting {}", self.name), e))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Sends `sig` (SIGSTOP, SIGCONT, SIGTERM...) to the running process.
    pub fn signal(&self, sig: libc::c_int) -> std::io::Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| std::io::Error::other(format!("{} is not running", self.name)))?;
        // SAFETY: kill(2) on our own child's pid; it is not yet reaped, so
        // the pid cannot belong to another process.
        if unsafe { libc::kill(pid as libc::pid_t, sig) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// SIGKILL, as a crash (std's `Child::kill` sends SIGKILL; a stopped
    /// process dies of it too).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then SIGKILL if the node has not stopped within `grace`.
    pub fn terminate(&mut self, grace: Duration) {
        if self.signal(libc::SIGTERM).is_ok() {
            let _ = self.wait_exit(grace);
        }
        self.kill();
    }

    /// Waits for the process to exit by itself, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Result<ExitStatus, DaemonError> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline || self.child.is_none() {
                return Err(DaemonError::Failed(format!(
                    "{} did not exit within {limit:?}",
                    self.name
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The exit status, once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Polls the node's /health until `pred` holds; an error if `limit`
    /// passes first or the process exits meanwhile.
    pub async fn wait_for(
        &mut self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&HealthReport) -> bool,
    ) -> Result<HealthReport, DaemonError> {
        let (name, http, log) = (self.name.clone(), self.http.clone(), self.log.clone());
        poll_health(&http, &format!("{name} {what}"), limit, pred, || {
            self.exited()
                .map(|status| format!("{name} exited ({status}); see {}", log.display()))
        })
        .await
    }

    pub fn client(&self) -> HttpClient {
        HttpClient::new(&self.http).with_timeout(Duration::from_secs(10))
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Peak resident memory of the running process (VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    }
}

impl Drop for NodeProc {
    /// Kills the child, continuing it first in case it was stopped; when
    /// the thread is panicking (a failed test), prints the end of its log.
    fn drop(&mut self) {
        let _ = self.signal(libc::SIGCONT);
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- last lines of {} ({}):\n{}",
                self.name,
                self.log.display(),
                self.log_tail(40)
            );
        }
    }
}

/// Polls `addr`'s /health every 10 ms until `pred` holds. An error naming
/// `what` and the last answer if `limit` passes first, or as soon as
/// `gone` gives a reason why waiting is pointless (the process exited).
pub async fn poll_health(
    addr: &str,
    what: &str,
    limit: Duration,
    pred: impl Fn(&HealthReport) -> bool,
    mut gone: impl FnMut() -> Option<String>,
) -> Result<HealthReport, DaemonError> {
    let deadline = Instant::now() + limit;
    let mut client = HttpClient::new(addr).with_timeout(Duration::from_secs(2));
    loop {
        if let Some(why) = gone() {
            return Err(DaemonError::Failed(format!(
                "{addr}: gave up waiting until {what}: {why}"
            )));
        }
        let last = match client.health().await {
            Ok((_, h)) if pred(&h) => return Ok(h),
            Ok((_, h)) => format!("{h:?}"),
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            return Err(DaemonError::Failed(format!(
                "{addr}: {what} did not happen within {limit:?}; last: {last}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `n` distinct free loopback ports (held all at once while chosen).
pub fn free_ports(n: usize) -> Result<Vec<u16>, DaemonError> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DaemonError::io("finding free ports", e))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DaemonError::io("finding free ports", e))
}
