//! Oversized events: stored in S3, and a pointer sent in their place.
//!
//! The key is `{project_id}/{YYYY-MM-DD}/{event_id}`, dated by the event's timestamp in
//! UTC (or the time of forwarding if it has none), so a retry writes the same key and no
//! orphan is left. The pointer is Sentry's (`{"s3Url": …, "eventID": …}`) or that of the
//! AWS SQS Extended Client Library, whose consumers then read the payload transparently.

use aws_sdk_s3::primitives::ByteStream;
use chrono::{DateTime, Utc};

use super::pack_object::{pack_key, PackCompression};
use super::sender::Attribute;
use crate::aws::AwsError;
use crate::event::Event;
use crate::metrics::Metrics;
use crate::outcome::Operation;
use crate::retry::{retry, RetryPolicy};

/// How the pointer message looks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PointerFormat {
    /// Sentry's: `{"s3Url": "https://BUCKET.s3.REGION.amazonaws.com/KEY", "eventID": "…"}`.
    #[default]
    Sentry,
    /// The AWS SQS Extended Client Library's:
    /// `["software.amazon.payloadoffloading.PayloadS3Pointer", {"s3BucketName": …, "s3Key": …}]`
    /// with the attribute `ExtendedPayloadSize`.
    Extended,
}

impl std::str::FromStr for PointerFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sentry" => Ok(PointerFormat::Sentry),
            "extended" => Ok(PointerFormat::Extended),
            other => Err(format!(
                "{other:?} is not a pointer format; expected sentry or extended"
            )),
        }
    }
}

/// Which events go to S3 when a route has a bucket (`FORWARDER_S3_OFFLOAD`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum OffloadMode {
    /// Only events over the size limit; the rest are sent whole.
    #[default]
    Oversized,
    /// Every event, as Sentry's plugin does once a bucket is set: the queue carries only
    /// pointers.
    Always,
}

impl std::str::FromStr for OffloadMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "oversized" => Ok(OffloadMode::Oversized),
            "always" => Ok(OffloadMode::Always),
            other => Err(format!(
                "{other:?} is not an offload mode; expected oversized or always"
            )),
        }
    }
}

impl OffloadMode {
    /// The setting's value, as written.
    pub fn as_str(self) -> &'static str {
        match self {
            OffloadMode::Oversized => "oversized",
            OffloadMode::Always => "always",
        }
    }
}

/// How stored objects are encrypted at rest (`s3_sse`, `s3_kms_key_id`;
/// `FORWARDER_S3_SSE`, `FORWARDER_S3_KMS_KEY_ID`), set on every PutObject: single events
/// and packs alike.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum S3Encryption {
    /// No header: the bucket's default encryption (SSE-S3 on every bucket since
    /// January 2023, or the bucket's own SSE-KMS key).
    #[default]
    BucketDefault,
    /// SSE-S3 (`AES256`).
    Aes256,
    /// SSE-KMS (`aws:kms`), with this key (an id, ARN or alias); `None`: the account's
    /// AWS-managed `aws/s3` key.
    Kms {
        /// The key.
        key_id: Option<String>,
    },
}

impl S3Encryption {
    /// From the two settings as written: `sse` `AES256` or `aws:kms` (or none), and a
    /// key id, which only `aws:kms` takes. The error names which of the two is wrong.
    pub fn from_settings(
        sse: Option<&str>,
        key_id: Option<&str>,
    ) -> Result<Self, (&'static str, String)> {
        let key_id = key_id.map(str::trim).filter(|k| !k.is_empty());
        match (sse.map(str::trim).filter(|s| !s.is_empty()), key_id) {
            (None, None) => Ok(S3Encryption::BucketDefault),
            (Some("AES256"), None) => Ok(S3Encryption::Aes256),
            (Some("aws:kms"), key) => Ok(S3Encryption::Kms {
                key_id: key.map(str::to_string),
            }),
            (None | Some("AES256"), Some(_)) => Err((
                "kms_key_id",
                "is set, but the server-side encryption is not aws:kms".to_string(),
            )),
            (Some(other), _) => Err((
                "sse",
                format!("{other:?} is not a server-side encryption; expected AES256 or aws:kms"),
            )),
        }
    }

    /// What `check` says of it.
    pub fn describe(&self) -> String {
        match self {
            S3Encryption::BucketDefault => "the bucket's default".into(),
            S3Encryption::Aes256 => "SSE-S3 (AES256)".into(),
            S3Encryption::Kms { key_id: None } => "SSE-KMS (aws/s3 key)".into(),
            S3Encryption::Kms { key_id: Some(k) } => format!("SSE-KMS (key {k})"),
        }
    }
}

/// The S3 side of oversized events (and of every event, in [`OffloadMode::Always`]).
#[derive(Debug, Clone)]
pub struct Offloader {
    /// S3 client (path-style addressing when a custom endpoint is set, as for LocalStack).
    s3: aws_sdk_s3::Client,
    /// The bucket (`FORWARDER_S3_BUCKET`).
    bucket: String,
    /// The bucket's region, for Sentry's `s3Url`.
    region: String,
    /// The pointer's shape (`FORWARDER_S3_POINTER_FORMAT`).
    format: PointerFormat,
    /// Which events are stored: the oversized ones, or all (`FORWARDER_S3_OFFLOAD`).
    mode: OffloadMode,
    /// How each object is encrypted at rest (compliance rules often demand SSE-KMS
    /// with the customer's own key).
    encryption: S3Encryption,
    /// Retry bounds of PutObject.
    policy: RetryPolicy,
    /// Where retries are counted.
    metrics: Metrics,
}

/// What replaces an oversized event in the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    /// The pointer's body.
    pub body: String,
    /// Extra attributes (the Extended Client Library's payload size).
    pub attributes: Vec<Attribute>,
}

impl Offloader {
    /// An offloader to `bucket`.
    pub fn new(
        s3: aws_sdk_s3::Client,
        bucket: impl Into<String>,
        region: impl Into<String>,
        format: PointerFormat,
        policy: RetryPolicy,
        metrics: Metrics,
    ) -> Self {
        Self {
            s3,
            bucket: bucket.into(),
            region: region.into(),
            format,
            mode: OffloadMode::Oversized,
            encryption: S3Encryption::BucketDefault,
            policy,
            metrics,
        }
    }

    /// Stores the events `mode` says.
    pub fn with_mode(mut self, mode: OffloadMode) -> Self {
        self.mode = mode;
        self
    }

    /// Encrypts each object as `encryption` says.
    pub fn with_encryption(mut self, encryption: S3Encryption) -> Self {
        self.encryption = encryption;
        self
    }

    /// How many attributes its pointer adds to a message.
    pub fn pointer_attributes(&self) -> usize {
        match self.format {
            PointerFormat::Sentry => 0,
            PointerFormat::Extended => 1,
        }
    }

    /// Whether every event is stored, whatever its size.
    pub fn always(&self) -> bool {
        self.mode == OffloadMode::Always
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Healthcheck: the bucket exists and is reachable (HeadBucket).
    pub async fn check(&self) -> Result<(), AwsError> {
        self.s3
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map(drop)
            .map_err(|e| AwsError::from_sdk(Operation::S3HeadBucket, e))
    }

    /// The key of an event.
    pub fn key(event: &Event<'_>, now: DateTime<Utc>) -> String {
        let date = event
            .timestamp
            .and_then(|secs| DateTime::<Utc>::from_timestamp(secs, 0))
            .unwrap_or(now)
            .format("%Y-%m-%d");
        format!("{}/{}/{}", event.project_id, date, event.event_id)
    }

    /// Stores `body` (the event as it would have been sent) and returns the pointer.
    pub async fn offload(&self, event: &Event<'_>, body: &str) -> Result<Pointer, AwsError> {
        let key = Self::key(event, Utc::now());
        self.put(&key, body.as_bytes().to_vec(), "application/json", None)
            .await?;
        tracing::debug!(event_id = %event.event_id, key, bytes = body.len(), "oversized event stored in S3");
        let sentry = serde_json::json!({
            "s3Url": self.url(&key),
            "eventID": event.event_id,
        });
        Ok(self.pointer(&key, sentry, body.len()))
    }

    /// Stores a message too large for the dead-letter queue, as it was received, under
    /// `dead-letters/DATE/SOURCE_MESSAGE_ID`; returns the pointer (Sentry's:
    /// `{"s3Url": …, "sourceMessageId": …}`, or the Extended Client Library's).
    pub async fn offload_dead_letter(
        &self,
        source_message_id: &str,
        body: &str,
    ) -> Result<Pointer, AwsError> {
        let id: String = source_message_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let key = format!("dead-letters/{}/{id}", Utc::now().format("%Y-%m-%d"));
        self.put(&key, body.as_bytes().to_vec(), "application/json", None)
            .await?;
        tracing::debug!(key, bytes = body.len(), "dead letter stored in S3");
        let sentry = serde_json::json!({
            "s3Url": self.url(&key),
            "sourceMessageId": source_message_id,
        });
        Ok(self.pointer(&key, sentry, body.len()))
    }

    /// Stores a pack (`events` events as NDJSON lines) as one object,
    /// `Content-Type: application/x-ndjson`, gzip-compressed if asked
    /// (`Content-Encoding: gzip`); returns the pointer: Sentry's with the event count
    /// (`{"s3Url": …, "events": N}`), or the Extended Client Library's.
    pub async fn offload_pack(
        &self,
        pack_id: &str,
        ndjson: &[u8],
        events: usize,
        compression: PackCompression,
    ) -> Result<Pointer, AwsError> {
        let key = pack_key(pack_id, compression, Utc::now());
        let (bytes, encoding) = match compression {
            PackCompression::None => (ndjson.to_vec(), None),
            PackCompression::Gzip => (gzip(ndjson)?, Some("gzip")),
        };
        let stored = bytes.len();
        self.put(&key, bytes, "application/x-ndjson", encoding)
            .await?;
        tracing::debug!(key, events, bytes = stored, "pack stored in S3");
        let sentry = serde_json::json!({"s3Url": self.url(&key), "events": events});
        Ok(self.pointer(&key, sentry, stored))
    }

    /// PutObject, retried: a retry writes the same key, so no orphan is left.
    async fn put(
        &self,
        key: &str,
        bytes: Vec<u8>,
        content_type: &str,
        encoding: Option<&str>,
    ) -> Result<(), AwsError> {
        use aws_sdk_s3::types::ServerSideEncryption;
        let (sse, key_id) = match &self.encryption {
            S3Encryption::BucketDefault => (None, None),
            S3Encryption::Aes256 => (Some(ServerSideEncryption::Aes256), None),
            S3Encryption::Kms { key_id } => (Some(ServerSideEncryption::AwsKms), key_id.clone()),
        };
        retry(&self.policy, Operation::S3Put, &self.metrics, || async {
            self.s3
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .content_type(content_type)
                .set_content_encoding(encoding.map(str::to_string))
                .set_server_side_encryption(sse.clone())
                .set_ssekms_key_id(key_id.clone())
                .body(ByteStream::from(bytes.clone()))
                .send()
                .await
                .map_err(|e| AwsError::from_sdk(Operation::S3Put, e))
        })
        .await
        .map(drop)
    }

    /// The object's URL, as Sentry's pointer gives it.
    fn url(&self, key: &str) -> String {
        format!(
            "https://{}.s3.{}.amazonaws.com/{}",
            self.bucket, self.region, key
        )
    }

    /// The pointer to `key` in the configured format: `sentry` as given, or the
    /// Extended Client Library's with the payload's size.
    fn pointer(&self, key: &str, sentry: serde_json::Value, payload: usize) -> Pointer {
        match self.format {
            PointerFormat::Sentry => Pointer {
                body: sentry.to_string(),
                attributes: Vec::new(),
            },
            PointerFormat::Extended => Pointer {
                body: serde_json::json!([
                    "software.amazon.payloadoffloading.PayloadS3Pointer",
                    {"s3BucketName": self.bucket, "s3Key": key}
                ])
                .to_string(),
                attributes: vec![Attribute::number("ExtendedPayloadSize", payload as u64)],
            },
        }
    }
}

/// Gzip of a pack's bytes.
fn gzip(bytes: &[u8]) -> Result<Vec<u8>, AwsError> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes)
        .and_then(|()| gz.finish())
        .map_err(|e| AwsError {
            operation: Operation::S3Put,
            class: crate::outcome::ErrorClass::Local,
            code: None,
            message: format!("gzip: {e}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_dated_by_the_event_in_utc() {
        let body = r#"{"event_id":"0123456789abcdef0123456789abcdef","project_id":42,"organization_id":1,"timestamp":"2026-01-31T23:30:00-02:00"}"#;
        let event = crate::event::decode(body).unwrap();
        let now = DateTime::<Utc>::from_timestamp(0, 0).unwrap();
        assert_eq!(
            Offloader::key(&event, now),
            "42/2026-02-01/0123456789abcdef0123456789abcdef"
        );
        let undated = crate::event::decode(r#"{"event_id":"0123456789abcdef0123456789abcdef","project_id":42,"organization_id":1}"#).unwrap();
        assert_eq!(
            Offloader::key(&undated, now),
            "42/1970-01-01/0123456789abcdef0123456789abcdef"
        );
    }

    #[test]
    fn encryption_is_read_from_its_two_settings() {
        let e = |sse, key| S3Encryption::from_settings(sse, key);
        assert_eq!(e(None, None), Ok(S3Encryption::BucketDefault));
        assert_eq!(e(Some("AES256"), None), Ok(S3Encryption::Aes256));
        assert_eq!(
            e(Some("aws:kms"), None),
            Ok(S3Encryption::Kms { key_id: None })
        );
        assert_eq!(
            e(Some("aws:kms"), Some("alias/events")),
            Ok(S3Encryption::Kms {
                key_id: Some("alias/events".into())
            })
        );
        assert_eq!(e(None, Some("alias/events")).unwrap_err().0, "kms_key_id");
        assert_eq!(e(Some("AES256"), Some("k")).unwrap_err().0, "kms_key_id");
        assert_eq!(e(Some("aes256"), None).unwrap_err().0, "sse");
    }
}
