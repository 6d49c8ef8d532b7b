//! What a source message's attributes become at the destination
//! (`FORWARDER_FORWARD_ATTRIBUTES`), and the trace context that always goes on.
//!
//! Order of precedence, within SQS's 10 attributes per message: the forwarder's own
//! (`event_id`, `project_id`, `organization_id`), then the W3C trace context
//! (`traceparent`, `tracestate`) and a test event's mark (`sqs_forwarder_test`), then
//! the source's attributes the setting lets through,
//! in the order they came. What does not fit is dropped and counted.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::aws::{Attribute, MAX_ATTRIBUTES};
use crate::internal_events::{AttributesDropped, InternalEvent};
use crate::metrics::Metrics;

/// The W3C trace context's message attributes: forwarded whatever the setting.
pub const TRACE_CONTEXT: [&str; 2] = ["traceparent", "tracestate"];

/// The attribute that marks a test event (`sqs-forwarder check --send-test-event`):
/// forwarded whatever the setting, so a consumer can tell it from real events.
pub const TEST_EVENT_ATTRIBUTE: &str = "sqs_forwarder_test";

/// Whether `name` always crosses the hop: the trace context, the test event's mark.
fn always_crosses(name: &str) -> bool {
    TRACE_CONTEXT.contains(&name) || name == TEST_EVENT_ATTRIBUTE
}

/// Which of the source message's own attributes go on to the destination.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum ForwardAttributes {
    /// None (the default): only the forwarder's own and the trace context.
    #[default]
    None,
    /// All of them.
    All,
    /// Those named.
    Names(Vec<String>),
}

impl std::str::FromStr for ForwardAttributes {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "" | "none" => Ok(ForwardAttributes::None),
            "all" => Ok(ForwardAttributes::All),
            list => {
                let names: Vec<String> = list.split(',').map(|n| n.trim().to_string()).collect();
                if let Some(bad) = names.iter().find(|n| !valid_name(n)) {
                    return Err(format!(
                        "{bad:?} is not an attribute name; expected none, all, or names of letters, digits, _, - and . separated by commas"
                    ));
                }
                Ok(ForwardAttributes::Names(names))
            }
        }
    }
}

impl std::fmt::Display for ForwardAttributes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ForwardAttributes::None => f.write_str("none"),
            ForwardAttributes::All => f.write_str("all"),
            ForwardAttributes::Names(names) => f.write_str(&names.join(",")),
        }
    }
}

/// SQS's rule for an attribute name: up to 256 of `A-Za-z0-9_-.`, no leading `AWS.` or
/// `Amazon.`, no `..`, not starting or ending with `.`.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..")
        && !name.to_ascii_lowercase().starts_with("aws.")
        && !name.to_ascii_lowercase().starts_with("amazon.")
}

impl ForwardAttributes {
    /// The message attribute names a receive must ask for: `All`, or the names (the
    /// trace context's included).
    pub fn receive_names(&self) -> Vec<String> {
        let mut names: Vec<String> = TRACE_CONTEXT.iter().map(|n| n.to_string()).collect();
        match self {
            ForwardAttributes::None => {}
            ForwardAttributes::All => return vec!["All".to_string()],
            ForwardAttributes::Names(list) => names.extend(
                list.iter()
                    .filter(|n| !names.contains(n))
                    .cloned()
                    .collect::<Vec<_>>(),
            ),
        }
        names
    }

    fn lets_through(&self, name: &str) -> bool {
        match self {
            ForwardAttributes::None => false,
            ForwardAttributes::All => true,
            ForwardAttributes::Names(list) => list.iter().any(|n| n == name),
        }
    }

    /// Adds to `own` (the forwarder's attributes) the trace context and the source's
    /// attributes this setting lets through, up to `room` attributes in all (SQS's 10,
    /// less what a pointer may add); what does not fit is counted in
    /// `forwarder.attributes.dropped`.
    pub fn extend(
        &self,
        own: &mut Vec<Attribute>,
        source: &[Attribute],
        room: usize,
        metrics: &Metrics,
    ) {
        let taken = |own: &[Attribute], name: &str| own.iter().any(|a| a.name == name);
        let trace = source.iter().filter(|a| always_crosses(&a.name));
        let passed = source
            .iter()
            .filter(|a| !always_crosses(&a.name) && self.lets_through(&a.name));
        let mut dropped = Vec::new();
        for a in trace.chain(passed) {
            // The forwarder's own attribute wins a name clash.
            if taken(own, &a.name) {
                continue;
            }
            if own.len() < room.min(MAX_ATTRIBUTES) {
                own.push(a.clone());
            } else {
                dropped.push(a.name.as_ref());
            }
        }
        if !dropped.is_empty() {
            AttributesDropped {
                names: &dropped,
                first: !LOGGED.swap(true, Ordering::Relaxed),
            }
            .emit(metrics);
        }
    }
}

/// Whether this run already logged a dropped attribute (logged once per run).
static LOGGED: AtomicBool = AtomicBool::new(false);

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(name: &'static str) -> Attribute {
        Attribute::string(name, "v")
    }

    #[test]
    fn settings_parse_and_bad_names_are_refused() {
        assert_eq!("none".parse(), Ok(ForwardAttributes::None));
        assert_eq!("all".parse(), Ok(ForwardAttributes::All));
        assert_eq!(
            " a, b.c ".parse(),
            Ok(ForwardAttributes::Names(vec!["a".into(), "b.c".into()]))
        );
        for bad in ["a,,b", "a b", "AWS.x", ".a", "a..b", "é"] {
            assert!(bad.parse::<ForwardAttributes>().is_err(), "{bad}");
        }
        assert_eq!(
            ForwardAttributes::None.receive_names(),
            ["traceparent", "tracestate"]
        );
        assert_eq!(
            ForwardAttributes::Names(vec!["x".into(), "tracestate".into()]).receive_names(),
            ["traceparent", "tracestate", "x"]
        );
        assert_eq!(ForwardAttributes::All.receive_names(), ["All"]);
    }

    #[test]
    fn own_attributes_win_trace_context_comes_next_and_the_rest_is_dropped_past_ten() {
        let (sink, metrics) = crate::metrics::testing::spy();
        let own = || {
            vec![
                Attribute::string("event_id", "e"),
                Attribute::number("project_id", 1),
                Attribute::number("organization_id", 2),
            ]
        };
        let mut source = vec![Attribute::string("event_id", "forged"), attr("a")];
        let names = ["b", "c", "d", "e", "f", "g", "h"];
        source.extend(names.iter().map(|n| attr(n)));
        source.push(attr("traceparent"));

        let mut out = own();
        ForwardAttributes::None.extend(&mut out, &source, 10, &metrics);
        let got: Vec<&str> = out.iter().map(|a| a.name.as_ref()).collect();
        assert_eq!(
            got,
            ["event_id", "project_id", "organization_id", "traceparent"]
        );

        let mut out = own();
        ForwardAttributes::All.extend(&mut out, &source, 10, &metrics);
        let got: Vec<&str> = out.iter().map(|a| a.name.as_ref()).collect();
        assert_eq!(
            got,
            [
                "event_id",
                "project_id",
                "organization_id",
                "traceparent",
                "a",
                "b",
                "c",
                "d",
                "e",
                "f"
            ]
        );
        assert_eq!(
            out[0].text(),
            Some("e"),
            "the forwarder's own event_id wins"
        );
        assert_eq!(
            sink.lines(),
            ["forwarder.attributes.dropped:2|c"],
            "g and h did not fit"
        );

        let mut out = own();
        ForwardAttributes::Names(vec!["c".into()]).extend(&mut out, &source, 10, &metrics);
        assert_eq!(out.len(), 5);
        assert_eq!(out[4].name, "c");

        // Room kept for a pointer's attribute: one fewer.
        let mut out = own();
        ForwardAttributes::All.extend(&mut out, &source, 9, &metrics);
        assert_eq!(out.len(), 9);
        assert_eq!(sink.lines(), ["forwarder.attributes.dropped:3|c"]);
    }
}
