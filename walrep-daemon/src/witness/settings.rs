//! `walrep witness`'s settings, layered like a node's (defaults < TOML
//! file < `WALREP_*` environment < flags) and named the same way: a
//! setting `data_dir` is `--data-dir`, `WALREP_DATA_DIR` and `data_dir =`
//! in the file.

use crate::config::{Layers, Setting, socket_addr};
use crate::error::DaemonError;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Every setting of `walrep witness`; none has a default.
pub const WITNESS_SETTINGS: &[Setting] = &[
    Setting {
        key: "listen",
        default: None,
    },
    Setting {
        key: "data_dir",
        default: None,
    },
    Setting {
        key: "http",
        default: None,
    },
    Setting {
        key: "tls_ca",
        default: None,
    },
    Setting {
        key: "tls_cert",
        default: None,
    },
    Setting {
        key: "tls_key",
        default: None,
    },
];

/// `walrep witness`.
#[derive(Args, Debug, Default, Clone)]
#[command(
    after_help = "Every setting can also be given as the environment variable WALREP_<NAME> \
(e.g. WALREP_DATA_DIR) or as a key of the TOML file named by --config or WALREP_CONFIG \
(e.g. data_dir = \"/var/lib/walrep-witness\"). Precedence: flags > environment > file. \
SIGHUP rereads the TLS files; SIGTERM stops the witness. Logs go to stderr; filter with \
WALREP_LOG or RUST_LOG (default info)."
)]
pub struct WitnessArgs {
    /// TOML file of settings.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where nodes reach the witness (gRPC), e.g. 0.0.0.0:7010. Required.
    #[arg(long, value_name = "IP:PORT")]
    pub listen: Option<String>,
    /// Where the witness keeps its register file (created if missing). Required.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<String>,
    /// Serve /health and /metrics over HTTP here [default: none].
    #[arg(long, value_name = "IP:PORT")]
    pub http: Option<String>,
    /// Mutual TLS: the cluster CA's certificate (PEM); only nodes it issued get in. With --tls-cert and --tls-key.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<String>,
    /// The witness's certificate (PEM), naming `witness` (walrep certs --witness); reread on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<String>,
    /// The private key of --tls-cert (PEM); reread on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<String>,
}

impl WitnessArgs {
    /// The settings given as flags, by setting name.
    pub fn flag_values(&self) -> Vec<(&'static str, String)> {
        [
            ("listen", &self.listen),
            ("data_dir", &self.data_dir),
            ("http", &self.http),
            ("tls_ca", &self.tls_ca),
            ("tls_cert", &self.tls_cert),
            ("tls_key", &self.tls_key),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
        .collect()
    }

    /// Every layer merged and checked.
    pub fn resolve(
        &self,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<WitnessSettings, DaemonError> {
        let layers = Layers::gather_for(
            WITNESS_SETTINGS,
            self.flag_values(),
            self.config.clone(),
            env,
        )?;
        WitnessSettings::resolve(&layers)
    }
}

/// What `walrep witness` runs with.
#[derive(Clone, Debug)]
pub struct WitnessSettings {
    /// Where gRPC is served.
    pub listen: SocketAddr,
    /// The register file's directory.
    pub data_dir: PathBuf,
    /// Where `/health` and `/metrics` are served, if anywhere.
    pub http: Option<SocketAddr>,
    /// Mutual TLS (all three files), or none: a trusted network.
    pub tls: Option<walrep::TlsFiles>,
}

impl WitnessSettings {
    fn resolve(layers: &Layers) -> Result<WitnessSettings, DaemonError> {
        let listen = layers.required(
            "listen",
            "where nodes reach the witness (IP:PORT)",
            socket_addr,
        )?;
        let data_dir = layers.required(
            "data_dir",
            "where the witness keeps its register file",
            |v| {
                if v.is_empty() {
                    Err("must not be empty".to_string())
                } else {
                    Ok(PathBuf::from(v))
                }
            },
        )?;
        let http = layers.get("http", socket_addr)?;
        if http == Some(listen) && listen.port() != 0 {
            return Err(DaemonError::Config(format!(
                "http ({}) and listen ({}) are both {listen}: give them different ports",
                layers.source("http"),
                layers.source("listen")
            )));
        }
        let tls = layers.tls_files()?;
        Ok(WitnessSettings {
            listen,
            data_dir,
            http,
            tls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(args: &WitnessArgs, env: &[(&str, &str)]) -> Result<WitnessSettings, DaemonError> {
        args.resolve(env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    fn base() -> WitnessArgs {
        WitnessArgs {
            listen: Some("127.0.0.1:7010".into()),
            data_dir: Some("/tmp/never-created".into()),
            ..WitnessArgs::default()
        }
    }

    #[test]
    fn listen_and_data_dir_are_required_and_named_by_flag_and_variable() {
        let mut args = base();
        args.data_dir = None;
        let e = resolve(&args, &[]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let e = e.to_string();
        assert!(
            e.contains("missing setting data_dir")
                && e.contains("--data-dir")
                && e.contains("WALREP_DATA_DIR"),
            "{e}"
        );
        let s = resolve(&args, &[("WALREP_DATA_DIR", "/w")]).unwrap();
        assert_eq!(s.data_dir, PathBuf::from("/w"));
        assert!(s.http.is_none() && s.tls.is_none());
    }

    #[test]
    fn a_bad_value_names_the_setting_and_where_it_came_from() {
        let mut args = base();
        args.http = Some("localhost".into());
        let e = resolve(&args, &[]).unwrap_err().to_string();
        assert!(e.contains("invalid value for http (from --http)"), "{e}");
        let s = resolve(&base(), &[("WALREP_LISTEN", "x")]).expect("the flag wins");
        assert_eq!(s.listen.to_string(), "127.0.0.1:7010");
        let mut args = base();
        args.listen = None;
        let e = resolve(&args, &[("WALREP_LISTEN", "nowhere")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("invalid value for listen (from WALREP_LISTEN)"),
            "{e}"
        );
        let mut args = base();
        args.tls_ca = Some("/ca.pem".into());
        let e = resolve(&args, &[]).unwrap_err().to_string();
        assert!(e.contains("missing tls_cert, tls_key"), "{e}");
    }

    #[test]
    fn the_file_knows_only_the_witness_settings() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("witness.toml");
        std::fs::write(&file, "peer = \"n2:7001\"\n").unwrap();
        let mut args = base();
        args.config = Some(file);
        let e = resolve(&args, &[]).unwrap_err().to_string();
        assert!(e.contains("unknown setting \"peer\""), "{e}");
    }
}
