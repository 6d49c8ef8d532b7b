//! Typed outcomes: why an event was not forwarded, in one shape, mapped once to metric
//! tags and dead-letter attributes (relay's `Outcome` and `DiscardReason` are the model).
//!
//! [`Stage`] says where, [`Operation`] which call, [`ErrorClass`] what kind of failure;
//! [`Failure`] carries the three with the service's code and a detail for logs. Their
//! `as_str` is the only place their labels are spelled. A leaf: nothing here imports
//! the rest of the crate, so every layer may use it.

use std::fmt;

/// Where in the flow an event stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Its body is not a valid event.
    Decode,
    /// Its tags could not be indexed.
    Index,
    /// It could not be sent to its destination.
    Forward,
    /// The idempotency store could not say whether it was forwarded already, or could
    /// not record that it was ([`crate::idempotency`]).
    Idempotency,
}

impl Stage {
    /// The `stage` metric tag and dead-letter attribute.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Index => "index",
            Stage::Forward => "forward",
            Stage::Idempotency => "idempotency",
        }
    }
}

/// A call to a service: SQS, S3, or the indexer's store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// SQS ReceiveMessage.
    Receive,
    /// SQS SendMessageBatch.
    Send,
    /// SQS DeleteMessageBatch.
    Delete,
    /// SQS ChangeMessageVisibilityBatch.
    ChangeVisibility,
    /// SQS GetQueueAttributes (healthchecks and probes).
    GetAttributes,
    /// S3 PutObject (an oversized event).
    S3Put,
    /// S3 HeadBucket (healthchecks and probes).
    S3HeadBucket,
    /// The store's connection at start.
    StoreConnect,
    /// The store's migrations at start.
    StoreMigrate,
    /// Which strings have ids.
    IndexerFetch,
    /// Give strings ids.
    IndexerCreate,
    /// Which string has an id.
    IndexerReverse,
    /// Claim events in the idempotency store before their send.
    IdempotencyClaim,
    /// Mark events forwarded in the idempotency store.
    IdempotencyMark,
    /// Give back the claims of events not sent.
    IdempotencyRelease,
    /// Refresh `last_seen`, after the fact.
    IndexerTouch,
}

impl Operation {
    /// The `operation` metric tag.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Receive => "receive",
            Operation::Send => "send",
            Operation::Delete => "delete",
            Operation::ChangeVisibility => "change_visibility",
            Operation::GetAttributes => "get_attributes",
            Operation::S3Put => "s3_put",
            Operation::S3HeadBucket => "s3_head_bucket",
            Operation::StoreConnect => "connect",
            Operation::StoreMigrate => "migrate",
            Operation::IndexerFetch => "indexer_fetch",
            Operation::IndexerCreate => "indexer_create",
            Operation::IndexerReverse => "indexer_reverse",
            Operation::IdempotencyClaim => "idempotency_claim",
            Operation::IdempotencyMark => "idempotency_mark",
            Operation::IdempotencyRelease => "idempotency_release",
            Operation::IndexerTouch => "indexer_touch",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of failure happened: a label for logs and metric tags, whether a retry can
/// help, and whose it is (the message's, the route's, or nobody's for long).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Throttling: too many requests. Retried.
    Throttled,
    /// The service failed (5xx, internal error). Retried.
    ServerError,
    /// No answer in time. Retried.
    Timeout,
    /// The connection failed. Retried.
    Connection,
    /// Credentials missing, invalid, expired, or not allowed. Not retried.
    AccessDenied,
    /// The queue does not exist. Not retried.
    QueueNotFound,
    /// The queue's KMS key is disabled, missing, in the wrong state, or not usable for
    /// this. Not retried.
    KmsUnusable,
    /// The message itself is refused (too large, invalid characters, bad attributes).
    /// Not retried.
    MessageRejected,
    /// A FIFO send without a message group. Not retried.
    MissingMessageGroupId,
    /// The S3 bucket for oversized events does not exist or is in another region. Not
    /// retried.
    BucketInvalid,
    /// The event is over the size limit and there is no S3 bucket to offload it to.
    /// Not retried.
    Oversized,
    /// Any other client error the service blames on the request. Not retried.
    Rejected,
    /// A local problem: the request could not be built. Not retried.
    Local,
}

impl ErrorClass {
    /// Whether the service refused for its load (throttled, failing, too slow to
    /// answer): what lowers the in-flight bound ([`crate::concurrency`]).
    pub fn is_load(self) -> bool {
        matches!(
            self,
            ErrorClass::Throttled | ErrorClass::ServerError | ErrorClass::Timeout
        )
    }

    /// Whether a later try can succeed where this one failed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorClass::Throttled
                | ErrorClass::ServerError
                | ErrorClass::Timeout
                | ErrorClass::Connection
        )
    }

    /// Whether the service may have taken the request although no success came back:
    /// the answer was lost (a timeout, a cut connection) or the service failed midway.
    /// An idempotency claim is kept for such a send ([`crate::idempotency`]).
    pub fn may_have_arrived(self) -> bool {
        matches!(
            self,
            ErrorClass::Timeout | ErrorClass::Connection | ErrorClass::ServerError
        )
    }

    /// Whether the message itself can never be accepted, wherever it is sent (too large
    /// with no bucket, a body or attribute SQS refuses): it goes to the dead-letter
    /// queue. Only these do; nothing else is ever dead-lettered.
    pub fn is_message_level(self) -> bool {
        matches!(self, ErrorClass::MessageRejected | ErrorClass::Oversized)
    }

    /// Whether the destination, its bucket or the credentials are unusable for now,
    /// whatever the message (a missing queue, denied access, an unusable KMS key, an
    /// unknown client error): the route pauses, and its events stay in the source.
    pub fn is_route_level(self) -> bool {
        matches!(
            self,
            ErrorClass::AccessDenied
                | ErrorClass::QueueNotFound
                | ErrorClass::KmsUnusable
                | ErrorClass::MissingMessageGroupId
                | ErrorClass::BucketInvalid
                | ErrorClass::Rejected
        )
    }

    /// Label for logs and the `class` metric tag.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Throttled => "throttled",
            ErrorClass::ServerError => "server_error",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Connection => "connection",
            ErrorClass::AccessDenied => "access_token_invalid",
            ErrorClass::QueueNotFound => "queue_not_found",
            ErrorClass::KmsUnusable => "kms_unusable",
            ErrorClass::MessageRejected => "message_rejected",
            ErrorClass::MissingMessageGroupId => "missing_message_group_id",
            ErrorClass::BucketInvalid => "s3_bucket_invalid",
            ErrorClass::Oversized => "oversized",
            ErrorClass::Rejected => "rejected",
            ErrorClass::Local => "local",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an event was not forwarded, whatever the stage: the one shape that logs, metric
/// tags and dead-letter attributes are made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Where.
    pub stage: Stage,
    /// What kind of failure.
    pub class: ErrorClass,
    /// The service's or the database's error code, if any.
    pub code: Option<String>,
    /// Detail for logs.
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed ({}", self.stage.as_str(), self.class.as_str())?;
        if let Some(code) = &self.code {
            write!(f, ", {code}")?;
        }
        write!(f, "): {}", self.message)
    }
}

/// Why an event no route takes is skipped: counted as `forwarder.event.skipped{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// No route and no default (`skip_unconfigured`).
    Unconfigured,
    /// Its organization has a route, but does not enroll projects it does not list
    /// (`skip_not_enrolled`).
    NotEnrolled,
    /// Its organization's route switches the project off (`skip_project_disabled`).
    ProjectDisabled,
}

impl Skip {
    /// The counter's `reason` tag.
    pub fn reason(self) -> &'static str {
        match self {
            Skip::Unconfigured => "skip_unconfigured",
            Skip::NotEnrolled => "skip_not_enrolled",
            Skip::ProjectDisabled => "skip_project_disabled",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_class_has_one_scope() {
        let all = [
            ErrorClass::Throttled,
            ErrorClass::ServerError,
            ErrorClass::Timeout,
            ErrorClass::Connection,
            ErrorClass::AccessDenied,
            ErrorClass::QueueNotFound,
            ErrorClass::KmsUnusable,
            ErrorClass::MessageRejected,
            ErrorClass::MissingMessageGroupId,
            ErrorClass::BucketInvalid,
            ErrorClass::Oversized,
            ErrorClass::Rejected,
            ErrorClass::Local,
        ];
        for class in all {
            let scopes = [
                class.is_retryable(),
                class.is_message_level(),
                class.is_route_level(),
            ];
            assert!(
                scopes.iter().filter(|s| **s).count() <= 1,
                "{class:?} has more than one scope"
            );
        }
        assert!(ErrorClass::QueueNotFound.is_route_level());
        assert!(ErrorClass::MessageRejected.is_message_level());
        assert!(ErrorClass::Throttled.is_retryable());
    }
}
