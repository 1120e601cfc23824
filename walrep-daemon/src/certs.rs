//! `walrep certs`: a throwaway cluster CA and one certificate per node, for
//! tests and demos of mutual TLS.
//!
//! Each node's certificate names the node id as its DNS subject
//! alternative name (the identity walrep checks) and allows both server
//! and client use (a node is both). The CA's key is never written: the set
//! is issued in one go, and a new node means a new set. Production uses
//! the organisation's own CA (README, "Security").
//!
//! With `--witness` it also issues `witness.pem`/`witness.key` for the
//! built-in witness (`walrep witness`): a server-only certificate naming
//! `witness` (`walrep::arbiter::WITNESS_NAME`), the name every node
//! requires of the witness whatever address it dials. Server-only, so the
//! witness's key cannot act as a node; and no node may be named `witness`,
//! so no node's key can act as the witness.
//!
//! With `--http-hosts` it also issues `http.pem`/`http.key` for HTTPS on
//! the client API: a server-only certificate (`serverAuth`, no
//! `clientAuth`) naming the hosts clients dial, so the HTTP key, which may
//! sit on a load balancer, can never act as a node on the replication port.

use crate::error::DaemonError;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A CA held in memory, issuing node certificates.
pub struct CertAuthority {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A node's certificate and key, PEM.
pub struct NodeCert {
    pub cert_pem: String,
    pub key_pem: String,
}

fn failed(what: &str, e: rcgen::Error) -> DaemonError {
    DaemonError::Failed(format!("{what}: {e}"))
}

impl CertAuthority {
    /// A new CA with a fresh ECDSA P-256 key.
    pub fn new() -> Result<CertAuthority, DaemonError> {
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(|e| failed("CA parameters", e))?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "walrep cluster CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().map_err(|e| failed("CA key", e))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| failed("CA certificate", e))?;
        Ok(CertAuthority {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM (`ca.pem`).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A certificate naming `name`, for server and client use.
    pub fn issue(&self, name: &str) -> Result<NodeCert, DaemonError> {
        self.issue_for(
            &[name.to_string()],
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )
    }

    /// The witness's server-only certificate, naming
    /// `walrep::arbiter::WITNESS_NAME`.
    pub fn issue_witness(&self) -> Result<NodeCert, DaemonError> {
        self.issue_for(
            &[walrep::arbiter::WITNESS_NAME.to_string()],
            vec![ExtendedKeyUsagePurpose::ServerAuth],
        )
    }

    /// A server-only certificate naming `hosts` (DNS names or IP
    /// addresses), for the HTTP API.
    pub fn issue_http(&self, hosts: &[String]) -> Result<NodeCert, DaemonError> {
        self.issue_for(hosts, vec![ExtendedKeyUsagePurpose::ServerAuth])
    }

    fn issue_for(
        &self,
        names: &[String],
        usages: Vec<ExtendedKeyUsagePurpose>,
    ) -> Result<NodeCert, DaemonError> {
        let name = names.first().map(String::as_str).unwrap_or_default();
        let mut params = CertificateParams::new(names.to_vec())
            .map_err(|e| failed(&format!("certificate parameters for {names:?}"), e))?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = usages;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().map_err(|e| failed("node key", e))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| failed(&format!("certificate for {name:?}"), e))?;
        Ok(NodeCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Writes `ca.pem` and, per name, `NAME.pem` and `NAME.key` (mode 0600)
/// into `dir`, with `witness` `witness.pem` and `witness.key` (see
/// `CertAuthority::issue_witness`), and with `http_hosts` `http.pem` and
/// `http.key` (see `CertAuthority::issue_http`). Refuses, writing nothing,
/// if any of them exists, a name is not a DNS name or is `witness`, or an
/// HTTP host is a node's name. Returns the files written.
pub fn write_set(
    dir: &Path,
    names: &[String],
    witness: bool,
    http_hosts: &[String],
) -> Result<Vec<PathBuf>, DaemonError> {
    let witness_name = walrep::arbiter::WITNESS_NAME;
    // Certificate names match without regard to ASCII case (`Witness`
    // passes for `witness`), so every check here compares that way.
    let same = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    if let Some(name) = names.iter().find(|n| same(n, witness_name)) {
        return Err(DaemonError::Config(format!(
            "a node named {name:?} would carry the name every node requires of the witness: its key could pose as the witness; rename the node (use --witness for the witness's certificate)"
        )));
    }
    if names.is_empty() {
        return Err(DaemonError::Config(
            "--names is empty: give the node ids, e.g. --names n1,n2".into(),
        ));
    }
    for name in names {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name
                .split('.')
                .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        if !valid {
            return Err(DaemonError::Config(format!(
                "name {name:?} cannot name a certificate: node ids used with TLS must be DNS names (letters, digits, '-' and '.')"
            )));
        }
    }
    for (i, name) in names.iter().enumerate() {
        if let Some(other) = names[..i].iter().find(|n| same(n, name)) {
            let why = if other == name {
                format!("name {name:?} is given twice")
            } else {
                format!(
                    "names {other:?} and {name:?} differ only in case, and certificate names match without regard to case"
                )
            };
            return Err(DaemonError::Config(format!(
                "{why}: each node's key could pose as the other; give every node its own name"
            )));
        }
    }
    for host in http_hosts {
        if names.iter().any(|n| same(n, host)) || same(host, "http") || same(host, witness_name) {
            return Err(DaemonError::Config(format!(
                "--http-hosts {host:?} is a node's name: the HTTP certificate must not name a node, or whoever holds its key could pose as that node to its peer; name the hosts clients dial (e.g. 127.0.0.1, db.example.com)"
            )));
        }
        if tokio_rustls::rustls::pki_types::ServerName::try_from(host.as_str()).is_err() {
            return Err(DaemonError::Config(format!(
                "--http-hosts {host:?} is neither an IP address nor a DNS name"
            )));
        }
    }
    if let Some(name) = names.iter().find(|n| same(n, "ca")) {
        return Err(DaemonError::Config(format!(
            "a node named {name:?} would write {name}.pem over the CA's ca.pem: rename the node"
        )));
    }
    if !http_hosts.is_empty() && names.iter().any(|n| same(n, "http")) {
        return Err(DaemonError::Config(
            "a node named \"http\" would share http.pem with the HTTP certificate: rename the node or drop --http-hosts".into(),
        ));
    }
    let mut files = vec![dir.join("ca.pem")];
    for name in names {
        files.push(dir.join(format!("{name}.pem")));
        files.push(dir.join(format!("{name}.key")));
    }
    if witness {
        files.push(dir.join(format!("{witness_name}.pem")));
        files.push(dir.join(format!("{witness_name}.key")));
    }
    if !http_hosts.is_empty() {
        files.push(dir.join("http.pem"));
        files.push(dir.join("http.key"));
    }
    if let Some(existing) = files.iter().find(|f| f.exists()) {
        return Err(DaemonError::Config(format!(
            "{} already exists: walrep certs never overwrites; pick an empty --dir",
            existing.display()
        )));
    }
    let ca = CertAuthority::new()?;
    let mut contents = vec![(files[0].clone(), ca.pem().to_string(), 0o644)];
    for name in names {
        let cert = ca.issue(name)?;
        contents.push((dir.join(format!("{name}.pem")), cert.cert_pem, 0o644));
        contents.push((dir.join(format!("{name}.key")), cert.key_pem, 0o600));
    }
    if witness {
        let cert = ca.issue_witness()?;
        contents.push((
            dir.join(format!("{witness_name}.pem")),
            cert.cert_pem,
            0o644,
        ));
        contents.push((dir.join(format!("{witness_name}.key")), cert.key_pem, 0o600));
    }
    if !http_hosts.is_empty() {
        let cert = ca.issue_http(http_hosts)?;
        contents.push((dir.join("http.pem"), cert.cert_pem, 0o644));
        contents.push((dir.join("http.key"), cert.key_pem, 0o600));
    }
    fs::create_dir_all(dir)
        .map_err(|e| DaemonError::io(format!("creating {}", dir.display()), e))?;
    for (i, (path, text, mode)) in contents.iter().enumerate() {
        // Only a file this run created (`create_new`) is its own to take
        // back: one whose creation failed is someone else's or none.
        let (ours, written) = match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(*mode)
            .open(path)
        {
            Ok(mut f) => (
                i + 1,
                f.write_all(text.as_bytes()).and_then(|()| f.sync_all()),
            ),
            Err(e) => (i, Err(e)),
        };
        if let Err(e) = written {
            // Half a set would block every rerun ("already exists"): take
            // back what this run wrote.
            for (p, _, _) in &contents[..ours] {
                let _ = fs::remove_file(p);
            }
            return Err(DaemonError::io(format!("writing {}", path.display()), e));
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_names_each_node_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["n1".to_string(), "n2".to_string()];
        let files = write_set(dir.path(), &names, false, &[]).unwrap();
        assert_eq!(files.len(), 5);
        let key = dir.path().join("n1.key");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let before = fs::read(&key).unwrap();
        let err = write_set(dir.path(), &names, false, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("already exists"), "{err}");
        assert_eq!(fs::read(&key).unwrap(), before);
    }

    #[test]
    fn a_name_that_is_not_a_dns_name_is_refused_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_set(dir.path(), &["n1".into(), "node one".into()], false, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"node one\""), "{err}");
        assert!(!dir.path().join("ca.pem").exists());
        // Certificate names match without regard to case: so do the checks.
        for host in ["n1", "N1", "WITNESS"] {
            let err = write_set(dir.path(), &["n1".into()], false, &[host.into()])
                .unwrap_err()
                .to_string();
            assert!(err.contains("is a node's name"), "{host}: {err}");
        }
        let err = write_set(dir.path(), &["n1".into(), "N1".into()], false, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("differ only in case"), "{err}");
        let err = write_set(dir.path(), &["n1".into(), "n1".into()], false, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"n1\" is given twice"), "{err}");
        // A node named ca would write over the CA's certificate.
        let err = write_set(dir.path(), &["CA".into(), "n1".into()], false, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("over the CA's ca.pem"), "{err}");
        assert!(!dir.path().join("ca.pem").exists());
    }

    /// A write that fails half way takes back the files this run wrote,
    /// so a rerun is not refused over a partial set, and leaves what was
    /// there before (here a dangling link where n1.key goes, which the
    /// up-front check does not see).
    #[test]
    fn a_set_that_fails_half_way_leaves_nothing_it_wrote() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(dir.path().join("nowhere"), dir.path().join("n1.key")).unwrap();
        let err = write_set(dir.path(), &["n1".into()], false, &[]).unwrap_err();
        assert!(err.to_string().contains("n1.key"), "{err}");
        let left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, ["n1.key"], "only the link that was there");
    }

    #[test]
    fn the_http_certificate_is_written_when_hosts_are_given() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_set(
            dir.path(),
            &["n1".into()],
            false,
            &["127.0.0.1".into(), "localhost".into()],
        )
        .unwrap();
        assert!(files.contains(&dir.path().join("http.pem")), "{files:?}");
        assert!(dir.path().join("http.key").exists());
    }

    #[test]
    fn the_witness_gets_its_own_certificate_and_no_node_may_take_its_name() {
        let dir = tempfile::tempdir().unwrap();
        for witness in ["witness", "Witness"] {
            let err = write_set(dir.path(), &["n1".into(), witness.into()], true, &[])
                .unwrap_err()
                .to_string();
            assert!(err.contains("pose as the witness"), "{witness}: {err}");
        }
        assert!(!dir.path().join("ca.pem").exists());
        let files = write_set(dir.path(), &["n1".into(), "n2".into()], true, &[]).unwrap();
        assert!(files.contains(&dir.path().join("witness.pem")), "{files:?}");
        let files = walrep::TlsFiles {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("witness.pem"),
            key: dir.path().join("witness.key"),
        };
        walrep::Tls::load_witness(files).unwrap();
        // A node's certificate does not name the witness.
        let as_node = walrep::TlsFiles {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("n1.pem"),
            key: dir.path().join("n1.key"),
        };
        let err = walrep::Tls::load_witness(as_node).unwrap_err().to_string();
        assert!(err.contains("does not name the witness"), "{err}");
    }
}
