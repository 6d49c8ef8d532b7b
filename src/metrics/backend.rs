//! Backends other than statsd (`FORWARDER_METRICS_BACKEND`): each receives every metric
//! of the catalogue as a [`Sample`], already named with the prefix and tagged with the
//! global tags, so one place ([`super`]) still declares each metric.
//!
//! - [`LogBackend`] (`log`): each metric as a `tracing` event at debug, as Sentry's
//!   logging backend.
//! - [`super::emf::EmfBackend`] (`emf`) and [`super::datadog::DatadogBackend`]
//!   (`datadog-api`) aggregate per flush interval in an [`Aggregator`], then write.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use super::Flush;

/// What a metric records.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// A counter's increment.
    Count(u64),
    /// A timer's duration, in milliseconds.
    Millis(f64),
    /// A gauge's value.
    Gauge(u64),
    /// One value of a distribution (a count, not a duration).
    Sample(f64),
}

/// One metric as emitted: its full name, its tags (global first), its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    /// The name, with the prefix.
    pub name: &'a str,
    /// Global tags, then the metric's own.
    pub tags: &'a [(&'a str, &'a str)],
    /// What it records.
    pub value: Value,
}

/// A metrics backend: takes samples without blocking, sends them on its own time.
pub trait Backend: Flush {
    /// Records one sample. Must never block nor fail the caller.
    fn record(&self, sample: &Sample<'_>);
}

/// `log`: each metric a `tracing` event at debug.
#[derive(Debug, Default)]
pub struct LogBackend;

impl Backend for LogBackend {
    fn record(&self, s: &Sample<'_>) {
        let tags = s
            .tags
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect::<Vec<_>>()
            .join(",");
        match s.value {
            Value::Count(n) => tracing::debug!(metric = s.name, kind = "counter", value = n, tags),
            Value::Millis(ms) => {
                tracing::debug!(metric = s.name, kind = "timer", value_ms = ms, tags)
            }
            Value::Gauge(v) => tracing::debug!(metric = s.name, kind = "gauge", value = v, tags),
            Value::Sample(v) => {
                tracing::debug!(metric = s.name, kind = "distribution", value = v, tags)
            }
        }
    }
}

impl Flush for LogBackend {
    fn flush_within(&self, _timeout: Duration) {}
}

/// A metric's identity in an aggregate: its name and its tags, in order.
pub type Key = (String, Vec<(String, String)>);

/// What a flush interval holds for one [`Key`].
#[derive(Debug, Clone, PartialEq)]
pub enum Aggregate {
    /// The sum of a counter's increments.
    Count(u64),
    /// A timer's durations, in milliseconds, in the order recorded.
    Millis(Vec<f64>),
    /// A gauge's last value.
    Gauge(u64),
    /// A distribution's values, in the order recorded.
    Samples(Vec<f64>),
}

/// Sums counters, keeps timers' values and gauges' last values, per flush interval.
#[derive(Debug, Default)]
pub struct Aggregator {
    /// The interval so far.
    current: Mutex<BTreeMap<Key, Aggregate>>,
}

/// Bound on a timer's values kept per interval: past it, later values are not kept (the
/// count still is, in the values' length up to the bound). Memory stays bounded.
const MAX_TIMER_VALUES: usize = 10_000;

impl Aggregator {
    /// Adds a sample to the current interval.
    pub fn add(&self, s: &Sample<'_>) {
        let key: Key = (
            s.name.to_string(),
            s.tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        let Ok(mut current) = self.current.lock() else {
            return;
        };
        match (current.get_mut(&key), s.value) {
            (Some(Aggregate::Count(sum)), Value::Count(n)) => *sum += n,
            (Some(Aggregate::Millis(values)), Value::Millis(ms)) => {
                if values.len() < MAX_TIMER_VALUES {
                    values.push(ms);
                }
            }
            (Some(Aggregate::Gauge(last)), Value::Gauge(v)) => *last = v,
            (Some(Aggregate::Samples(values)), Value::Sample(v)) => {
                if values.len() < MAX_TIMER_VALUES {
                    values.push(v);
                }
            }
            (_, value) => {
                current.insert(
                    key,
                    match value {
                        Value::Count(n) => Aggregate::Count(n),
                        Value::Millis(ms) => Aggregate::Millis(vec![ms]),
                        Value::Gauge(v) => Aggregate::Gauge(v),
                        Value::Sample(v) => Aggregate::Samples(vec![v]),
                    },
                );
            }
        }
    }

    /// Takes the interval's aggregates, leaving an empty one.
    pub fn take(&self) -> BTreeMap<Key, Aggregate> {
        self.current
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_sum_timers_keep_values_gauges_keep_the_last() {
        let a = Aggregator::default();
        let tags = [("plugin", "amazon-sqs"), ("success", "true")];
        for _ in 0..3 {
            a.add(&Sample {
                name: "data-forwarding.http_response",
                tags: &tags,
                value: Value::Count(1),
            });
        }
        a.add(&Sample {
            name: "t",
            tags: &[],
            value: Value::Millis(2.5),
        });
        a.add(&Sample {
            name: "t",
            tags: &[],
            value: Value::Millis(4.0),
        });
        a.add(&Sample {
            name: "g",
            tags: &[],
            value: Value::Gauge(7),
        });
        a.add(&Sample {
            name: "g",
            tags: &[],
            value: Value::Gauge(5),
        });
        let got = a.take();
        let key = |n: &str, t: &[(&str, &str)]| -> Key {
            (
                n.to_string(),
                t.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        assert_eq!(
            got[&key("data-forwarding.http_response", &tags)],
            Aggregate::Count(3)
        );
        assert_eq!(got[&key("t", &[])], Aggregate::Millis(vec![2.5, 4.0]));
        assert_eq!(got[&key("g", &[])], Aggregate::Gauge(5));
        assert!(a.take().is_empty(), "a new interval");
    }
}
