//! The dead-letter destination (`FORWARDER_DLQ_URL`): where what can never be forwarded
//! goes, with its original body unchanged and attributes that say why.

use super::sender::{Attribute, Delivery, Outgoing, SendOutcome, SqsSender};
use crate::internal_events::{DeadLettered, InternalEvent};
use crate::metrics::Metrics;
use crate::outcome::Stage;

/// Why a message is dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    /// Where the event stopped.
    pub stage: Stage,
    /// Stable label: a decode reason (`invalid_json`, …) or an error class
    /// (`queue_not_found`, `access_token_invalid`, …).
    pub reason: &'static str,
    /// The service's error code, if any.
    pub error_code: Option<String>,
    /// Human-readable detail, shortened.
    pub detail: String,
}

/// One message to dead-letter.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    /// The original body, unchanged.
    pub body: &'a str,
    /// The source message's id, to trace it back.
    pub source_message_id: &'a str,
    /// Why.
    pub reason: Reason,
}

/// The dead-letter queue.
#[derive(Debug, Clone)]
pub struct DeadLetterQueue {
    /// Sends to the DLQ.
    sender: SqsSender,
    /// Whether the DLQ is FIFO (it then needs group and deduplication ids).
    fifo: bool,
    /// `forwarder.dead_letter{stage, reason}`.
    metrics: Metrics,
}

/// Longest `detail` attribute kept.
const MAX_DETAIL: usize = 1024;

impl DeadLetterQueue {
    /// A DLQ sending with `sender`.
    pub fn new(sender: SqsSender, fifo: bool, metrics: Metrics) -> Self {
        Self {
            sender,
            fifo,
            metrics,
        }
    }

    /// The DLQ's URL.
    pub fn queue_url(&self) -> &str {
        self.sender.queue_url()
    }

    /// Sends each message with attributes `reason`, `stage`, `error_code`, `detail` and
    /// `source_message_id`; one delivery per message, in order.
    pub async fn send(&self, letters: &[DeadLetter<'_>]) -> Vec<Delivery> {
        let outgoing: Vec<Outgoing<'_>> = letters
            .iter()
            .map(|l| {
                let mut attributes = vec![
                    Attribute::string("reason", l.reason.reason),
                    Attribute::string("stage", l.reason.stage.as_str()),
                    Attribute::string("source_message_id", l.source_message_id),
                ];
                if let Some(code) = &l.reason.error_code {
                    attributes.push(Attribute::string("error_code", code.clone()));
                }
                if !l.reason.detail.is_empty() {
                    attributes.push(Attribute::string("detail", truncate(&l.reason.detail)));
                }
                Outgoing {
                    body: l.body.into(),
                    attributes,
                    group_id: self.fifo.then(|| "dead-letter".to_string()),
                    dedup_id: self.fifo.then(|| deduplication_id(l.source_message_id)),
                    trace_header: None,
                    after: None,
                }
            })
            .collect();
        let deliveries: Vec<Delivery> = self
            .sender
            .send(&outgoing)
            .await
            .into_iter()
            .map(SendOutcome::delivery)
            .collect();
        for (l, d) in letters.iter().zip(&deliveries) {
            if d.is_ok() {
                DeadLettered {
                    message_id: l.source_message_id,
                    stage: l.reason.stage,
                    reason: l.reason.reason,
                }
                .emit(&self.metrics);
            }
        }
        deliveries
    }
}

/// A FIFO deduplication id from a source message id: SQS takes 1 to 128 characters
/// from `!` to `~`, so anything else (the space of replay's `line 3`) becomes `_`.
fn deduplication_id(source_message_id: &str) -> String {
    let id: String = source_message_id
        .chars()
        .take(128)
        .map(|c| if ('!'..='~').contains(&c) { c } else { '_' })
        .collect();
    if id.is_empty() {
        "_".into()
    } else {
        id
    }
}

fn truncate(s: &str) -> String {
    if s.len() <= MAX_DETAIL {
        return s.to_string();
    }
    let mut end = MAX_DETAIL;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deduplication_ids_are_what_sqs_accepts() {
        assert_eq!(deduplication_id("line 3"), "line_3");
        assert_eq!(deduplication_id("0a1b-c2"), "0a1b-c2");
        assert_eq!(deduplication_id(""), "_");
        assert_eq!(deduplication_id(&"é".repeat(200)).len(), 128);
    }
}
