//! What a daemon command can fail with, and the exit status each gets.

use super::client::ClientError;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A setting is missing or wrong. Nothing was started or written.
    #[error("{0}")]
    Config(String),

    /// The node or CLI could not reach a walrep node.
    #[error(transparent)]
    Client(#[from] ClientError),

    /// The library refused or failed.
    #[error(transparent)]
    Walrep(#[from] walrep::Error),

    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    /// Anything else a command reports to its user.
    #[error("{0}")]
    Failed(String),
}

impl DaemonError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> DaemonError {
        DaemonError::Io {
            what: what.into(),
            source,
        }
    }

    /// 2 for a configuration the user must fix (as for a usage error),
    /// 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            DaemonError::Config(_) => 2,
            _ => 1,
        }
    }
}
