//! An arbiter named by a URL, as a node's configuration gives it:
//! `witness://HOST:PORT` or `etcd://HOST:PORT[,HOST:PORT...][/PREFIX/]`.

use super::Arbiter;
use super::etcd::{EtcdArbiter, EtcdEndpoint, EtcdTarget};
use std::fmt;
use std::sync::Arc;

/// Why an arbiter URL names no arbiter this build can reach.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArbiterUrlError {
    /// No `scheme://` in front.
    #[error("arbiter URL {url:?} has no scheme: write etcd://HOST:PORT[,HOST:PORT...]")]
    MissingScheme {
        /// The URL as given.
        url: String,
    },
    /// A scheme no backend answers to.
    #[error("arbiter URL scheme {scheme:?} is not supported (known: witness, etcd)")]
    UnsupportedScheme {
        /// The scheme as given.
        scheme: String,
    },
    /// Nothing after `scheme://`.
    #[error("arbiter URL {url:?} names no endpoint: write etcd://HOST:PORT[,HOST:PORT...]")]
    NoEndpoints {
        /// The URL as given.
        url: String,
    },
    /// An empty item in the endpoint list (`a:1,,b:2`, a trailing comma).
    #[error("arbiter URL {url:?}: endpoint {position} of the list is empty")]
    EmptyEndpoint {
        /// The URL as given.
        url: String,
        /// Its position in the list, from 1.
        position: usize,
    },
    /// An endpoint without a host (`:2379`).
    #[error("arbiter endpoint {endpoint:?} has an empty host")]
    EmptyHost {
        /// The endpoint as given.
        endpoint: String,
    },
    /// A host with characters no host name or address has.
    #[error("arbiter endpoint {endpoint:?}: {host:?} is not a host name or IP address")]
    BadHost {
        /// The endpoint as given.
        endpoint: String,
        /// The host part.
        host: String,
    },
    /// An endpoint without `:PORT`.
    #[error("arbiter endpoint {endpoint:?} has no port: write HOST:PORT")]
    MissingPort {
        /// The endpoint as given.
        endpoint: String,
    },
    /// A port that is not a number from 1 to 65535.
    #[error("arbiter endpoint {endpoint:?}: port {port:?} is not a number from 1 to 65535")]
    BadPort {
        /// The endpoint as given.
        endpoint: String,
        /// The port part.
        port: String,
    },
    /// A witness URL naming more than one endpoint.
    #[error("arbiter URL {url:?}: a witness is one process; write witness://HOST:PORT")]
    OneEndpointOnly {
        /// The URL as given.
        url: String,
    },
}

/// An arbiter URL, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArbiterUrl {
    /// `witness://HOST:PORT`: a `walrep witness`.
    Witness(EtcdEndpoint),
    /// `etcd://HOST:PORT[,HOST:PORT...][/PREFIX/]`.
    Etcd(EtcdTarget),
}

impl ArbiterUrl {
    /// Checks `url`, saying precisely what is wrong with it.
    pub fn parse(url: &str) -> Result<ArbiterUrl, ArbiterUrlError> {
        match scheme(url)? {
            ("etcd", _) => Ok(ArbiterUrl::Etcd(EtcdTarget::parse(url)?)),
            ("witness", rest) => {
                let endpoint = match parse_endpoints(url, rest.trim_end_matches('/'))?.as_slice() {
                    [one] => one.clone(),
                    _ => {
                        return Err(ArbiterUrlError::OneEndpointOnly {
                            url: url.to_string(),
                        });
                    }
                };
                Ok(ArbiterUrl::Witness(endpoint))
            }
            (other, _) => Err(ArbiterUrlError::UnsupportedScheme {
                scheme: other.to_string(),
            }),
        }
    }
}

impl fmt::Display for ArbiterUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArbiterUrl::Witness(e) => write!(f, "witness://{e}"),
            ArbiterUrl::Etcd(t) => {
                let list: Vec<String> = t.endpoints.iter().map(ToString::to_string).collect();
                write!(f, "etcd://{}{}", list.join(","), t.prefix)
            }
        }
    }
}

/// The arbiter `url` names, with its default settings (for etcd: a
/// deadline per call of the default `rpc_timeout`, keys under `/walrep/`;
/// with another `rpc_timeout`, build it with `EtcdArbiter::connect_lazy`). Connections are made
/// lazily, at the first call, so an arbiter that is down now does not fail
/// this; it must be called within a Tokio runtime.
///
/// * `etcd://HOST:PORT[,HOST:PORT...][/PREFIX/]`: an [`EtcdArbiter`] over
///   those endpoints of one etcd cluster, keeping each cluster's register
///   at `PREFIX<cluster_id>/register`.
pub fn from_url(url: &str) -> Result<Arc<dyn Arbiter>, ArbiterUrlError> {
    match scheme(url)? {
        ("etcd", _) => Ok(Arc::new(EtcdArbiter::connect_lazy(
            EtcdTarget::parse(url)?,
            EtcdArbiter::DEFAULT_TIMEOUT,
        ))),
        (other, _) => Err(ArbiterUrlError::UnsupportedScheme {
            scheme: other.to_string(),
        }),
    }
}

/// `url` split at `://`.
pub(super) fn scheme(url: &str) -> Result<(&str, &str), ArbiterUrlError> {
    match url.split_once("://") {
        Some((scheme, rest)) if !scheme.is_empty() => Ok((scheme, rest)),
        _ => Err(ArbiterUrlError::MissingScheme {
            url: url.to_string(),
        }),
    }
}

/// `HOST:PORT[,HOST:PORT...]` (IPv6 addresses in brackets) as endpoints.
pub(super) fn parse_endpoints(url: &str, list: &str) -> Result<Vec<EtcdEndpoint>, ArbiterUrlError> {
    if list.is_empty() {
        return Err(ArbiterUrlError::NoEndpoints {
            url: url.to_string(),
        });
    }
    list.split(',')
        .enumerate()
        .map(|(i, item)| {
            if item.trim().is_empty() {
                return Err(ArbiterUrlError::EmptyEndpoint {
                    url: url.to_string(),
                    position: i + 1,
                });
            }
            parse_endpoint(item)
        })
        .collect()
}

fn parse_endpoint(endpoint: &str) -> Result<EtcdEndpoint, ArbiterUrlError> {
    let missing_port = || ArbiterUrlError::MissingPort {
        endpoint: endpoint.to_string(),
    };
    let (host, port) = if let Some(bracketed) = endpoint.strip_prefix('[') {
        let (host, rest) = bracketed
            .split_once(']')
            .ok_or_else(|| ArbiterUrlError::BadHost {
                endpoint: endpoint.to_string(),
                host: endpoint.to_string(),
            })?;
        let port = rest.strip_prefix(':').ok_or_else(missing_port)?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(ArbiterUrlError::BadHost {
                endpoint: endpoint.to_string(),
                host: host.to_string(),
            });
        }
        (host, port)
    } else {
        let (host, port) = endpoint.rsplit_once(':').ok_or_else(missing_port)?;
        if host.is_empty() {
            return Err(ArbiterUrlError::EmptyHost {
                endpoint: endpoint.to_string(),
            });
        }
        let name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
        if !host.chars().all(name_char) {
            return Err(ArbiterUrlError::BadHost {
                endpoint: endpoint.to_string(),
                host: host.to_string(),
            });
        }
        (host, port)
    };
    let bad_port = || ArbiterUrlError::BadPort {
        endpoint: endpoint.to_string(),
        port: port.to_string(),
    };
    if port.is_empty() {
        return Err(missing_port());
    }
    // `u16::from_str` accepts a leading '+'; a port is digits only.
    if !port.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad_port());
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad_port()),
        Ok(port) => Ok(EtcdEndpoint {
            host: host.to_string(),
            port,
        }),
    }
}

impl fmt::Display for EtcdEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(host: &str, port: u16) -> EtcdEndpoint {
        EtcdEndpoint {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn an_etcd_url_gives_its_endpoints_and_key_prefix() {
        let t = EtcdTarget::parse("etcd://10.0.0.1:2379,etcd-b:2379,[::1]:2380").unwrap();
        assert_eq!(
            t.endpoints,
            vec![ep("10.0.0.1", 2379), ep("etcd-b", 2379), ep("::1", 2380)]
        );
        assert_eq!(t.prefix, "/walrep/");
        assert_eq!(t.to_string(), "etcd://10.0.0.1:2379,etcd-b:2379,[::1]:2380");
        let t = EtcdTarget::parse("etcd://h:1/prod/walrep").unwrap();
        assert_eq!(t.prefix, "/prod/walrep/");
        assert_eq!(t.to_string(), "etcd://h:1/prod/walrep/");
        assert_eq!(EtcdTarget::parse("etcd://h:1/").unwrap().prefix, "/walrep/");
    }

    #[test]
    fn a_bad_arbiter_url_says_what_is_wrong() {
        let err = |url: &str| EtcdTarget::parse(url).unwrap_err();
        assert_eq!(
            err("h:2379"),
            ArbiterUrlError::MissingScheme {
                url: "h:2379".into()
            }
        );
        assert_eq!(
            err("http://h:2379"),
            ArbiterUrlError::UnsupportedScheme {
                scheme: "http".into()
            }
        );
        assert_eq!(
            err("etcd://"),
            ArbiterUrlError::NoEndpoints {
                url: "etcd://".into()
            }
        );
        assert_eq!(
            err("etcd://a:1,,b:2"),
            ArbiterUrlError::EmptyEndpoint {
                url: "etcd://a:1,,b:2".into(),
                position: 2
            }
        );
        assert_eq!(
            err("etcd://a:1,"),
            ArbiterUrlError::EmptyEndpoint {
                url: "etcd://a:1,".into(),
                position: 2
            }
        );
        assert_eq!(
            err("etcd://:2379"),
            ArbiterUrlError::EmptyHost {
                endpoint: ":2379".into()
            }
        );
        assert_eq!(
            err("etcd://h"),
            ArbiterUrlError::MissingPort {
                endpoint: "h".into()
            }
        );
        assert_eq!(
            err("etcd://h:"),
            ArbiterUrlError::MissingPort {
                endpoint: "h:".into()
            }
        );
        for port in ["0", "65536", "x1", "+1", "-1"] {
            assert_eq!(
                err(&format!("etcd://h:{port}")),
                ArbiterUrlError::BadPort {
                    endpoint: format!("h:{port}"),
                    port: port.into()
                }
            );
        }
        assert_eq!(
            err("etcd://h h:1"),
            ArbiterUrlError::BadHost {
                endpoint: "h h:1".into(),
                host: "h h".into()
            }
        );
        assert_eq!(
            err("etcd://[zz]:1"),
            ArbiterUrlError::BadHost {
                endpoint: "[zz]:1".into(),
                host: "zz".into()
            }
        );
        // The messages name the culprit.
        assert_eq!(
            err("etcd://h:99999").to_string(),
            "arbiter endpoint \"h:99999\": port \"99999\" is not a number from 1 to 65535"
        );
    }

    #[tokio::test]
    async fn from_url_makes_the_etcd_backend_and_refuses_other_schemes() {
        let arbiter = from_url("etcd://127.0.0.1:2379,127.0.0.2:2379").unwrap();
        assert_eq!(arbiter.describe(), "etcd://127.0.0.1:2379,127.0.0.2:2379");
        assert!(matches!(
            from_url("zookeeper://h:2181"),
            Err(ArbiterUrlError::UnsupportedScheme { scheme }) if scheme == "zookeeper"
        ));
        assert!(matches!(
            from_url("etcd://h:0"),
            Err(ArbiterUrlError::BadPort { .. })
        ));
    }
}

#[cfg(test)]
mod witness_url_tests {
    use super::*;

    #[test]
    fn a_witness_url_names_one_endpoint_and_prints_back_as_given() {
        let url = ArbiterUrl::parse("witness://10.0.0.3:7010").unwrap();
        assert_eq!(
            url,
            ArbiterUrl::Witness(EtcdEndpoint {
                host: "10.0.0.3".into(),
                port: 7010
            })
        );
        assert_eq!(url.to_string(), "witness://10.0.0.3:7010");
        assert_eq!(
            ArbiterUrl::parse("witness://a:1,b:2"),
            Err(ArbiterUrlError::OneEndpointOnly {
                url: "witness://a:1,b:2".into()
            })
        );
        assert!(matches!(
            ArbiterUrl::parse("witness://a"),
            Err(ArbiterUrlError::MissingPort { .. })
        ));
        assert_eq!(
            ArbiterUrl::parse("etcd://a:1,[::1]:2").unwrap().to_string(),
            "etcd://a:1,[::1]:2/walrep/"
        );
        assert_eq!(
            ArbiterUrl::parse("zk://a:1"),
            Err(ArbiterUrlError::UnsupportedScheme {
                scheme: "zk".into()
            })
        );
    }
}
