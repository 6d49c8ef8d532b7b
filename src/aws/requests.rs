//! Every request an AWS client sends, counted: `forwarder.sqs.requests{operation}`, what
//! SQS and S3 bill. An interceptor on each client counts each attempt as it goes out, so
//! nothing that sends (a receive, a batch of the batching window, a retry, a probe, a
//! healthcheck, an upload) can be missed or counted twice.

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

use crate::metrics::{Counter, Metrics};

/// The interceptor: one `forwarder.sqs.requests` per request sent.
#[derive(Debug, Clone)]
pub struct CountRequests {
    /// Where requests are counted.
    pub metrics: Metrics,
}

/// The operations this worker calls, as tags (a tag is a `&'static str`); anything else
/// is `other`.
const OPERATIONS: [&str; 10] = [
    "ReceiveMessage",
    "SendMessageBatch",
    "DeleteMessageBatch",
    "ChangeMessageVisibilityBatch",
    "GetQueueAttributes",
    "SendMessage",
    "PutObject",
    "GetObject",
    "HeadBucket",
    "AssumeRole",
];

/// The tag of an operation's name.
pub fn operation_tag(name: &str) -> &'static str {
    OPERATIONS
        .iter()
        .find(|op| **op == name)
        .copied()
        .unwrap_or("other")
}

impl Intercept for CountRequests {
    fn name(&self) -> &'static str {
        "CountRequests"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let operation = cfg
            .load::<Metadata>()
            .map_or("other", |m| operation_tag(m.name()));
        self.metrics.incr(Counter::SqsRequests { operation });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_operations_are_their_own_tag() {
        assert_eq!(operation_tag("SendMessageBatch"), "SendMessageBatch");
        assert_eq!(operation_tag("PutObject"), "PutObject");
        assert_eq!(operation_tag("ListQueues"), "other");
    }
}
