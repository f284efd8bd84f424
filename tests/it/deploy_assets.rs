//! The Grafana dashboard and the Prometheus alerts: well-formed, and built only from series
//! (and label values) a real server exports after real traffic; every series is on the
//! dashboard and in the metrics reference of `docs/operations.md`; every alert's runbook is a
//! section there.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{DEADLINE, Redis, Server, ServerConfig, wait_until};

const DASHBOARD: &str = "deploy/grafana/enigma-dashboard.json";
const ALERTS: &str = "deploy/prometheus/alerts.yml";
const OPERATIONS: &str = "docs/operations.md";

/// Longest the fault phases (slow reader, frozen Redis) may take.
const CONVERGE: Duration = Duration::from_secs(30);

fn read(path: &str) -> String {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("cannot read {}: {e}", full.display()))
}

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"))
}

/// Every string in a JSON document (queries, legends, variable definitions), unescaped.
fn strings(value: &Value, out: &mut String) {
    match value {
        Value::String(s) => {
            out.push_str(s);
            out.push('\n');
        }
        Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        Value::Object(map) => map.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

/// The text in which the dashboard names series: every string of the JSON, unescaped.
fn dashboard_text() -> String {
    let mut text = String::new();
    strings(&dashboard(), &mut text);
    text
}

fn is_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Every `enigma_…` token and where it ends.
fn metric_tokens(text: &str) -> Vec<(String, usize)> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(offset) = text[from..].find("enigma_") {
        let start = from + offset;
        let mut end = start + "enigma_".len();
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase() || bytes[end].is_ascii_digit() || bytes[end] == b'_')
        {
            end += 1;
        }
        if start == 0 || !is_name_char(bytes[start - 1]) {
            found.push((text[start..end].to_owned(), end));
        }
        from = end;
    }
    found
}

fn metric_names(text: &str) -> BTreeSet<String> {
    metric_tokens(text).into_iter().map(|(name, _)| name).collect()
}

/// Equality matchers right after a series name: `enigma_x{a="1", b=~"…"}` gives `(enigma_x, a, 1)`.
fn equality_matchers(text: &str) -> Vec<(String, String, String)> {
    let mut found = Vec::new();
    for (name, end) in metric_tokens(text) {
        let Some(selector) = text[end..].strip_prefix('{') else { continue };
        let Some(close) = selector.find('}') else { continue };
        for matcher in selector[..close].split(',') {
            let Some((label, value)) = matcher.split_once('=') else { continue };
            let label = label.trim();
            if label.ends_with('!') || value.starts_with('~') {
                continue; // `!=`, `=~`, `!~`
            }
            let value = value.trim().trim_matches('"');
            found.push((name.clone(), label.to_owned(), value.to_owned()));
        }
    }
    found
}

/// What a scrape of `/metrics` says: each family's type, and the series lines.
struct Scrape {
    types: BTreeMap<String, String>,
    text: String,
}

impl Scrape {
    async fn of(server: &Server) -> Scrape {
        let text = server.http.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
        let types = text
            .lines()
            .filter_map(|line| {
                let mut words = line.strip_prefix("# TYPE ")?.split_whitespace();
                Some((words.next()?.to_owned(), words.next()?.to_owned()))
            })
            .collect();
        Scrape { types, text }
    }

    /// The family a series name belongs to (`x_bucket`, `x_sum`, `x_count` of a histogram `x`).
    fn family(&self, name: &str) -> Option<String> {
        if self.types.contains_key(name) {
            return Some(name.to_owned());
        }
        ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suffix| name.strip_suffix(suffix))
            .find(|base| self.types.get(*base).is_some_and(|t| t == "histogram"))
            .map(str::to_owned)
    }

    fn has_series_with(&self, name: &str, label: &str, value: &str) -> bool {
        let wanted = format!("{label}=\"{value}\"");
        self.text
            .lines()
            .filter_map(|line| line.strip_prefix(name)?.strip_prefix('{'))
            .any(|labels| labels.starts_with(&wanted) || labels.contains(&format!(",{wanted}")))
    }

    fn value(&self, name: &str) -> f64 {
        self.text
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// One `- alert:` entry of the rules file, as text.
struct Rule {
    name: String,
    lines: Vec<String>,
}

impl Rule {
    /// The value of a key directly under the rule (`expr:`, `for:`, …).
    fn field(&self, key: &str) -> Option<String> {
        let indent = self.lines.get(1).map(|l| l.len() - l.trim_start().len())?;
        self.lines.iter().find_map(|line| {
            let rest = line.strip_prefix(&" ".repeat(indent))?.strip_prefix(key)?.strip_prefix(':')?;
            Some(rest.trim().to_owned())
        })
    }

    /// The value of `child` inside the `parent:` block (`labels:` → `severity:`).
    fn nested(&self, parent: &str, child: &str) -> Option<String> {
        let start = self.lines.iter().position(|l| l.trim() == format!("{parent}:"))?;
        let indent = self.lines[start].len() - self.lines[start].trim_start().len();
        self.lines[start + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
            .find_map(|l| Some(l.trim().strip_prefix(child)?.strip_prefix(':')?.trim().trim_matches('"').to_owned()))
    }
}

fn alert_rules(text: &str) -> Vec<Rule> {
    let mut rules: Vec<Rule> = Vec::new();
    let mut open: Option<(usize, Rule)> = None;
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim();
        if let Some((dash, _)) = &open
            && !trimmed.is_empty()
            && indent <= *dash
        {
            rules.extend(open.take().map(|(_, rule)| rule));
        }
        if let Some(name) = trimmed.strip_prefix("- alert:") {
            // The rule's keys sit two columns right of its dash, like the first key itself.
            let first = format!("{}{}", " ".repeat(indent + 2), trimmed.strip_prefix("- ").unwrap());
            open = Some((indent, Rule { name: name.trim().to_owned(), lines: vec![line.to_owned(), first] }));
        } else if let Some((_, rule)) = &mut open {
            rule.lines.push(line.to_owned());
        }
    }
    rules.extend(open.map(|(_, rule)| rule));
    rules
}

/// GitHub's anchor of a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn dashboard_is_a_grafana_dashboard() {
    let d = dashboard();
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "schemaVersion: {}", d["schemaVersion"]);
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(d["uid"].as_str().is_some_and(|t| !t.is_empty()));
    let variables = d["templating"]["list"].as_array().expect("templating.list");
    let datasource = variables.iter().find(|v| v["name"] == "datasource").expect("a `datasource` variable");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");

    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut queries = 0;
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(ids.insert(panel["id"].as_u64().expect("every panel has an id")), "panel id repeated: {title}");
        for key in ["h", "w", "x", "y"] {
            assert!(panel["gridPos"][key].is_u64(), "panel {title:?} lacks gridPos.{key}");
        }
        if panel["type"] == "row" {
            continue;
        }
        assert!(!title.is_empty(), "a panel without a title");
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "panel {title:?} must use the datasource variable");
        let targets = panel["targets"].as_array().filter(|t| !t.is_empty());
        for target in targets.unwrap_or_else(|| panic!("panel {title:?} has no queries")) {
            let expr = target["expr"].as_str().unwrap_or_default();
            assert!(expr.contains("enigma_") || expr.contains("up{"), "panel {title:?}: query {expr:?}");
            assert_eq!(expr.matches('(').count(), expr.matches(')').count(), "unbalanced: {expr}");
            assert_eq!(target["datasource"]["uid"], "${datasource}", "panel {title:?}: a query's datasource");
            queries += 1;
        }
    }
    assert!(panels.iter().filter(|p| p["type"] != "row").count() >= 10, "a dashboard worth its name");
    assert!(queries >= 20, "{queries} queries");
}

#[test]
fn alert_rules_are_complete_and_their_runbooks_exist() {
    let text = read(ALERTS);
    assert!(text.lines().any(|l| l == "groups:"), "{ALERTS} starts a `groups:` list");
    assert!(text.contains("rules:"), "{ALERTS} has rules");
    let headings: BTreeSet<String> =
        read(OPERATIONS).lines().filter(|l| l.starts_with('#')).map(|l| anchor(l.trim_start_matches('#'))).collect();
    let rules = alert_rules(&text);
    assert!(rules.len() >= 7, "only {} alerts", rules.len());
    let mut names = BTreeSet::new();
    for rule in &rules {
        let name = &rule.name;
        assert!(names.insert(name.clone()), "alert {name} defined twice");
        let expr = rule.field("expr").unwrap_or_else(|| panic!("{name}: no expr"));
        assert!(!expr.is_empty(), "{name}: empty expr");
        let duration = rule.field("for").unwrap_or_else(|| panic!("{name}: no `for`"));
        assert!(
            duration.len() > 1
                && duration[..duration.len() - 1].chars().all(|c| c.is_ascii_digit())
                && duration.ends_with(['s', 'm', 'h']),
            "{name}: for: {duration:?}"
        );
        let severity = rule.nested("labels", "severity").unwrap_or_else(|| panic!("{name}: no labels.severity"));
        assert!(["critical", "warning", "info"].contains(&severity.as_str()), "{name}: severity {severity}");
        let summary = rule.nested("annotations", "summary").unwrap_or_else(|| panic!("{name}: no summary"));
        assert!(!summary.is_empty(), "{name}: empty summary");
        assert!(rule.nested("annotations", "description").is_some(), "{name}: no description");
        let runbook = rule.nested("annotations", "runbook_url").unwrap_or_else(|| panic!("{name}: no runbook_url"));
        let section = runbook
            .strip_prefix(&format!("{OPERATIONS}#"))
            .unwrap_or_else(|| panic!("{name}: runbook {runbook:?} is not a section of {OPERATIONS}"));
        assert!(headings.contains(section), "{name}: {OPERATIONS} has no section #{section}");
    }
    for wanted in [
        "EnigmaReplicaDown",
        "EnigmaRedisErrors",
        "EnigmaRedisLinkDown",
        "EnigmaDeliveryLatencyHigh",
        "EnigmaSendsUnavailable",
        "EnigmaInboxFullRejections",
        "EnigmaSlowConsumers",
        "EnigmaRedisDeadLinks",
    ] {
        assert!(names.contains(wanted), "no alert {wanted}");
    }
}

/// Real traffic moves every series (counters with labels appear only once they count
/// something), then the scrape is compared with what the dashboard and alerts use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_use_only_series_the_server_exports() {
    const CAPACITY: usize = 40;
    let redis = Redis::start();
    let s = Server::start(
        &ServerConfig::redis(&redis)
            .with("ENIGMA__REDIS__COMMAND_TIMEOUT_MS", 300)
            .with("ENIGMA__REDIS__PROBE_INTERVAL_MS", 100)
            .with("ENIGMA__LIMITS__INBOX_CAPACITY", CAPACITY)
            .with("ENIGMA__LIMITS__OUTBOUND_QUEUE_FRAMES", 4)
            .with("ENIGMA__LIMITS__OUTBOUND_QUEUE_BYTES", 256 * 1024)
            .with("ENIGMA__LIMITS__SEND_TIMEOUT_MS", 200),
    );
    let (alice, bob, carol, dave) = (s.new_user().await, s.new_user().await, s.new_user().await, s.new_user().await);
    // The key directory publishes them (its publish-time histogram exists from then on).
    wait_until("an epoch to be published", DEADLINE, || async { s.metric("enigma_directory_epoch").await >= 1.0 })
        .await;
    assert_eq!(s.get(&format!("/connect/{bob}")).await.0, 200);
    assert_eq!(s.get("/connect/00000000-0000-4000-8000-000000000000").await.0, 404);

    // Live delivery and an acknowledgement.
    let mut a = s.connect(&alice).await;
    let mut b = s.connect_v1(&bob).await;
    a.send_msg(&alice, &bob, "hello").await;
    let hello = b.recv_json().await;
    assert_eq!(hello["payload"], "hello");
    b.send_json(json!({"ack": hello["id"]})).await;

    // Dave is offline: his inbox fills up, then refuses. Other refusals on the way.
    for i in 0..CAPACITY {
        a.send_msg(&alice, &dave, &format!("stored {i}")).await;
    }
    a.send_msg(&alice, &dave, "one too many").await;
    assert_eq!(a.recv_json().await["code"], "inbox_full");
    a.send_msg(&bob, &dave, "spoofed").await;
    assert_eq!(a.recv_json().await["code"], "forbidden");
    a.send_msg(&alice, &dave, &"x".repeat(65 * 1024)).await;
    assert_eq!(a.recv_json().await["code"], "payload_too_large");
    a.send_msg(&alice, "00000000-0000-4000-8000-000000000000", "nobody").await;
    assert_eq!(a.recv_json().await["code"], "user_not_found");

    // Dave connects and reads his backlog.
    let mut d = s.connect_v1(&dave).await;
    let mut ids = Vec::new();
    for i in 0..CAPACITY {
        let frame = d.recv_json().await;
        assert_eq!(frame["payload"], format!("stored {i}"));
        ids.push(frame["id"].clone());
    }
    d.send_json(json!({ "ack": ids })).await;

    // Bob connects again: the older socket is displaced.
    let _b2 = s.connect_v1(&bob).await;
    assert_eq!(b.expect_close().await.0, 4409);

    // Carol never reads: she is cut off as a slow consumer.
    let _c = s.connect(&carol).await;
    let big = "s".repeat(60 * 1024);
    let start = Instant::now();
    let mut sent = 0;
    while s.metric("enigma_slow_consumer_disconnects_total").await < 1.0 {
        assert!(start.elapsed() < CONVERGE && sent < 2000, "no slow-consumer disconnect after {sent} messages");
        for _ in 0..10 {
            a.send_msg(&alice, &carol, &big).await;
        }
        sent += 10;
    }

    // Redis freezes: a send is refused as unavailable, the probe finds the link dead.
    redis.pause();
    a.send_msg(&alice, &bob, "during the freeze").await;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let frame = a.recv_json().await;
        if frame["code"] == "unavailable" {
            break;
        }
        // Carol's full inbox may have refused some of the slow-reader phase's sends.
        assert_eq!(frame["code"], "inbox_full", "unexpected frame {frame}");
        assert!(Instant::now() < deadline, "no `unavailable` answer while Redis is frozen");
    }
    wait_until("a dead link to be detected", CONVERGE, || async {
        s.metric("enigma_redis_dead_links_total").await >= 1.0
    })
    .await;
    redis.resume();
    wait_until("readiness after Redis thaws", CONVERGE, || async { s.get("/readyz").await.0 == 200 }).await;

    let scrape = Scrape::of(&s).await;
    assert_eq!(scrape.value("enigma_redis_link_up"), 1.0);
    let exported: BTreeSet<String> = scrape.types.keys().filter(|n| n.starts_with("enigma_")).cloned().collect();
    let dashboard = dashboard_text();
    let alerts = read(ALERTS);

    // Every name the dashboard and the alerts use is a series the server exports.
    for (file, text) in [(DASHBOARD, &dashboard), (ALERTS, &alerts)] {
        let unknown: Vec<String> = metric_names(text).into_iter().filter(|n| scrape.family(n).is_none()).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses series the server does not export: {unknown:?}\nexported: {exported:?}"
        );
        // Equality matchers name label values the server really emits (`reason="inbox_full"`, `le="1"`).
        for (name, label, value) in equality_matchers(text) {
            assert!(
                scrape.has_series_with(&name, &label, &value),
                "{file}: no series {name}{{{label}=\"{value}\"}} on /metrics"
            );
        }
    }

    // Every series the server exports is on the dashboard and in the metrics reference.
    let on_dashboard: BTreeSet<String> = metric_names(&dashboard).iter().filter_map(|n| scrape.family(n)).collect();
    let missing: Vec<&String> = exported.difference(&on_dashboard).collect();
    assert!(missing.is_empty(), "{DASHBOARD} shows nothing of {missing:?}");
    let documented = metric_names(&read(OPERATIONS));
    let undocumented: Vec<&String> = exported.difference(&documented).collect();
    assert!(undocumented.is_empty(), "{OPERATIONS} does not describe {undocumented:?}");
    assert!(exported.len() >= 21, "only {} enigma_ series exported: {exported:?}", exported.len());
}

#[test]
fn token_and_matcher_extraction() {
    let text = r#"sum(rate(enigma_a_total{job=~"x", reason="inbox_full"}[5m])) / xenigma_no + enigma_b_bucket{le="1"}"#;
    assert_eq!(metric_names(text), ["enigma_a_total", "enigma_b_bucket"].map(String::from).into());
    assert_eq!(
        equality_matchers(text),
        vec![
            ("enigma_a_total".into(), "reason".into(), "inbox_full".into()),
            ("enigma_b_bucket".into(), "le".into(), "1".into())
        ]
    );
    let rules = alert_rules(
        "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up == 0\n        for: 1m\n        labels:\n          severity: warning\n      - alert: B\n        expr: >-\n          x\n        for: 5m\n  - name: h\n",
    );
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0].field("for").as_deref(), Some("1m"));
    assert_eq!(rules[0].nested("labels", "severity").as_deref(), Some("warning"));
    assert_eq!(rules[1].field("for").as_deref(), Some("5m"));
    assert_eq!(rules[1].nested("labels", "severity"), None);
    assert_eq!(anchor(" EnigmaReplicaDown"), "enigmareplicadown");
    assert_eq!(anchor("Redis sizing & persistence"), "redis-sizing--persistence");
}

/// The image's data directory exists, nonroot's and private: a named volume mounted there is
/// seeded from it, so the server (uid 65532) can create its data file in it and nobody else can
/// read it. (No Docker engine in the tests: the Dockerfile is read.)
#[test]
fn the_image_has_a_private_data_directory_for_nonroot() {
    let dockerfile = read("deploy/Dockerfile");
    let lines: Vec<&str> = dockerfile.lines().map(str::trim).filter(|l| !l.starts_with('#')).collect();
    let made = lines.iter().position(|l| *l == "RUN install -d -m 0700 /out/home/enigma-data");
    let copied = lines.iter().position(|l| *l == "COPY --from=builder --chown=65532:65532 /out/home/ /home/nonroot/");
    let runtime = lines.iter().position(|l| l.starts_with("FROM gcr.io/distroless/"));
    let (Some(made), Some(copied), Some(runtime)) = (made, copied, runtime) else {
        panic!(
            "the builder makes /out/home/enigma-data (0700) and the runtime stage copies it, owned by 65532, into /home/nonroot"
        );
    };
    assert!(made < runtime && runtime < copied, "made in the builder, copied into the runtime image");
    assert!(lines.contains(&"WORKDIR /home/nonroot"), "data_dir (enigma-data) is relative to the working directory");
    assert!(lines.contains(&"USER nonroot:nonroot"));
}
