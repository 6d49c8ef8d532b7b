//! Is this failure worth another try? Decided here, in [`classify`], and nowhere else.
//!
//! The decision reads the SDK's error kind, the service's error code and the HTTP
//! status, never the message text. A send that failed for a reason that will not change
//! (bad credentials, a queue that does not exist, a rejected message) is not retried:
//! retrying it would only delay the inevitable and hammer the service.

use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_sdk_sqs::error::SdkError;
use aws_smithy_runtime_api::http::Response;

use crate::outcome::ErrorClass;

/// What kind of failure happened, as seen by the caller of an AWS API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind<'a> {
    /// The service answered with an error: its code (`QueueDoesNotExist`,
    /// `ThrottlingException`, …), HTTP status, and for a batch entry whether the
    /// service blamed the sender.
    Service {
        /// The service's error code, as the SDK parsed it.
        code: Option<&'a str>,
        /// HTTP status of the response, if there was one for this failure.
        status: Option<u16>,
        /// `SenderFault` of a batch result entry; `None` for a whole-call error.
        sender_fault: Option<bool>,
    },
    /// The request or the response did not complete in time.
    Timeout,
    /// The connection failed: refused, reset, DNS, TLS.
    Connection,
    /// A response arrived but could not be read (a proxy's garbage, a truncated body).
    BadResponse {
        /// HTTP status of that response.
        status: u16,
    },
    /// The other side is up but temporarily unable: a database restarting, a terminated
    /// connection, a lock held, too many connections.
    Unavailable,
    /// The request could not even be built or sent (bad endpoint, missing region): a
    /// configuration problem that no retry fixes.
    Local,
}

/// Throttling codes of AWS services (the SDK's standard retry classifier uses the same).
const THROTTLING: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "RequestThrottled",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
    "KmsThrottled",
    "KMS.ThrottlingException",
];

/// Codes of transient service-side failures.
const TRANSIENT: &[&str] = &[
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "InternalFailure",
    "InternalServerError",
    "ServiceUnavailable",
    "AWS.SimpleQueueService.ServiceUnavailable",
    "KmsUnavailable",
];

/// Credentials that are missing, wrong, expired, or lack permission.
const ACCESS: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "InvalidClientTokenId",
    "InvalidAccessKeyId",
    "InvalidSecurity",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "ExpiredToken",
    "ExpiredTokenException",
    "UnrecognizedClientException",
    "MissingAuthenticationToken",
    "InvalidToken",
    "KmsAccessDenied",
    "KMS.AccessDeniedException",
];

/// The queue is not there (JSON protocol, then the query protocol's code).
const QUEUE_NOT_FOUND: &[&str] = &[
    "QueueDoesNotExist",
    "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDeletedRecently",
    "AWS.SimpleQueueService.QueueDeletedRecently",
];

/// The queue's KMS key cannot be used (SQS's codes, then KMS's own).
const KMS_UNUSABLE: &[&str] = &[
    "KmsDisabled",
    "KmsInvalidState",
    "KmsNotFound",
    "KmsOptInRequired",
    "KmsInvalidKeyUsage",
    "KMS.DisabledException",
    "KMS.KMSInvalidStateException",
    "KMS.NotFoundException",
    "KMS.OptInRequired",
    "KMS.InvalidKeyUsageException",
];

/// The message is refused as it is.
const MESSAGE_REJECTED: &[&str] = &[
    "InvalidMessageContents",
    "MessageTooLong",
    "BatchRequestTooLong",
    "AWS.SimpleQueueService.BatchRequestTooLong",
    "InvalidParameterValue",
    "InvalidParameterValueException",
    "InvalidAttributeValue",
    "InvalidAttributeName",
];

/// The S3 bucket is wrong: missing, misnamed, or in another region.
const BUCKET_INVALID: &[&str] = &[
    "NoSuchBucket",
    "IllegalLocationConstraintException",
    "InvalidBucketName",
    "PermanentRedirect",
    "AuthorizationHeaderMalformed",
];

/// The one decision: what class a failure is, hence whether it is retried.
pub fn classify(kind: FailureKind<'_>) -> ErrorClass {
    match kind {
        FailureKind::Timeout => ErrorClass::Timeout,
        FailureKind::Connection => ErrorClass::Connection,
        FailureKind::Local => ErrorClass::Local,
        FailureKind::Unavailable => ErrorClass::ServerError,
        FailureKind::BadResponse { status } => {
            if status == 429 {
                ErrorClass::Throttled
            } else if (400..500).contains(&status) {
                ErrorClass::Rejected
            } else {
                // A 2xx or 5xx whose body could not be read: most likely cut short.
                ErrorClass::ServerError
            }
        }
        FailureKind::Service {
            code,
            status,
            sender_fault,
        } => {
            let code = code.unwrap_or("");
            let is = |list: &[&str]| list.contains(&code);
            if is(THROTTLING) || status == Some(429) {
                ErrorClass::Throttled
            } else if is(TRANSIENT) {
                ErrorClass::ServerError
            } else if is(ACCESS) {
                ErrorClass::AccessDenied
            } else if is(QUEUE_NOT_FOUND) {
                ErrorClass::QueueNotFound
            } else if is(KMS_UNUSABLE) {
                ErrorClass::KmsUnusable
            } else if is(MESSAGE_REJECTED) {
                ErrorClass::MessageRejected
            } else if is(BUCKET_INVALID) {
                ErrorClass::BucketInvalid
            } else if code == "MissingParameter" {
                // The only parameter of a send that can be missing is a FIFO queue's
                // MessageGroupId: body and queue URL are always set.
                ErrorClass::MissingMessageGroupId
            } else if matches!(status, Some(500..=599)) || sender_fault == Some(false) {
                // The service says the fault is its own.
                ErrorClass::ServerError
            } else {
                ErrorClass::Rejected
            }
        }
    }
}

/// Classifies an error returned by an SDK call.
pub fn classify_sdk<E: ProvideErrorMetadata>(err: &SdkError<E, Response>) -> ErrorClass {
    classify(failure_kind(err))
}

/// The [`FailureKind`] of an SDK error.
pub fn failure_kind<E: ProvideErrorMetadata>(err: &SdkError<E, Response>) -> FailureKind<'_> {
    match err {
        SdkError::ServiceError(ctx) => FailureKind::Service {
            code: ctx.err().code(),
            status: Some(ctx.raw().status().as_u16()),
            sender_fault: None,
        },
        SdkError::TimeoutError(_) => FailureKind::Timeout,
        SdkError::DispatchFailure(d) if d.is_user() => FailureKind::Local,
        SdkError::DispatchFailure(d) if d.is_timeout() => FailureKind::Timeout,
        SdkError::DispatchFailure(_) => FailureKind::Connection,
        SdkError::ResponseError(r) => FailureKind::BadResponse {
            status: r.raw().status().as_u16(),
        },
        SdkError::ConstructionFailure(_) => FailureKind::Local,
        // SdkError is non-exhaustive; a future kind is treated as a local fault, not retried.
        _ => FailureKind::Local,
    }
}

/// Classifies one failed entry of a batch call (`BatchResultErrorEntry`).
pub fn classify_entry(code: &str, sender_fault: bool) -> ErrorClass {
    classify(FailureKind::Service {
        code: Some(code),
        status: None,
        sender_fault: Some(sender_fault),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(code: &str, status: u16) -> ErrorClass {
        classify(FailureKind::Service {
            code: Some(code),
            status: Some(status),
            sender_fault: None,
        })
    }

    #[test]
    fn throttling_and_server_errors_are_retried() {
        for code in ["ThrottlingException", "RequestThrottled", "KmsThrottled"] {
            assert_eq!(service(code, 400), ErrorClass::Throttled, "{code}");
        }
        assert_eq!(service("Whatever", 429), ErrorClass::Throttled);
        assert_eq!(service("InternalError", 500), ErrorClass::ServerError);
        assert_eq!(service("ServiceUnavailable", 503), ErrorClass::ServerError);
        assert_eq!(service("", 502), ErrorClass::ServerError);
        for class in [
            ErrorClass::Throttled,
            ErrorClass::ServerError,
            ErrorClass::Timeout,
            ErrorClass::Connection,
        ] {
            assert!(class.is_retryable(), "{class:?}");
        }
        assert_eq!(classify(FailureKind::Timeout), ErrorClass::Timeout);
        assert_eq!(classify(FailureKind::Connection), ErrorClass::Connection);
        assert_eq!(
            classify(FailureKind::BadResponse { status: 200 }),
            ErrorClass::ServerError
        );
    }

    #[test]
    fn client_errors_are_permanent() {
        assert_eq!(
            service("InvalidClientTokenId", 403),
            ErrorClass::AccessDenied
        );
        assert_eq!(service("AccessDenied", 403), ErrorClass::AccessDenied);
        assert_eq!(service("InvalidAccessKeyId", 403), ErrorClass::AccessDenied);
        assert_eq!(service("QueueDoesNotExist", 400), ErrorClass::QueueNotFound);
        assert_eq!(
            service("AWS.SimpleQueueService.NonExistentQueue", 400),
            ErrorClass::QueueNotFound
        );
        assert_eq!(
            service("InvalidMessageContents", 400),
            ErrorClass::MessageRejected
        );
        assert_eq!(service("SomethingNew", 400), ErrorClass::Rejected);
        assert_eq!(service("NoSuchBucket", 404), ErrorClass::BucketInvalid);
        assert_eq!(
            service("IllegalLocationConstraintException", 400),
            ErrorClass::BucketInvalid
        );
        assert_eq!(
            service("MissingParameter", 400),
            ErrorClass::MissingMessageGroupId
        );
        assert_eq!(classify(FailureKind::Local), ErrorClass::Local);
        for class in [
            ErrorClass::AccessDenied,
            ErrorClass::QueueNotFound,
            ErrorClass::MessageRejected,
            ErrorClass::MissingMessageGroupId,
            ErrorClass::BucketInvalid,
            ErrorClass::Oversized,
            ErrorClass::Rejected,
            ErrorClass::Local,
        ] {
            assert!(!class.is_retryable(), "{class:?}");
        }
    }

    #[test]
    fn batch_entries_follow_sender_fault() {
        assert_eq!(
            classify_entry("InternalError", false),
            ErrorClass::ServerError
        );
        assert_eq!(classify_entry("Unknown", false), ErrorClass::ServerError);
        assert_eq!(classify_entry("Unknown", true), ErrorClass::Rejected);
        assert_eq!(
            classify_entry("InvalidMessageContents", true),
            ErrorClass::MessageRejected
        );
        // Throttling is retried even if blamed on the sender.
        assert_eq!(
            classify_entry("RequestThrottled", true),
            ErrorClass::Throttled
        );
    }
}
