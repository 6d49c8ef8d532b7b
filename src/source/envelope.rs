//! Source envelopes (`FORWARDER_SOURCE_ENVELOPE`): a source queue subscribed to an SNS
//! topic with raw delivery off (SNS's default) holds SNS envelopes,
//! `{"Type":"Notification","Message":"<the event as a string>",…}`. The event inside is
//! what is decoded and forwarded, byte for byte as it was published; the envelope's
//! `MessageAttributes` join the message's own. The dead-letter queue still gets the
//! message as it was received (the envelope), so a redrive puts back what came.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;

use super::SourceMessage;
use crate::aws::Attribute;
use crate::event::DecodeError;

/// What the source's bodies are (`FORWARDER_SOURCE_ENVELOPE`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SourceEnvelope {
    /// An SNS Notification envelope is opened; any other body is the event itself.
    #[default]
    Auto,
    /// Every body must be an SNS Notification envelope: anything else is invalid
    /// (`not_an_sns_notification`).
    Sns,
    /// Every body is the event itself, whatever it looks like.
    None,
}

impl std::str::FromStr for SourceEnvelope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(SourceEnvelope::Auto),
            "sns" => Ok(SourceEnvelope::Sns),
            "none" => Ok(SourceEnvelope::None),
            other => Err(format!(
                "{other:?} is not a source envelope; expected auto, sns or none"
            )),
        }
    }
}

impl SourceEnvelope {
    /// The setting's value, as written.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceEnvelope::Auto => "auto",
            SourceEnvelope::Sns => "sns",
            SourceEnvelope::None => "none",
        }
    }
}

/// The fields of an SNS envelope that matter here.
#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "Type")]
    kind: Option<String>,
    #[serde(rename = "TopicArn")]
    topic_arn: Option<String>,
    #[serde(rename = "Message")]
    message: Option<serde_json::Value>,
    #[serde(rename = "MessageAttributes", default)]
    attributes: BTreeMap<String, EnvelopeAttribute>,
}

/// One of the envelope's `MessageAttributes`: `{"Type": "String", "Value": "…"}`
/// (`Binary` values in base64).
#[derive(Deserialize)]
struct EnvelopeAttribute {
    #[serde(rename = "Type")]
    kind: String,
    #[serde(rename = "Value")]
    value: String,
}

/// A batch's messages as the pipeline decodes and forwards them: borrowed as they are
/// when none is an envelope (the usual case, no copy), else with each envelope opened.
#[derive(Debug)]
pub struct Opened<'m> {
    /// The messages, their bodies the events.
    pub messages: Cow<'m, [SourceMessage]>,
    /// Whether each one's event came out of an envelope.
    pub wrapped: Vec<bool>,
    /// Each message refused before decoding (not an envelope where one must be, or a
    /// broken one), by position.
    pub refused: Vec<(usize, DecodeError)>,
}

/// Opens the envelopes of `messages` as `mode` says.
pub fn open(messages: &[SourceMessage], mode: SourceEnvelope) -> Opened<'_> {
    let mut opened = Opened {
        messages: Cow::Borrowed(messages),
        wrapped: vec![false; messages.len()],
        refused: Vec::new(),
    };
    if mode == SourceEnvelope::None {
        return opened;
    }
    for (i, message) in messages.iter().enumerate() {
        match open_one(&message.body, mode) {
            Ok(None) => {}
            Ok(Some((event, attributes))) => {
                let owned = opened.messages.to_mut();
                owned[i].body = event;
                owned[i].attributes.extend(attributes);
                opened.wrapped[i] = true;
            }
            Err(err) => opened.refused.push((i, err)),
        }
    }
    opened
}

/// The event and the attributes inside `body` if it is an SNS Notification; `None` if
/// it is not one (and need not be).
fn open_one(
    body: &str,
    mode: SourceEnvelope,
) -> Result<Option<(String, Vec<Attribute>)>, DecodeError> {
    // Cheap first: an envelope names its type and its topic. An event that merely
    // holds these words somewhere is parsed once more, then taken as it is.
    let looks = memchr::memmem::find(body.as_bytes(), b"\"Notification\"").is_some()
        && memchr::memmem::find(body.as_bytes(), b"\"TopicArn\"").is_some();
    let envelope = looks
        .then(|| serde_json::from_str::<Envelope>(body).ok())
        .flatten()
        .filter(|e| e.kind.as_deref() == Some("Notification") && e.topic_arn.is_some());
    let Some(envelope) = envelope else {
        return match mode {
            SourceEnvelope::Sns => Err(DecodeError::NotSnsNotification),
            _ => Ok(None),
        };
    };
    let Some(serde_json::Value::String(event)) = envelope.message else {
        return Err(DecodeError::InvalidSnsEnvelope(
            "its Message is not a string".into(),
        ));
    };
    let mut attributes = Vec::with_capacity(envelope.attributes.len());
    for (name, a) in envelope.attributes {
        let bytes = if a.kind == "Binary" {
            let decoded = aws_smithy_types::base64::decode(&a.value).map_err(|e| {
                DecodeError::InvalidSnsEnvelope(format!("attribute {name:?} is not base64: {e}"))
            })?;
            Some(decoded)
        } else {
            None
        };
        // SNS's String.Array is a String to SQS.
        let data_type = if a.kind == "String.Array" {
            "String".to_string()
        } else {
            a.kind
        };
        attributes.extend(Attribute::received(name, data_type, Some(a.value), bytes));
    }
    Ok(Some((event, attributes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(body: &str) -> SourceMessage {
        SourceMessage {
            message_id: "m".into(),
            body: body.into(),
            ..Default::default()
        }
    }

    const EVENT: &str = "{\"event_id\":\"0123456789abcdef0123456789abcdef\",\"project_id\":1,\"organization_id\":2, \"x\":\"a\\u00e9\\n\"}";

    fn envelope(message: &serde_json::Value) -> String {
        serde_json::json!({
            "Type": "Notification",
            "MessageId": "e2b6…",
            "TopicArn": "arn:aws:sns:us-east-1:000000000000:events",
            "Message": message,
            "Timestamp": "2026-12-04T10:00:00.000Z",
            "SignatureVersion": "1",
            "MessageAttributes": {
                "tenant": {"Type": "String", "Value": "acme"},
                "size": {"Type": "Number", "Value": "3"},
                "blob": {"Type": "Binary", "Value": "AAEC"}
            }
        })
        .to_string()
    }

    #[test]
    fn an_sns_notification_gives_the_event_byte_for_byte_and_its_attributes() {
        let batch = [message(&envelope(&EVENT.into())), message(EVENT)];
        let opened = open(&batch, SourceEnvelope::Auto);
        assert!(opened.refused.is_empty());
        assert_eq!(opened.wrapped, [true, false]);
        assert_eq!(opened.messages[0].body, EVENT, "the text as published");
        assert_eq!(opened.messages[1].body, EVENT);
        let a = &opened.messages[0];
        assert_eq!(a.attribute("tenant"), Some("acme"));
        assert_eq!(a.attribute("size"), Some("3"));
        let blob = a.attributes.iter().find(|x| x.name == "blob").unwrap();
        assert_eq!(blob.data_type, "Binary");
        assert_eq!(
            batch[0].body,
            envelope(&EVENT.into()),
            "the original is kept"
        );
    }

    #[test]
    fn a_batch_without_envelopes_is_not_copied() {
        let batch = [message(EVENT)];
        let opened = open(&batch, SourceEnvelope::Auto);
        assert!(matches!(opened.messages, Cow::Borrowed(_)));
        // An event that mentions both words is still an event.
        let tricky = "{\"event_id\":\"0123456789abcdef0123456789abcdef\",\"project_id\":1,\"organization_id\":2,\"extra\":{\"Type\":\"Notification\",\"TopicArn\":\"t\"}}";
        let batch = [message(tricky)];
        let opened = open(&batch, SourceEnvelope::Auto);
        assert_eq!(opened.wrapped, [false]);
        assert_eq!(opened.messages[0].body, tricky);
    }

    #[test]
    fn what_cannot_be_opened_is_refused_with_its_own_reason() {
        let not_a_string = envelope(&serde_json::json!({"event_id": "x"}));
        let batch = [message(&not_a_string), message(EVENT)];
        let opened = open(&batch, SourceEnvelope::Sns);
        let reasons: Vec<(usize, &str)> = opened
            .refused
            .iter()
            .map(|(i, e)| (*i, e.reason()))
            .collect();
        assert_eq!(
            reasons,
            [(0, "invalid_sns_envelope"), (1, "not_an_sns_notification")]
        );
        // `none`: nothing is opened.
        let batch = [message(&envelope(&EVENT.into()))];
        let opened = open(&batch, SourceEnvelope::None);
        assert_eq!(opened.wrapped, [false]);
    }
}
