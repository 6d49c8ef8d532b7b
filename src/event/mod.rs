//! The event: a Sentry-shaped JSON object, decoded just enough to route and index it.
//!
//! Required: `event_id` (32 hex characters), `project_id` and `organization_id`
//! (positive integers). Optional: `tags`, a list of `[key, value]` string pairs or an
//! object of strings. Every other field passes through untouched: the forwarded body is
//! the original text, byte for byte.

pub mod fields;

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// A tag as `(key, value)`, borrowed from the body unless it had escapes.
pub type Tag<'a> = (Cow<'a, str>, Cow<'a, str>);

/// A decoded event, borrowing from the body it came from: decoding copies nothing but
/// strings that contain JSON escapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event<'a> {
    /// 32 hex characters, as sent (Sentry's event id without dashes).
    pub event_id: Cow<'a, str>,
    /// The Sentry project the event belongs to.
    pub project_id: u64,
    /// The organization that owns the project.
    pub organization_id: u64,
    /// Tags in the order they were given, unescaped.
    pub tags: Vec<Tag<'a>>,
    /// `timestamp`, in unix seconds, if present and readable (a number of seconds, or an
    /// RFC 3339 string; without an offset, UTC). It dates the S3 key of an oversized
    /// event; an unreadable one is not an error, the field passes through as it is.
    pub timestamp: Option<i64>,
    /// The original JSON, forwarded unchanged but for `tag_ids`.
    pub body: &'a str,
    /// Ids of the tags, `[key_id, value_id]` in tag order (`None`: no id), set by the
    /// indexer stage; added to the forwarded body as the top-level field `tag_ids`.
    pub tag_ids: Option<Vec<[Option<u64>; 2]>>,
    /// Where a `tag_ids` value already in the body is, to be replaced rather than
    /// repeated (a duplicate key would make the JSON ambiguous).
    existing_tag_ids: Option<std::ops::Range<usize>>,
}

impl<'a> Event<'a> {
    /// The body to forward: the original, with `tag_ids` added when the indexer ran.
    /// The only copy of the body made on the way out.
    pub fn encoded(&self) -> Cow<'a, str> {
        self.encoded_with(None)
    }

    /// [`Event::encoded`] for a destination with field rules: the fields they leave out
    /// are spliced out of the same copy (kept bytes unchanged), `tag_ids` added.
    pub fn encoded_with(&self, fields: Option<&fields::FieldRules>) -> Cow<'a, str> {
        let deletions = fields.map(|f| f.deletions(self.body)).unwrap_or_default();
        let Some(tag_ids) = &self.tag_ids else {
            if deletions.is_empty() {
                return Cow::Borrowed(self.body);
            }
            return Cow::Owned(splice(self.body, &deletions, None));
        };
        use std::fmt::Write as _;
        // A new member is `,"tag_ids":[…]` before the closing brace; an existing one's
        // value is replaced. The numbers are written in place: no string per id.
        let member = if self.existing_tag_ids.is_some() {
            ""
        } else {
            ",\"tag_ids\":"
        };
        let mut ids = String::with_capacity(member.len() + 2 + tag_ids.len() * 16);
        ids.push_str(member);
        ids.push('[');
        for (i, pair) in tag_ids.iter().enumerate() {
            if i > 0 {
                ids.push(',');
            }
            ids.push('[');
            for (j, id) in pair.iter().enumerate() {
                if j > 0 {
                    ids.push(',');
                }
                match id {
                    // Writing into a String does not fail.
                    Some(id) => {
                        let _ = write!(ids, "{id}");
                    }
                    None => ids.push_str("null"),
                }
            }
            ids.push(']');
        }
        ids.push(']');
        let body = self.body;
        let edit = match &self.existing_tag_ids {
            Some(range) => (range.clone(), ids),
            None => {
                // Decoding checked the body is an object with fields: it ends in `}`.
                let close = body.rfind('}').unwrap_or(body.len());
                (close..close, ids)
            }
        };
        Cow::Owned(splice(body, &deletions, Some(edit)))
    }
}

/// `body` without the `deletions` (sorted, apart), with `edit`'s range replaced by its
/// text (a range no deletion touches: the top-level `tag_ids`, or the closing brace).
fn splice(
    body: &str,
    deletions: &[std::ops::Range<usize>],
    edit: Option<(std::ops::Range<usize>, String)>,
) -> String {
    let extra = edit.as_ref().map_or(0, |(_, text)| text.len());
    let mut out = String::with_capacity(body.len() + extra);
    let mut at = 0;
    let mut edit = edit;
    for d in deletions {
        if let Some((range, text)) = edit.take_if(|(r, _)| r.start <= d.start) {
            out.push_str(&body[at..range.start]);
            out.push_str(&text);
            at = range.end;
        }
        out.push_str(&body[at..d.start]);
        at = d.end;
    }
    if let Some((range, text)) = edit {
        out.push_str(&body[at..range.start]);
        out.push_str(&text);
        at = range.end;
    }
    out.push_str(&body[at..]);
    out
}

/// Why a body is not a valid event. Each has a stable [`reason`](DecodeError::reason)
/// for the `forwarder.event.invalid` metric.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not UTF-8 (only possible for `replay` input; SQS bodies are text).
    #[error("body is not valid UTF-8: {0}")]
    NotUtf8(String),
    /// The text is not JSON, is truncated, nests too deep, or repeats a known field.
    #[error("body is not valid JSON: {0}")]
    InvalidJson(String),
    /// Valid JSON, but not an object.
    #[error("body is JSON but not an object")]
    NotAnObject,
    /// A required field is absent (or null).
    #[error("missing required field `{0}`")]
    MissingField(&'static str),
    /// A field is present with the wrong type or an out-of-range value.
    #[error("field `{field}` is invalid: {reason}")]
    InvalidField {
        /// The field's name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// `FORWARDER_SOURCE_ENVELOPE=sns`, and the body is no SNS Notification envelope.
    #[error("body is not an SNS Notification envelope")]
    NotSnsNotification,
    /// An SNS Notification envelope that cannot be opened.
    #[error("SNS Notification envelope is invalid: {0}")]
    InvalidSnsEnvelope(String),
    /// An SNS Notification whose `Message` is not a valid event.
    #[error("SNS Notification's Message is not a valid event: {0}")]
    InvalidSnsMessage(Box<DecodeError>),
}

impl DecodeError {
    /// Stable label for metric tags and the dead-letter reason.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::NotUtf8(_) => "not_utf8",
            DecodeError::InvalidJson(_) => "invalid_json",
            DecodeError::NotAnObject => "not_an_object",
            DecodeError::MissingField("event_id") => "missing_event_id",
            DecodeError::MissingField("project_id") => "missing_project_id",
            DecodeError::MissingField("organization_id") => "missing_organization_id",
            DecodeError::MissingField(_) => "missing_field",
            DecodeError::InvalidField {
                field: "event_id", ..
            } => "invalid_event_id",
            DecodeError::InvalidField {
                field: "project_id",
                ..
            } => "invalid_project_id",
            DecodeError::InvalidField {
                field: "organization_id",
                ..
            } => "invalid_organization_id",
            DecodeError::InvalidField { field: "tags", .. } => "invalid_tags",
            DecodeError::InvalidField { .. } => "invalid_field",
            DecodeError::NotSnsNotification => "not_an_sns_notification",
            DecodeError::InvalidSnsEnvelope(_) => "invalid_sns_envelope",
            DecodeError::InvalidSnsMessage(_) => "invalid_sns_message",
        }
    }
}

/// The fields we read, as raw text (`null` kept as `null`); the rest of the object is
/// checked for syntax and skipped.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, default, deserialize_with = "raw")]
    event_id: Option<&'a str>,
    #[serde(borrow, default, deserialize_with = "raw")]
    project_id: Option<&'a str>,
    #[serde(borrow, default, deserialize_with = "raw")]
    organization_id: Option<&'a str>,
    #[serde(borrow, default, deserialize_with = "raw")]
    tags: Option<&'a str>,
    #[serde(borrow, default, deserialize_with = "raw")]
    tag_ids: Option<&'a str>,
    #[serde(borrow, default, deserialize_with = "raw")]
    timestamp: Option<&'a str>,
}

/// A member's raw text, `null` included (an `Option` of `RawValue` reads `null` as
/// absent, and a `"tag_ids": null` in the body was then repeated, not replaced).
fn raw<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<&'de str>, D::Error> {
    <&'de RawValue>::deserialize(de).map(|raw| Some(raw.get()))
}

/// Tags in either accepted shape, in their order: a list of `[key, value]` pairs, or an
/// object (read entry by entry, since a map would lose the order).
struct Tags<'a>(Vec<Tag<'a>>);

/// A string that borrows from the input when it has no escapes.
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

impl<'de> Deserialize<'de> for Tags<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Tags<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of [key, value] string pairs or an object of strings")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Tags<'de>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some((Text(k), Text(v))) = seq.next_element()? {
                    out.push((k, v));
                }
                Ok(Tags(out))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Tags<'de>, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some((Text(k), Text(v))) = map.next_entry()? {
                    out.push((k, v));
                }
                Ok(Tags(out))
            }
        }
        de.deserialize_any(Visitor)
    }
}

/// Decodes raw bytes (a `replay` line).
pub fn decode_bytes(body: &[u8]) -> Result<Event<'_>, DecodeError> {
    let body = std::str::from_utf8(body).map_err(|e| DecodeError::NotUtf8(e.to_string()))?;
    decode(body)
}

/// Decodes a message body.
pub fn decode(body: &str) -> Result<Event<'_>, DecodeError> {
    if !body.trim_start().starts_with('{') {
        // Tell "not JSON" from "JSON, but not an object".
        return Err(match serde_json::from_str::<serde::de::IgnoredAny>(body) {
            Ok(_) => DecodeError::NotAnObject,
            Err(e) => DecodeError::InvalidJson(e.to_string()),
        });
    }
    let head: Head<'_> =
        serde_json::from_str(body).map_err(|e| DecodeError::InvalidJson(e.to_string()))?;
    Ok(Event {
        event_id: event_id(head.event_id)?,
        project_id: positive_id("project_id", head.project_id)?,
        organization_id: positive_id("organization_id", head.organization_id)?,
        tags: tags(head.tags)?,
        timestamp: head.timestamp.and_then(timestamp),
        body,
        tag_ids: None,
        existing_tag_ids: head.tag_ids.map(|raw| span_in(body, raw)),
    })
}

/// Unix seconds of a `timestamp` value: a number, or an RFC 3339 string.
fn timestamp(raw: &str) -> Option<i64> {
    if let Ok(secs) = serde_json::from_str::<f64>(raw) {
        return (secs.is_finite() && secs.abs() < 1e12).then_some(secs.floor() as i64);
    }
    let Text(text) = serde_json::from_str(raw).ok()?;
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(&text) {
        return Some(t.timestamp());
    }
    chrono::NaiveDateTime::parse_from_str(&text, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc().timestamp())
}

/// Where `part`, a slice of `body`, lies in it.
fn span_in(body: &str, part: &str) -> std::ops::Range<usize> {
    let start = (part.as_ptr() as usize).saturating_sub(body.as_ptr() as usize);
    start..start + part.len()
}

fn present<'a>(field: &'static str, raw: Option<&'a str>) -> Result<&'a str, DecodeError> {
    match raw {
        None | Some("null") => Err(DecodeError::MissingField(field)),
        Some(text) => Ok(text),
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> DecodeError {
    DecodeError::InvalidField {
        field,
        reason: reason.into(),
    }
}

fn event_id<'a>(raw: Option<&'a str>) -> Result<Cow<'a, str>, DecodeError> {
    let text = present("event_id", raw)?;
    let Text(id) =
        serde_json::from_str(text).map_err(|_| invalid("event_id", "must be a string"))?;
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid("event_id", "must be 32 hexadecimal characters"));
    }
    Ok(id)
}

fn positive_id(field: &'static str, raw: Option<&str>) -> Result<u64, DecodeError> {
    let text = present(field, raw)?;
    // Stores and Sentry keep ids as signed 64-bit integers.
    match serde_json::from_str::<u64>(text) {
        Ok(id) if id > 0 && id <= i64::MAX as u64 => Ok(id),
        _ => Err(invalid(field, "must be a positive integer below 2^63")),
    }
}

fn tags<'a>(raw: Option<&'a str>) -> Result<Vec<Tag<'a>>, DecodeError> {
    let Some(text) = raw.filter(|t| *t != "null") else {
        return Ok(Vec::new());
    };
    let shape = "must be a list of [key, value] string pairs or an object of strings";
    match serde_json::from_str(text) {
        Ok(Tags(pairs)) => Ok(pairs),
        // The fast path refuses a lone surrogate escape (`"\ud944"`), which JSON allows
        // but a Rust string cannot hold: read the tags again, keeping such strings marked.
        Err(_) => match serde_json::from_str::<Vec<(&RawValue, &RawValue)>>(text) {
            Ok(pairs) => pairs
                .into_iter()
                .map(|(k, v)| Some((lenient_text(k)?, lenient_text(v)?)))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| invalid("tags", shape)),
            Err(_) => match serde_json::from_str::<RawEntries<'a>>(text) {
                Ok(RawEntries(pairs)) => pairs
                    .into_iter()
                    .map(|(k, v)| Some((lenient_text(k)?, lenient_text(v)?)))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| invalid("tags", shape)),
                Err(_) => Err(invalid("tags", shape)),
            },
        },
    }
}

/// Marks a tag string that JSON allows but Unicode does not (a lone surrogate escape):
/// U+0000 followed by its JSON text. The indexer refuses any string holding U+0000 (as
/// PostgreSQL's text does), so such a tag gets no id and its event is still forwarded.
pub const UNREPRESENTABLE: char = '\0';

/// A tag string from its raw JSON: its text, or the [`UNREPRESENTABLE`] mark when it
/// holds a lone surrogate; `None` when it is not a string at all.
fn lenient_text<'a>(raw: &'a RawValue) -> Option<Cow<'a, str>> {
    let text = raw.get();
    if !text.starts_with('"') {
        return None;
    }
    match serde_json::from_str::<Text<'a>>(text) {
        Ok(Text(s)) => Some(s),
        Err(_) => Some(Cow::Owned(format!("{UNREPRESENTABLE}{text}"))),
    }
}

/// The entries of a tags object, as raw values in their order (for [`lenient_text`]).
struct RawEntries<'a>(Vec<(&'a RawValue, &'a RawValue)>);

impl<'de> Deserialize<'de> for RawEntries<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawEntries<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawEntries<'de>, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<&RawValue, &RawValue>()? {
                    out.push(entry);
                }
                Ok(RawEntries(out))
            }
        }
        de.deserialize_map(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789ABCDEF";

    fn ok(body: &str) -> Event<'_> {
        match decode(body) {
            Ok(e) => e,
            Err(e) => panic!("{body}: {e}"),
        }
    }

    fn reason(body: &str) -> &'static str {
        match decode(body) {
            Ok(e) => panic!("{body} decoded: {e:?}"),
            Err(e) => e.reason(),
        }
    }

    #[test]
    fn a_lone_surrogate_in_a_tag_is_kept_marked_and_the_event_is_valid() {
        let head = format!(r#""event_id":"{ID}","project_id":1,"organization_id":1"#);
        let list = format!(r#"{{{head},"tags":[["k","\ud944"],["env","prod"]]}}"#);
        let e = ok(&list);
        let marked = format!("{UNREPRESENTABLE}\"\\ud944\"");
        assert_eq!(e.tags[0], ("k".into(), marked.clone().into()));
        assert_eq!(e.tags[1], ("env".into(), "prod".into()));
        assert_eq!(e.encoded(), list, "forwarded byte for byte");
        let object = format!(r#"{{{head},"tags":{{"\udc00x":"v","a":"\ud944"}}}}"#);
        let e = ok(&object);
        assert!(e.tags[0].0.starts_with(UNREPRESENTABLE));
        assert_eq!(e.tags[0].1, "v");
        assert_eq!(e.tags[1].1, marked);
        // Still refused: a tag that is not a string, surrogate or not.
        assert_eq!(
            reason(&format!(r#"{{{head},"tags":[["\ud944",1]]}}"#)),
            "invalid_tags"
        );
        assert_eq!(
            reason(&format!(r#"{{{head},"tags":{{"\ud944":null}}}}"#)),
            "invalid_tags"
        );
    }

    #[test]
    fn valid_event_keeps_its_body_byte_for_byte() {
        let body = format!(
            r#"{{ "event_id":"{ID}", "project_id": 42, "organization_id":7,
               "message":"caf\u00e9 ☕", "extra": {{"deep": [1, 2.5, null]}},
               "tags": [["environment","production"],["level","error"]] }}"#
        );
        let e = ok(&body);
        assert!(
            matches!(e.event_id, Cow::Borrowed(_)),
            "event_id was copied"
        );
        assert_eq!(e.event_id, ID);
        assert_eq!((e.project_id, e.organization_id), (42, 7));
        assert_eq!(
            e.tags,
            [
                ("environment".into(), "production".into()),
                ("level".into(), "error".into())
            ]
        );
        assert!(e
            .tags
            .iter()
            .all(|(k, v)| matches!((k, v), (Cow::Borrowed(_), Cow::Borrowed(_)))));
        assert_eq!(e.body, body);
    }

    #[test]
    fn tags_object_keeps_order_and_unescapes() {
        let body = format!(
            r#"{{"event_id":"{ID}","project_id":1,"organization_id":1,"tags":{{"z":"1","a":"\"q\""}}}}"#
        );
        let e = ok(&body);
        assert_eq!(
            e.tags,
            [("z".into(), "1".into()), ("a".into(), "\"q\"".into())]
        );
    }

    #[test]
    fn missing_and_null_tags_are_empty() {
        let body = format!(r#"{{"event_id":"{ID}","project_id":1,"organization_id":1}}"#);
        assert!(ok(&body).tags.is_empty());
        let body =
            format!(r#"{{"event_id":"{ID}","project_id":1,"organization_id":1,"tags":null}}"#);
        assert!(ok(&body).tags.is_empty());
    }

    #[test]
    fn invalid_bodies_say_why() {
        let head = format!(r#""event_id":"{ID}","project_id":1,"organization_id":1"#);
        let cases: Vec<(String, &str)> = vec![
            ("".into(), "invalid_json"),
            ("{".into(), "invalid_json"),
            (format!("{{{head}"), "invalid_json"),
            ("[1,2]".into(), "not_an_object"),
            ("\"text\"".into(), "not_an_object"),
            ("null".into(), "not_an_object"),
            (r#"{"project_id":1,"organization_id":1}"#.into(), "missing_event_id"),
            (format!(r#"{{"event_id":"{ID}","organization_id":1}}"#), "missing_project_id"),
            (format!(r#"{{"event_id":"{ID}","project_id":1}}"#), "missing_organization_id"),
            (r#"{"event_id":null,"project_id":1,"organization_id":1}"#.into(), "missing_event_id"),
            (r#"{"event_id":"abc","project_id":1,"organization_id":1}"#.into(), "invalid_event_id"),
            (r#"{"event_id":"0123456789abcdef0123456789abcdeg","project_id":1,"organization_id":1}"#.into(), "invalid_event_id"),
            (r#"{"event_id":12,"project_id":1,"organization_id":1}"#.into(), "invalid_event_id"),
            (format!(r#"{{"event_id":"{ID}","project_id":"1","organization_id":1}}"#), "invalid_project_id"),
            (format!(r#"{{"event_id":"{ID}","project_id":-1,"organization_id":1}}"#), "invalid_project_id"),
            (format!(r#"{{"event_id":"{ID}","project_id":1.5,"organization_id":1}}"#), "invalid_project_id"),
            (format!(r#"{{"event_id":"{ID}","project_id":0,"organization_id":1}}"#), "invalid_project_id"),
            (format!(r#"{{"event_id":"{ID}","project_id":1,"organization_id":18446744073709551616}}"#), "invalid_organization_id"),
            (format!(r#"{{"event_id":"{ID}","project_id":1,"organization_id":9223372036854775808}}"#), "invalid_organization_id"),
            (format!(r#"{{{head},"tags":"a"}}"#), "invalid_tags"),
            (format!(r#"{{{head},"tags":[["a"]]}}"#), "invalid_tags"),
            (format!(r#"{{{head},"tags":[["a","b","c"]]}}"#), "invalid_tags"),
            (format!(r#"{{{head},"tags":[["a",1]]}}"#), "invalid_tags"),
            (format!(r#"{{{head},"tags":{{"a":null}}}}"#), "invalid_tags"),
            (format!(r#"{{{head},"event_id":"{ID}"}}"#), "invalid_json"),
            (format!(r#"{{{head},"tags":{}}}"#, "[".repeat(200) + &"]".repeat(200)), "invalid_tags"),
        ];
        for (body, want) in cases {
            assert_eq!(reason(&body), want, "{body}");
        }
    }

    #[test]
    fn deep_nesting_in_passthrough_fields_is_forwarded_unchanged() {
        // serde_json skips unread values without recursion: no stack risk, no rewrite.
        let body = format!(
            r#"{{"event_id":"{ID}","project_id":1,"organization_id":1,"x":{}}}"#,
            "[".repeat(5000) + &"]".repeat(5000)
        );
        assert_eq!(ok(&body).body, body);
    }

    #[test]
    fn tag_ids_are_added_and_the_rest_is_untouched() {
        let body = format!(
            "{{\"event_id\":\"{ID}\",\"project_id\":1,\"organization_id\":1,\"tags\":[[\"a\",\"b\"],[\"\",\"c\"]]}}\n"
        );
        let mut e = ok(&body);
        assert_eq!(e.encoded(), body, "no indexer: unchanged");
        e.tag_ids = Some(vec![[Some(70000), Some(1)], [None, Some(70001)]]);
        let out = e.encoded().into_owned();
        assert_eq!(
            out,
            body.replace("]]}", "]],\"tag_ids\":[[70000,1],[null,70001]]}")
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["tag_ids"], serde_json::json!([[70000, 1], [null, 70001]]));
    }

    #[test]
    fn field_rules_and_tag_ids_splice_into_one_copy() {
        let exclude = |p: &str| fields::FieldRules::new(&[p.to_string()], &[]).unwrap();
        // The last member removed right before the brace where tag_ids goes.
        let body = format!(
            r#"{{"event_id":"{ID}","project_id":1,"organization_id":1,"tags":[["a","b"]],"secret":1}}"#
        );
        let mut e = ok(&body);
        e.tag_ids = Some(vec![[Some(5), Some(6)]]);
        let rules = exclude("secret");
        assert_eq!(
            e.encoded_with(rules.as_ref()),
            format!(
                r#"{{"event_id":"{ID}","project_id":1,"organization_id":1,"tags":[["a","b"]],"tag_ids":[[5,6]]}}"#
            )
        );
        // An incoming tag_ids replaced, a field before it removed.
        let body = format!(
            r#"{{"secret":1,"event_id":"{ID}","project_id":1,"organization_id":1,"tag_ids":"x","n":2}}"#
        );
        let mut e = ok(&body);
        e.tag_ids = Some(vec![]);
        assert_eq!(
            e.encoded_with(rules.as_ref()),
            format!(
                r#"{{"event_id":"{ID}","project_id":1,"organization_id":1,"tag_ids":[],"n":2}}"#
            )
        );
        // Without the indexer, only the removal.
        let e = ok(&body);
        assert_eq!(
            e.encoded_with(exclude("n").as_ref()),
            format!(
                r#"{{"secret":1,"event_id":"{ID}","project_id":1,"organization_id":1,"tag_ids":"x"}}"#
            )
        );
    }

    #[test]
    fn an_incoming_tag_ids_field_is_replaced_not_repeated() {
        let body = format!(
            r#"{{"event_id":"{ID}","tag_ids":[[1,2]],"project_id":1,"organization_id":1,"tags":{{"a":"b"}}}}"#
        );
        let mut e = ok(&body);
        e.tag_ids = Some(vec![[Some(70000), None]]);
        let out = e.encoded().into_owned();
        assert_eq!(out, body.replace("[[1,2]]", "[[70000,null]]"));
        // `null` too: one `tag_ids` member in what goes out, never two.
        let body = format!(
            r#"{{"event_id":"{ID}","tag_ids":null,"project_id":1,"organization_id":1,"tags":{{"a":"b"}}}}"#
        );
        let mut e = ok(&body);
        e.tag_ids = Some(vec![[Some(7), Some(8)]]);
        assert_eq!(e.encoded(), body.replace("null", "[[7,8]]"));
    }

    #[test]
    fn timestamps_are_read_in_either_form() {
        let with = |ts: &str| {
            let body = format!(
                r#"{{"event_id":"{ID}","project_id":1,"organization_id":1,"timestamp":{ts}}}"#
            );
            decode(&body).map(|e| e.timestamp).ok().flatten()
        };
        assert_eq!(with("1763807400.25"), Some(1763807400));
        assert_eq!(with(r#""2025-11-22T10:30:00Z""#), Some(1763807400));
        assert_eq!(with(r#""2025-11-22T12:30:00+02:00""#), Some(1763807400));
        assert_eq!(with(r#""2025-11-22T10:30:00.123456""#), Some(1763807400));
        assert_eq!(
            with(r#""yesterday""#),
            None,
            "unreadable: no error, no date"
        );
    }

    #[test]
    fn invalid_utf8_is_reported() {
        let err = decode_bytes(&[b'{', 0xff, b'}']).err();
        assert_eq!(err.map(|e| e.reason()), Some("not_utf8"));
    }
}
