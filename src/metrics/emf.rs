//! `emf`: CloudWatch Embedded Metric Format, JSON lines on stdout that CloudWatch Logs
//! turns into metrics with no agent (the natural backend inside Lambda).
//!
//! Per flush interval, metrics are aggregated ([`Aggregator`]); each set of tags makes
//! one line, whose tags are its dimensions (at most 30) and whose metrics (at most 100
//! per line) are counters (`Count`, their sum), timers (`Milliseconds`, their values, at
//! most 100 per line) and gauges (`None`, the last value).

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Map, Value as Json};

use super::backend::{Aggregate, Aggregator, Backend, Key, Sample};
use super::Flush;

/// EMF's bound on metrics per line, and on values per metric.
pub const MAX_METRICS: usize = 100;
/// EMF's bound on dimensions per dimension set.
pub const MAX_DIMENSIONS: usize = 30;
/// The CloudWatch namespace of every metric.
pub const NAMESPACE: &str = "sqs-forwarder";

/// Aggregates, then writes EMF lines at each flush.
pub struct EmfBackend {
    /// The interval so far.
    aggregator: Aggregator,
    /// Where lines go: stdout, or a test's buffer.
    out: Mutex<Box<dyn Write + Send>>,
}

impl EmfBackend {
    /// Lines to stdout.
    pub fn stdout() -> Self {
        Self::to(Box::new(std::io::stdout()))
    }

    /// Lines to `out`.
    pub fn to(out: Box<dyn Write + Send>) -> Self {
        Self {
            aggregator: Aggregator::default(),
            out: Mutex::new(out),
        }
    }
}

impl Backend for EmfBackend {
    fn record(&self, sample: &Sample<'_>) {
        self.aggregator.add(sample);
    }
}

impl Flush for EmfBackend {
    fn flush_within(&self, _timeout: Duration) {
        let taken = self.aggregator.take();
        if taken.is_empty() {
            return;
        }
        let now = chrono::Utc::now().timestamp_millis();
        let Ok(mut out) = self.out.lock() else { return };
        for line in lines(&taken, now) {
            // stdout closed or full: metrics are lost, forwarding is not disturbed.
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    }
}

/// One metric's entries for a line: its name, unit, and value (a number or up to 100).
type Entry<'a> = (&'a str, &'static str, Json);

/// The EMF lines of an interval: one per tag set, split to stay within EMF's bounds.
pub fn lines(taken: &BTreeMap<Key, Aggregate>, timestamp_ms: i64) -> Vec<String> {
    let mut by_tags: BTreeMap<&[(String, String)], Vec<Entry<'_>>> = BTreeMap::new();
    for ((name, tags), aggregate) in taken {
        let entries = by_tags.entry(tags.as_slice()).or_default();
        match aggregate {
            Aggregate::Count(n) => entries.push((name, "Count", json!(n))),
            Aggregate::Gauge(v) => entries.push((name, "None", json!(v))),
            Aggregate::Millis(values) => {
                for chunk in values.chunks(MAX_METRICS) {
                    entries.push((name, "Milliseconds", json!(chunk)));
                }
            }
            Aggregate::Samples(values) => {
                for chunk in values.chunks(MAX_METRICS) {
                    entries.push((name, "Count", json!(chunk)));
                }
            }
        }
    }
    let mut out = Vec::new();
    for (tags, entries) in by_tags {
        // A line holds a metric once: a timer split in chunks goes on several lines.
        let mut pending = entries;
        while !pending.is_empty() {
            let mut line: Vec<Entry<'_>> = Vec::new();
            let mut rest = Vec::new();
            for e in pending {
                if line.len() < MAX_METRICS && !line.iter().any(|l| l.0 == e.0) {
                    line.push(e);
                } else {
                    rest.push(e);
                }
            }
            out.push(line_of(tags, &line, timestamp_ms));
            pending = rest;
        }
    }
    out
}

fn line_of(tags: &[(String, String)], entries: &[Entry<'_>], timestamp_ms: i64) -> String {
    let dimensions: Vec<&str> = tags
        .iter()
        .take(MAX_DIMENSIONS)
        .map(|(k, _)| k.as_str())
        .collect();
    let metrics: Vec<Json> = entries
        .iter()
        .map(|(name, unit, _)| json!({"Name": name, "Unit": unit}))
        .collect();
    let mut root = Map::new();
    root.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [dimensions],
                "Metrics": metrics,
            }],
        }),
    );
    for (k, v) in tags {
        root.insert(k.clone(), json!(v));
    }
    for (name, _, value) in entries {
        root.insert(name.to_string(), value.clone());
    }
    Json::Object(root).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::backend::Value;

    fn sample<'a>(name: &'a str, tags: &'a [(&'a str, &'a str)], value: Value) -> Sample<'a> {
        Sample { name, tags, value }
    }

    /// Checks a line against the EMF specification's shape and bounds.
    fn valid(line: &str) -> Json {
        let v: Json = serde_json::from_str(line).unwrap();
        let aws = &v["_aws"];
        assert!(aws["Timestamp"].is_i64(), "{line}");
        let directives = aws["CloudWatchMetrics"].as_array().unwrap();
        assert_eq!(directives.len(), 1);
        let d = &directives[0];
        assert_eq!(d["Namespace"], NAMESPACE);
        for set in d["Dimensions"].as_array().unwrap() {
            let set = set.as_array().unwrap();
            assert!(set.len() <= MAX_DIMENSIONS);
            for dim in set {
                assert!(
                    v[dim.as_str().unwrap()].is_string(),
                    "dimension value: {line}"
                );
            }
        }
        let metrics = d["Metrics"].as_array().unwrap();
        assert!(!metrics.is_empty() && metrics.len() <= MAX_METRICS);
        for m in metrics {
            let name = m["Name"].as_str().unwrap();
            assert!(["Count", "Milliseconds", "None"].contains(&m["Unit"].as_str().unwrap()));
            let value = &v[name];
            assert!(
                value.is_number()
                    || value
                        .as_array()
                        .is_some_and(|a| a.len() <= MAX_METRICS && a.iter().all(Json::is_number)),
                "{name}: {line}"
            );
        }
        v
    }

    /// A writer whose bytes the test reads back.
    struct Shared(std::sync::Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_follow_the_specification_and_its_bounds() {
        let buf = std::sync::Arc::new(Mutex::new(Vec::<u8>::new()));
        let emf = EmfBackend::to(Box::new(Shared(buf.clone())));
        let ok = [
            ("env", "prod"),
            ("plugin", "amazon-sqs"),
            ("success", "true"),
        ];
        for _ in 0..5 {
            emf.record(&sample(
                "data-forwarding.http_response",
                &ok,
                Value::Count(1),
            ));
        }
        for i in 0..150 {
            emf.record(&sample(
                "forwarder.send_batch.duration",
                &ok[..1],
                Value::Millis(i as f64),
            ));
        }
        emf.record(&sample(
            "forwarder.events.in_flight",
            &ok[..1],
            Value::Gauge(9),
        ));
        // 120 distinct metrics with one tag set: two lines.
        let names: Vec<String> = (0..120).map(|i| format!("m{i}")).collect();
        for n in &names {
            emf.record(&sample(n, &[("k", "v")], Value::Count(2)));
        }
        // 35 tags: only 30 are dimensions.
        let many: Vec<(String, String)> = (0..35).map(|i| (format!("t{i}"), "x".into())).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        emf.record(&sample("wide", &many, Value::Count(1)));
        emf.flush_within(Duration::ZERO);

        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        let lines: Vec<Json> = text.lines().map(valid).collect();
        let http = lines
            .iter()
            .find(|l| l.get("data-forwarding.http_response").is_some())
            .unwrap();
        assert_eq!(
            http["data-forwarding.http_response"], 5,
            "exact, never sampled"
        );
        assert_eq!(http["plugin"], "amazon-sqs");
        assert_eq!(
            http["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0],
            json!(["env", "plugin", "success"])
        );
        let timer_values: usize = lines
            .iter()
            .filter_map(|l| l["forwarder.send_batch.duration"].as_array())
            .map(Vec::len)
            .sum();
        assert_eq!(timer_values, 150, "every value, 100 per line at most");
        assert_eq!(
            lines.iter().filter(|l| l["k"] == "v").count(),
            2,
            "120 metrics: 2 lines"
        );
        let wide = lines.iter().find(|l| l.get("wide").is_some()).unwrap();
        assert_eq!(
            wide["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0]
                .as_array()
                .unwrap()
                .len(),
            30
        );
        buf.lock().unwrap().clear();
        emf.flush_within(Duration::ZERO);
        assert!(
            buf.lock().unwrap().is_empty(),
            "nothing new, nothing written"
        );
    }
}
