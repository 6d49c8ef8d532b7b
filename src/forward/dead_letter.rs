//! The dead-letter destination (`FORWARDER_DLQ_URL`): where what can never be forwarded
//! goes, with its original body unchanged and attributes that say why.

use super::offload::Offloader;
use super::router::LimitClock;
use super::sender::{local, too_long, Attribute, Delivery, Outgoing, SqsSender};
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
    /// Where a message too large for the DLQ's own `MaximumMessageSize` goes, a pointer
    /// to it in its place (`FORWARDER_S3_BUCKET`); `None`: such a message stays in the
    /// source, never sent to be refused.
    offloader: Option<Offloader>,
    /// When the DLQ's `MaximumMessageSize` is read again (shared by every clone).
    limit: LimitClock,
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
            offloader: None,
            limit: LimitClock::read_now(),
            metrics,
        }
    }

    /// The same DLQ, a message too large for it stored with `offloader` and a pointer
    /// sent in its place.
    pub fn with_offloader(mut self, offloader: Option<Offloader>) -> Self {
        self.offloader = offloader;
        self
    }

    /// The DLQ's message size bound, as its `MaximumMessageSize` says (`None`: SQS's).
    pub fn follow_queue_limit(&self, queue_max: Option<usize>) {
        self.sender.follow_queue_limit(queue_max);
    }

    /// The bound on a dead letter, in bytes, as it is now.
    pub fn max_message_bytes(&self) -> usize {
        self.sender.max_message_bytes()
    }

    /// Reads the DLQ's `MaximumMessageSize` again if that was done over a minute ago, as
    /// every destination's ([`super::Router::refresh_limits`]).
    pub async fn refresh_limit(&self) {
        if self.limit.due() {
            self.sender.refresh_limit().await;
        }
    }

    /// The DLQ's URL.
    pub fn queue_url(&self) -> &str {
        self.sender.queue_url()
    }

    /// Sends each message with attributes `reason`, `stage`, `error_code`, `detail` and
    /// `source_message_id`; one delivery per message, in order.
    /// A message over the DLQ's own `MaximumMessageSize` goes to the bucket, a pointer in
    /// its place, when there is one; otherwise it is not sent (SQS would refuse it every
    /// time) and its delivery says why: it stays in the source.
    pub async fn send(&self, letters: &[DeadLetter<'_>]) -> Vec<Delivery> {
        let mut outgoing: Vec<Outgoing<'_>> = letters
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
        // Too large for the DLQ: offloaded, or settled here (not sent).
        let limit = self.sender.max_message_bytes();
        let mut settled: Vec<Option<Delivery>> = vec![None; letters.len()];
        for (i, (letter, message)) in letters.iter().zip(outgoing.iter_mut()).enumerate() {
            if message.size() <= limit {
                continue;
            }
            settled[i] = Some(match &self.offloader {
                Some(offloader) => {
                    match offloader
                        .offload_dead_letter(letter.source_message_id, letter.body)
                        .await
                    {
                        Ok(pointer) => {
                            message.body = pointer.body.into();
                            message.attributes.extend(pointer.attributes);
                            continue;
                        }
                        Err(err) => Err(err),
                    }
                }
                None => Err(too_long(format!(
                    "{} bytes, over the dead-letter queue's {limit}-byte MaximumMessageSize, and no FORWARDER_S3_BUCKET to hold it: not sent",
                    message.size()
                ))),
            });
        }
        let (sendable, to_send): (Vec<usize>, Vec<Outgoing<'_>>) = outgoing
            .into_iter()
            .enumerate()
            .filter(|(i, _)| settled[*i].is_none())
            .unzip();
        let sent = self.sender.send(&to_send).await;
        for (&i, outcome) in sendable.iter().zip(sent) {
            settled[i] = Some(outcome.delivery());
        }
        let deliveries: Vec<Delivery> = settled
            .into_iter()
            .map(|d| d.unwrap_or_else(|| Err(local("no outcome for the dead letter"))))
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
