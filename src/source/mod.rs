//! Where events come from: messages of the source queue.
//!
//! [`SqsSource`] long-polls a queue, deletes what was forwarded, and extends the
//! visibility of what is still being worked on. A Lambda SQS batch yields the same
//! [`SourceMessage`]s, so the rest of the pipeline does not know which it is.

pub mod envelope;
pub mod lambda_batch;
mod sqs;

use std::time::SystemTime;

pub use sqs::{queue_info, QueueInfo, SqsSource, MAX_BATCH};

/// One message of the source queue.
#[derive(Debug, Clone, Default)]
pub struct SourceMessage {
    /// SQS's id for the message: used in logs and as the batch entry id.
    pub message_id: String,
    /// Needed to delete the message or change its visibility; changes on each receive.
    pub receipt_handle: String,
    /// The event JSON.
    pub body: String,
    /// When the message was sent to the source queue (`SentTimestamp`), for the
    /// end-to-end latency timer.
    pub sent_at: Option<SystemTime>,
    /// How many times the message was received, this time included
    /// (`ApproximateReceiveCount`): above 1 means a redelivery.
    pub receive_count: u32,
    /// `MessageGroupId` of a FIFO source (or a fair queue): within a group, order is
    /// kept, so a message that does not go holds back the later ones of its group.
    pub group: Option<String>,
    /// `AWSTraceHeader` (X-Ray trace context), sent on to the destination.
    pub trace_header: Option<String>,
    /// Its message attributes: those the receive asked for (the W3C trace context, and
    /// what `FORWARDER_FORWARD_ATTRIBUTES` names).
    pub attributes: Vec<crate::aws::Attribute>,
}

impl SourceMessage {
    /// The text of its attribute `name`, if it has one (a `String` or `Number`).
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|a| a.name == name)
            .and_then(|a| a.text())
    }
}
