//! Operating walrep with the tools people already use: its `/metrics`
//! read by `promtool` and by the OpenMetrics parsers, the Prometheus rules
//! of `deploy/prometheus/` checked and unit-tested by `promtool`, and every
//! query of those rules and of the Grafana dashboard checked against the
//! metric names a live pair exports.
//!
//! Each test prints `SKIPPED: promtool not installed` (or `prometheus`)
//! and returns when the tool (Debian's `prometheus` package) is missing.

use super::sample;
use crate::daemon_support::*;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use walrep_daemon::witness::{RunningWitness, WitnessSettings};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("walrep-daemon sits in the repository")
        .to_path_buf()
}

fn deploy(path: &str) -> PathBuf {
    repo_root().join("deploy").join(path)
}

/// Whether `tool --version` runs here; says so loudly when it does not.
fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED: {tool} not installed");
    }
    ok
}

fn have_promtool() -> bool {
    have("promtool")
}

/// Runs `promtool args`, `stdin` on its standard input; panics with its
/// output unless it succeeds.
fn promtool(args: &[&str], cwd: &Path, stdin: &str) -> String {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{said}\n--- its input ---\n{stdin}"
    );
    said
}

/// `GET /metrics` with `accept`, over a plain HTTP/1.1 connection:
/// `(Content-Type, body)`.
pub async fn scrape_as(addr: &str, accept: Option<&str>) -> (String, String) {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    let request =
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{accept}\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8(answer).expect("/metrics is UTF-8");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    assert!(
        header("transfer-encoding").is_none(),
        "a chunked /metrics answer: {head}"
    );
    (header("content-type").unwrap_or_default(), body.to_string())
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0";

/// The names of the samples in an exposition (histograms by their
/// `_bucket`, `_sum` and `_count` series).
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

fn parse(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("prometheus-parse refused /metrics: {e}\n{text}"))
}

/// OpenMetrics rules the classic tools do not check: `# EOF` last, one
/// descriptor per family, counter families named without `_total` and
/// their samples with it. Then the parser Prometheus scrapes OpenMetrics
/// with (`promtool tsdb create-blocks-from openmetrics`, which wants a
/// timestamp on every sample, so one is added).
fn check_openmetrics(text: &str, scratch: &Path) {
    assert!(text.ends_with("# EOF\n"), "no final # EOF:\n{text}");
    assert_eq!(text.matches("# EOF").count(), 1, "{text}");
    let mut families = BTreeSet::new();
    let mut counters = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap();
            assert!(families.insert(family.to_string()), "{family} twice");
            if kind == "counter" {
                assert!(
                    !family.ends_with("_total"),
                    "counter family {family} must be named without _total"
                );
                counters.insert(family.to_string());
            }
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let family = rest.split(' ').next().unwrap();
            assert!(
                !(family.ends_with("_total")
                    && counters.contains(family.trim_end_matches("_total"))),
                "HELP of {family} names a sample, not its family"
            );
        }
    }
    for name in sample_names(text) {
        if let Some(family) = name.strip_suffix("_total") {
            assert!(
                counters.contains(family) || families.contains(&name),
                "sample {name} has no family"
            );
        }
        assert!(
            !counters.contains(&name),
            "counter sample {name} lacks _total"
        );
    }
    parse(text);
    let stamped: String = text
        .lines()
        .map(|l| {
            if l.starts_with('#') {
                format!("{l}\n")
            } else {
                format!("{l} 1700000000\n")
            }
        })
        .collect();
    let file = scratch.join("scrape.om");
    std::fs::write(&file, stamped).unwrap();
    let blocks = scratch.join("blocks");
    promtool(
        &[
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            file.to_str().unwrap(),
            blocks.to_str().unwrap(),
        ],
        scratch,
        "",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_of_a_primary_and_a_standby_pass_promtool_and_the_openmetrics_parsers() {
    if !have_promtool() {
        return;
    }
    let p = pair(&[]).await;
    let mut client = walrep_daemon::client::HttpClient::new(&p.a_http);
    for i in 0..3 {
        client
            .put(&format!("k{i}"), bytes::Bytes::from_static(b"v"))
            .await
            .unwrap();
    }
    wait_health(&p.b_http, "applied the writes", |h| h.applied_lsn >= 3).await;
    wait_health(&p.b_http, "told it is in sync", |h| h.sync_state == "sync").await;
    let scratch = tempfile::tempdir().unwrap();

    for (node, addr) in [("a", &p.a_http), ("b", &p.b_http)] {
        let (content_type, classic) = scrape_as(addr, None).await;
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
        let (same, _) = scrape_as(addr, Some("text/plain;version=0.0.4")).await;
        assert_eq!(same, content_type);
        let said = promtool(&["check", "metrics"], scratch.path(), &classic);
        println!("promtool check metrics on {node}: ok {said}");
        assert!(!classic.contains("# EOF") && !classic.contains("# UNIT"));
        assert!(classic.contains("# HELP walrep_heartbeat_errors_total "));
        assert!(classic.contains("# TYPE walrep_state_transitions_total counter"));

        let (content_type, om) = scrape_as(addr, Some(OPENMETRICS)).await;
        assert_eq!(content_type, format!("{OPENMETRICS}; charset=utf-8"));
        let dir = scratch.path().join(node);
        std::fs::create_dir_all(&dir).unwrap();
        check_openmetrics(&om, &dir);
        assert!(om.contains("# TYPE walrep_heartbeat_errors counter"));
        // One registry, two spellings: the same samples.
        assert_eq!(sample_names(&om), sample_names(&classic));

        let s = parse(&classic);
        let build = [
            ("version", env!("CARGO_PKG_VERSION")),
            ("commit_mode", "remote-flush"),
            ("on_standby_loss", "solo"),
            ("arbiter", "none"),
        ];
        assert_eq!(
            sample(&s, "walrep_build_info", &build),
            Some(1.0),
            "{classic}"
        );
        assert_eq!(
            sample(
                &s,
                "walrep_node_info",
                &[("node_id", node), ("cluster_id", "test")]
            ),
            Some(1.0)
        );
        // Every role change and refusal is there before it happens.
        let transitions = s
            .samples
            .iter()
            .filter(|x| x.metric == "walrep_state_transitions_total")
            .count();
        assert_eq!(transitions, 30, "{classic}");
        assert_eq!(
            sample(
                &s,
                "walrep_state_transitions_total",
                &[("from", "standby"), ("to", "promoting")]
            ),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &s,
                "walrep_rejected_requests_total",
                &[("api", "http"), ("reason", "sync_timeout")]
            ),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &s,
                "walrep_rejected_requests_total",
                &[("api", "grpc"), ("reason", "stale_epoch")]
            ),
            Some(0.0)
        );
        assert_eq!(sample(&s, "walrep_role_changes_total", &[]), Some(0.0));
        assert_eq!(
            sample(&s, "walrep_sync_state", &[("state", "sync")]),
            Some(1.0),
            "{node}: the primary calls its standby in sync, and the standby says what it was told"
        );
        assert_eq!(sample(&s, "walrep_replication_lag_records", &[]), Some(0.0));
        assert!(sample(&s, "walrep_peer_last_contact_seconds", &[]).unwrap() < 10.0);
        let standby = node == "b";
        assert_eq!(
            sample(&s, "walrep_standbys_connected", &[]),
            Some(f64::from(u8::from(!standby))),
            "{node}: the primary streams to its one standby"
        );
        assert_eq!(
            sample(&s, "walrep_eligible", &[]),
            Some(f64::from(u8::from(standby)))
        );
    }
}

#[test]
fn the_shipped_prometheus_rules_pass_promtool_check_and_their_unit_tests() {
    if !have_promtool() {
        return;
    }
    let dir = deploy("prometheus");
    let said = promtool(&["check", "rules", "walrep-rules.yml"], &dir, "");
    println!("{said}");
    let said = promtool(&["test", "rules", "walrep-rules.test.yml"], &dir, "");
    println!("{said}");
    let said = promtool(&["check", "config", "prometheus.yml"], &dir, "");
    println!("{said}");
}

/// The metric names a PromQL expression reads: identifiers that are not
/// functions, keywords, label names (in `{...}`, `by (...)`, `on (...)`
/// and the like), strings, durations or numbers.
fn metric_names_in(expr: &str) -> BTreeSet<String> {
    // Besides LABEL_LISTS, which are keywords too.
    const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan"];
    const LABEL_LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_to = |from: usize, close: char| {
        chars[from..]
            .iter()
            .position(|c| *c == close)
            .map_or(chars.len(), |n| from + n + 1)
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != c {
                j += if chars[j] == '\\' { 2 } else { 1 };
            }
            i = j + 1;
        } else if c == '{' {
            i = skip_to(i, '}');
        } else if c == '[' {
            i = skip_to(i, ']');
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let lower = word.to_ascii_lowercase();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let rest: String = chars[next..].iter().take(8).collect();
            // `sum by (job) (x)`: an aggregation whose clause comes first.
            let clause_first = ["by", "without"].iter().any(|k| {
                rest.strip_prefix(k)
                    .is_some_and(|r| r.starts_with([' ', '(']))
            });
            let called = chars.get(next) == Some(&'(') || clause_first;
            if LABEL_LISTS.contains(&word.as_str()) && called {
                i = skip_to(next, ')');
            } else if !called
                && !KEYWORDS.contains(&lower.as_str())
                && !LABEL_LISTS.contains(&lower.as_str())
            {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// `expr:` of every rule in a rules file, and `record:` names. The shipped
/// files keep each expression on one line.
fn rules_of(path: &Path) -> (Vec<String>, Vec<String>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut exprs = Vec::new();
    let mut records = Vec::new();
    for line in text.lines() {
        let line = line.trim_start().trim_start_matches("- ");
        if let Some(expr) = line.strip_prefix("expr:") {
            let expr = expr.trim();
            assert!(
                !expr.is_empty() && !expr.starts_with(['|', '>']),
                "{}: write each expr on one line (this check reads them so): {line}",
                path.display()
            );
            exprs.push(expr.to_string());
        }
        if let Some(name) = line.strip_prefix("record:") {
            records.push(name.trim().to_string());
        }
    }
    (exprs, records)
}

/// Every `expr` of a Grafana dashboard, wherever it sits.
fn dashboard_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match v {
                    serde_json::Value::String(s) if k == "expr" => out.push(s.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

#[test]
fn metric_names_are_read_from_promql_without_functions_labels_or_keywords() {
    let names = metric_names_in(
        r#"count_values by (job) ("epoch", walrep_epoch and on (job, instance) (walrep_writable{job="x"} == 1)) > 1"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["walrep_epoch", "walrep_writable"]
    );
    let names = metric_names_in(
        "histogram_quantile(0.99, sum by (instance, le) (rate(walrep_commit_latency_seconds_bucket{job=\"$job\"}[$__rate_interval]))) * on (job, instance) group_left (node_id) walrep_node_info > 64 * 1024 + 1e3",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["walrep_commit_latency_seconds_bucket", "walrep_node_info"]
    );
    assert!(metric_names_in("job:walrep_writable:sum").contains("job:walrep_writable:sum"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_and_rule_query_names_only_metrics_walrep_exports() {
    if !have_promtool() {
        return;
    }
    // A pair with a witness, so the arbiter's gauges are exported too.
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(2);
    let witness_port = ports[0];
    let witness = RunningWitness::start(WitnessSettings {
        listen: format!("127.0.0.1:{witness_port}").parse().unwrap(),
        data_dir: dir.path().join("witness"),
        http: Some(format!("127.0.0.1:{}", ports[1]).parse().unwrap()),
        tls: None,
    })
    .await
    .expect("the witness starts");
    let arbiter = format!("witness://127.0.0.1:{witness_port}");
    let p = pair(&[("arbiter", &arbiter)]).await;
    walrep_daemon::client::HttpClient::new(&p.a_http)
        .put("k", bytes::Bytes::from_static(b"v"))
        .await
        .unwrap();

    let mut exported = BTreeSet::new();
    for addr in [&p.a_http, &p.b_http] {
        let (_, classic) = scrape_as(addr, None).await;
        exported.extend(sample_names(&classic));
    }
    assert!(
        exported.contains("walrep_arbiter_reachable"),
        "{exported:?}"
    );
    // The witness's own /metrics passes promtool too.
    let witness_http = witness.http_addr.expect("served").to_string();
    let (_, classic) = scrape_as(&witness_http, None).await;
    promtool(&["check", "metrics"], dir.path(), &classic);
    // The witness's alerts read its own metrics.
    exported.extend(sample_names(&classic));
    let (_, om) = scrape_as(&witness_http, Some(OPENMETRICS)).await;
    let om_dir = dir.path().join("witness-openmetrics");
    std::fs::create_dir_all(&om_dir).unwrap();
    check_openmetrics(&om, &om_dir);
    let (rule_exprs, records) = rules_of(&deploy("prometheus/walrep-rules.yml"));
    exported.extend(records);
    // Made by Prometheus for every target.
    exported.insert("up".to_string());

    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana/walrep.json")).unwrap())
            .expect("the dashboard is JSON");
    let mut panel_exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut panel_exprs);
    assert!(panel_exprs.len() >= 20, "{panel_exprs:?}");

    let mut unknown = Vec::new();
    for expr in rule_exprs.iter().chain(&panel_exprs) {
        for name in metric_names_in(expr) {
            if !exported.contains(&name) {
                unknown.push(format!("{name} (in {expr})"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "queries name metrics walrep does not export:\n{}",
        unknown.join("\n")
    );

    // The dashboard's queries are PromQL promtool accepts, once Grafana's
    // variables are given values: as recording rules of a scratch file.
    let mut scratch = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in panel_exprs.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$job", "walrep");
        scratch.push_str(&format!(
            "      - record: dashboard_query_{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let file = dir.path().join("dashboard-queries.yml");
    std::fs::write(&file, scratch).unwrap();
    let said = promtool(&["check", "rules", file.to_str().unwrap()], dir.path(), "");
    println!("{said}");
    witness.shutdown().await;
}

/// A `prometheus` server of this test, stopped when dropped.
struct PrometheusServer {
    child: std::process::Child,
    addr: String,
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl PrometheusServer {
    /// Scrapes `targets` every second and evaluates the shipped rules
    /// every second, on loopback, its data in `dir`.
    fn start(dir: &Path, targets: &[&str]) -> PrometheusServer {
        let port = free_ports(1)[0];
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
rule_files: [{rules:?}]\n\
scrape_configs:\n  - job_name: walrep\n    static_configs: [{{targets: [{targets}]}}]\n",
            rules = deploy("prometheus/walrep-rules.yml").display().to_string(),
            targets = targets.join(", "),
        );
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config).unwrap();
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        PrometheusServer { child, addr }
    }

    /// `GET path` of its API, as JSON (`None` while it does not answer).
    async fn api(&self, path: &str) -> Option<serde_json::Value> {
        let reply = walrep_daemon::client::HttpClient::new(&self.addr)
            .request(hyper::Method::GET, path, bytes::Bytes::new())
            .await
            .ok()?;
        serde_json::from_slice(&reply.body).ok()
    }

    /// The result of an instant query.
    async fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let answer = self
            .api(&format!("/api/v1/query?query={encoded}"))
            .await
            .unwrap_or_else(|| panic!("prometheus answered no JSON to {promql}"));
        assert_eq!(answer["status"], "success", "{promql}: {answer}");
        answer["data"]["result"].as_array().unwrap().clone()
    }

    /// Polls `promql` until `done` holds of its result; panics after `WAIT`.
    async fn wait_for(
        &self,
        promql: &str,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let result = self.query(promql).await;
            if done(&result) {
                return result;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{promql} is still {result:?} after {WAIT:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}

/// The value of one sample of a query result.
fn number(sample: &serde_json::Value) -> f64 {
    sample["value"][1].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_both_nodes_and_its_rules_see_the_first_promotion() {
    if !have("prometheus") {
        return;
    }
    let p = pair(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let prometheus = PrometheusServer::start(dir.path(), &[&p.a_http, &p.b_http]);
    // Prometheus asks for OpenMetrics: both targets scraped without error.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let targets = match prometheus.api("/api/v1/targets").await {
            Some(t) => t["data"]["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let up = targets.iter().filter(|t| t["health"] == "up").count();
        if targets.len() == 2 && up == 2 {
            for t in &targets {
                assert_eq!(t["lastError"], "", "{t}");
            }
            break;
        }
        for t in &targets {
            assert_ne!(t["health"], "down", "a target failed: {t}");
        }
        assert!(std::time::Instant::now() < deadline, "targets: {targets:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // Two scrapes of every counter at 0 before anything happens.
    prometheus
        .wait_for("count_over_time(walrep_role_changes_total[1m])", |r| {
            r.len() == 2 && r.iter().all(|s| number(s) >= 2.0)
        })
        .await;

    // A planned switchover: b becomes primary at epoch 2.
    let mut client = walrep_daemon::client::HttpClient::new(&p.b_http);
    assert_eq!(client.promote(false).await.unwrap(), 2);
    wait_health(&p.a_http, "a follows b", |h| h.role == "standby").await;

    let promoted = prometheus
        .wait_for(
            r#"increase(walrep_state_transitions_total{to="primary"}[1m]) > 0"#,
            |r| !r.is_empty(),
        )
        .await;
    assert_eq!(promoted.len(), 1, "{promoted:?}");
    assert_eq!(promoted[0]["metric"]["from"], "standby");
    assert_eq!(promoted[0]["metric"]["instance"], p.b_http.as_str());
    prometheus
        .wait_for(
            r#"ALERTS{alertname="WalrepFailover",alertstate="firing"}"#,
            |r| !r.is_empty(),
        )
        .await;
    // Scraped a few milliseconds apart, the two nodes may both say
    // writable for one evaluation (the old primary before it stepped down,
    // the new one after): the epochs differ, so the same-epoch alert never
    // even goes pending, and the other one needs a minute of it to fire.
    let same_epoch = prometheus
        .query(r#"count_over_time(ALERTS{alertname="WalrepSplitBrainSameEpoch"}[5m])"#)
        .await;
    assert!(same_epoch.is_empty(), "{same_epoch:?}");
    let fired = prometheus
        .query(r#"count_over_time(ALERTS{alertstate="firing",alertname="WalrepTwoWritablePrimaries"}[5m])"#)
        .await;
    assert!(fired.is_empty(), "{fired:?}");
    let skew = prometheus
        .query("max_over_time(job:walrep_writable:sum[5m])")
        .await;
    println!("most writable nodes in one evaluation across the switchover: {skew:?}");
}
