//! The translation between a Lambda SQS batch and the pipeline: its records as
//! [`SourceMessage`]s, and whether each was settled for good back as the partial batch
//! response. The driver
//! (the runtime loop, the deadline) is [`crate::lambda`].
//!
//! Lambda's event source mapping receives and deletes; the function only says which
//! messages were not settled (`batchItemFailures`). Those come back after their
//! visibility timeout, and the queue's redrive policy ends their tries.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};

use super::SourceMessage;

/// Why a record could not be taken from the batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// A record without `messageId` cannot be reported, so the whole batch must fail.
    #[error("record {0} has no messageId")]
    NoMessageId(usize),
}

/// The batch's records, in order. A record without a body is kept with an empty body:
/// the decoder refuses it, so it is counted and dead-lettered like any invalid body.
pub fn records(event: SqsEvent) -> Result<Vec<SourceMessage>, RecordError> {
    event
        .records
        .into_iter()
        .enumerate()
        .map(|(i, record)| record_of(i, record))
        .collect()
}

fn record_of(i: usize, record: SqsMessage) -> Result<SourceMessage, RecordError> {
    let message_id = record.message_id.ok_or(RecordError::NoMessageId(i))?;
    let attrs = &record.attributes;
    let sent_at = attrs
        .get("SentTimestamp")
        .and_then(|ms| ms.parse::<u64>().ok())
        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
    let receive_count = attrs
        .get("ApproximateReceiveCount")
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    Ok(SourceMessage {
        message_id,
        receipt_handle: record.receipt_handle.unwrap_or_default(),
        body: record.body.unwrap_or_default(),
        sent_at: sent_at.or_else(|| Some(SystemTime::now())),
        receive_count,
        group: attrs.get("MessageGroupId").cloned(),
        trace_header: attrs.get("AWSTraceHeader").cloned(),
        attributes: record
            .message_attributes
            .into_iter()
            .filter_map(|(name, a)| {
                let bytes = a.binary_value.map(|b| b.to_vec());
                crate::aws::Attribute::received(name, a.data_type?, a.string_value, bytes)
            })
            .collect(),
    })
}

/// The partial batch response: every message not settled for good (`done`, one per
/// record, false: neither forwarded, dead-lettered nor skipped on purpose, as the
/// pipeline's `Settlement::is_done` says). For a FIFO source, a failure also fails every
/// later message of its group, so the group's order is kept when Lambda retries.
pub fn batch_response(
    records: &[SourceMessage],
    done: impl IntoIterator<Item = bool>,
) -> SqsBatchResponse {
    let mut failed_groups: HashSet<&str> = HashSet::new();
    let mut failures = Vec::new();
    for (record, done) in records.iter().zip(done) {
        let held_back = record
            .group
            .as_deref()
            .is_some_and(|g| failed_groups.contains(g));
        if held_back || !done {
            if let Some(group) = record.group.as_deref() {
                failed_groups.insert(group);
            }
            failures.push(record.message_id.clone());
        }
    }
    let mut response = SqsBatchResponse::default();
    response.set_failures(failures);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(json: serde_json::Value) -> SqsEvent {
        serde_json::from_value(json).unwrap()
    }

    fn record(id: &str, group: Option<&str>) -> SourceMessage {
        SourceMessage {
            message_id: id.into(),
            receipt_handle: String::new(),
            body: String::new(),
            sent_at: None,
            receive_count: 1,
            group: group.map(str::to_string),
            ..Default::default()
        }
    }

    fn ids(response: &SqsBatchResponse) -> Vec<&str> {
        response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.as_str())
            .collect()
    }

    #[test]
    fn records_carry_ids_bodies_counts_and_groups() {
        let records = records(event(serde_json::json!({"Records": [
            {"messageId": "a", "receiptHandle": "h", "body": "{}", "attributes": {
                "ApproximateReceiveCount": "3", "SentTimestamp": "1700000000000",
                "MessageGroupId": "g1"}, "messageAttributes": {}, "eventSource": "aws:sqs"},
            {"messageId": "b", "attributes": {}, "messageAttributes": {}}
        ]})))
        .unwrap();
        assert_eq!(records[0].message_id, "a");
        assert_eq!(records[0].body, "{}");
        assert_eq!(records[0].receive_count, 3);
        assert_eq!(
            records[0].sent_at,
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(records[0].group.as_deref(), Some("g1"));
        assert_eq!(records[1].body, "", "no body: refused by the decoder");
        assert_eq!(records[1].group, None);
    }

    #[test]
    fn bodies_attributes_and_trace_headers_are_moved_not_copied() {
        let mut batch = event(serde_json::json!({"Records": [
            {"messageId": "a", "body": "x".repeat(4096),
             "attributes": {"AWSTraceHeader": "Root=1-5759e988-bd862e3fe1be46a994272793"},
             "messageAttributes": {
                "tenant": {"dataType": "String", "stringValue": "acme"},
                "blob": {"dataType": "Binary", "binaryValue": "AAEC"}}}
        ]}));
        let body_at = batch.records[0].body.as_ref().map(|b| b.as_ptr());
        let records = records(std::mem::take(&mut batch)).unwrap();
        assert_eq!(Some(records[0].body.as_ptr()), body_at, "the same buffer");
        assert_eq!(
            records[0].trace_header.as_deref(),
            Some("Root=1-5759e988-bd862e3fe1be46a994272793")
        );
        let mut attrs: Vec<(String, crate::aws::AttributeValue)> = records[0]
            .attributes
            .iter()
            .map(|a| (a.name.to_string(), a.value.clone()))
            .collect();
        attrs.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            attrs,
            [
                (
                    "blob".into(),
                    crate::aws::AttributeValue::Bytes(vec![0, 1, 2])
                ),
                (
                    "tenant".into(),
                    crate::aws::AttributeValue::Text("acme".into())
                ),
            ]
        );
    }

    #[test]
    fn a_record_without_a_message_id_fails_the_batch() {
        let err = records(event(serde_json::json!({"Records": [
            {"messageId": "a", "body": "x"}, {"body": "y"}
        ]})))
        .unwrap_err();
        assert_eq!(err, RecordError::NoMessageId(1));
    }

    #[test]
    fn only_unsettled_messages_are_reported() {
        let records = [record("a", None), record("b", None), record("c", None)];
        assert_eq!(ids(&batch_response(&records, [true, false, true])), ["b"]);
        assert!(batch_response(&records, [true; 3])
            .batch_item_failures
            .is_empty());
    }

    #[test]
    fn a_fifo_failure_holds_back_the_rest_of_its_group_only() {
        let records = [
            record("a1", Some("a")),
            record("b1", Some("b")),
            record("a2", Some("a")),
            record("b2", Some("b")),
            record("a3", Some("a")),
        ];
        assert_eq!(
            ids(&batch_response(&records, [true, true, false, true, true])),
            ["a2", "a3"],
            "a3 follows a failure in its group; group b is unaffected"
        );
    }
}
