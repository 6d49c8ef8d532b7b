//! The event decoder against serde_json as the reference, on arbitrary bytes. They must
//! agree on accept or refuse, on the extracted fields, and on the forwarded bytes:
//!
//! - a body serde_json finds syntactically invalid (anywhere, even in a field the
//!   decoder never reads) is refused as `invalid_json` (or `not_utf8`);
//! - a body the decoder accepts is valid JSON, forwarded byte for byte, and its fields
//!   are those serde_json reads;
//! - a valid object with valid fields and no repeated known field is accepted.
//!
//! The reference for syntax is `serde_json::from_slice::<IgnoredAny>`: the full grammar,
//! strings and escapes included. A lone surrogate escape (`"\ud800"`) is valid JSON
//! text but not a Rust string: the decoder accepts it (marked, in a tag), as
//! `IgnoredAny` does; field comparisons skip such bodies, which `Value` cannot hold.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

/// The decoder and encoder exactly as the worker builds them.
#[path = "../../src/event/mod.rs"]
#[allow(dead_code)]
mod event;

const KNOWN: [&str; 6] = [
    "event_id",
    "project_id",
    "organization_id",
    "tags",
    "tag_ids",
    "timestamp",
];

/// Whether a top-level object repeats one of the fields the decoder reads (which it
/// refuses as ambiguous); `None` if the keys cannot be read as strings.
fn repeats_a_known_field(data: &[u8]) -> Option<bool> {
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = bool;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
            let mut seen = HashSet::new();
            let mut repeated = false;
            while let Some(key) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                if KNOWN.contains(&key.as_str()) && !seen.insert(key) {
                    repeated = true;
                }
            }
            Ok(repeated)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(data);
    serde::Deserializer::deserialize_map(&mut de, Keys).ok()
}

/// Whether serde_json's `Value` of the fields says the event is valid.
fn valid_fields(v: &serde_json::Map<String, Value>) -> bool {
    let id_ok = |k: &str| {
        v.get(k)
            .and_then(Value::as_u64)
            .is_some_and(|n| n > 0 && n <= i64::MAX as u64)
    };
    let event_id_ok = v
        .get("event_id")
        .and_then(Value::as_str)
        .is_some_and(|s| s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()));
    let tag = |t: &Value| t.is_string();
    let tags_ok = match v.get("tags") {
        None | Some(Value::Null) => true,
        Some(Value::Object(o)) => o.values().all(tag),
        Some(Value::Array(a)) => a.iter().all(|p| {
            p.as_array()
                .is_some_and(|p| p.len() == 2 && p.iter().all(tag))
        }),
        Some(_) => false,
    };
    event_id_ok && id_ok("project_id") && id_ok("organization_id") && tags_ok
}

fuzz_target!(|data: &[u8]| {
    let decoded = event::decode_bytes(data);
    let syntax_ok = serde_json::from_slice::<IgnoredAny>(data).is_ok();
    let reason = decoded.as_ref().err().map(|e| e.reason());
    if !syntax_ok {
        // Broken anywhere: refused as invalid JSON (or not UTF-8), never accepted.
        assert!(
            matches!(reason, Some("invalid_json" | "not_utf8")),
            "syntax error not refused as such: {reason:?}"
        );
        return;
    }
    if reason == Some("invalid_json") {
        // Valid JSON refused as invalid: only for a repeated known field.
        assert_ne!(
            repeats_a_known_field(data),
            Some(false),
            "valid JSON refused as invalid_json"
        );
    }
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        // A lone surrogate: valid JSON text, no `Value`. Nothing more to compare.
        return;
    };
    let Some(object) = value.as_object() else {
        assert_eq!(reason, Some("not_an_object"));
        return;
    };
    let repeated = repeats_a_known_field(data) == Some(true);
    match &decoded {
        Ok(e) => {
            assert!(!repeated, "a repeated known field accepted");
            assert_eq!(e.body.as_bytes(), data, "forwarded byte for byte");
            assert_eq!(object["event_id"].as_str(), Some(e.event_id.as_ref()));
            assert_eq!(object["project_id"].as_u64(), Some(e.project_id));
            assert_eq!(object["organization_id"].as_u64(), Some(e.organization_id));
            let tags: Vec<(String, String)> = e
                .tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let want: Vec<(String, String)> = match object.get("tags") {
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|p| {
                        let s = |i: usize| p[i].as_str().unwrap_or_default().to_string();
                        (s(0), s(1))
                    })
                    .collect(),
                Some(Value::Object(o)) if !o.is_empty() => {
                    // `Value`'s map keeps one of repeated keys; the decoder keeps all.
                    let mut got = tags.clone();
                    got.sort();
                    got.dedup_by(|a, b| a.0 == b.0);
                    let mut want: Vec<(String, String)> = o
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect();
                    want.sort();
                    if got.len() == want.len() {
                        assert!(got.iter().all(|(k, _)| o.contains_key(k)));
                    }
                    tags.clone()
                }
                _ => Vec::new(),
            };
            assert_eq!(tags, want, "the same tags");
            // With ids spliced in: still one object, the other fields unchanged.
            let mut with_ids = e.clone();
            with_ids.tag_ids = Some(vec![[Some(1), None]; e.tags.len()]);
            let out: Value = serde_json::from_str(&with_ids.encoded()).expect("valid output");
            let out = out.as_object().expect("an object");
            for (k, v) in object {
                if k != "tag_ids" {
                    assert_eq!(out.get(k), Some(v), "{k} changed");
                }
            }
        }
        Err(err) => {
            assert!(
                repeated || !valid_fields(object),
                "a valid event refused: {err}"
            );
        }
    }
});
