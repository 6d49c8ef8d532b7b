//! SQS's batch entries as the batching window ([`crate::batching`]) sees them: an id to
//! renumber when callers share a call, and the bytes SQS counts against a call's limit.

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageAttributeValue, SendMessageBatchRequestEntry,
};

use crate::batching::Entry;

impl Entry for SendMessageBatchRequestEntry {
    fn id(&self) -> &str {
        &self.id
    }

    fn set_id(&mut self, id: String) {
        self.id = id;
    }

    /// Body and message attributes (name, type, value), as SQS counts a message; the
    /// system attribute (`AWSTraceHeader`) does not count.
    fn size(&self) -> usize {
        self.message_body.len()
            + self
                .message_attributes
                .iter()
                .flatten()
                .map(|(name, value)| name.len() + attribute_size(value))
                .sum::<usize>()
    }
}

fn attribute_size(value: &MessageAttributeValue) -> usize {
    value.data_type.len()
        + value.string_value.as_deref().map_or(0, str::len)
        + value.binary_value.as_ref().map_or(0, |b| b.as_ref().len())
}

impl Entry for DeleteMessageBatchRequestEntry {
    fn id(&self) -> &str {
        &self.id
    }

    fn set_id(&mut self, id: String) {
        self.id = id;
    }
}

impl Entry for ChangeMessageVisibilityBatchRequestEntry {
    fn id(&self) -> &str {
        &self.id
    }

    fn set_id(&mut self, id: String) {
        self.id = id;
    }
}
