//! The encoder that splices `tag_ids` into the forwarded body. For any body the decoder
//! accepts and any ids: the output is one JSON object, it decodes to the same event,
//! its `tag_ids` are exactly the ids given, and every other field is unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::BTreeMap;

/// The decoder and encoder exactly as the worker builds them.
#[path = "../../src/event/mod.rs"]
#[allow(dead_code)]
mod event;

fuzz_target!(|data: &[u8]| {
    // The first bytes choose the ids, the rest is the body.
    if data.len() < 8 {
        return;
    }
    let (seed, body) = data.split_at(8);
    let Ok(mut event) = event::decode_bytes(body) else {
        return;
    };
    let seed = u64::from_le_bytes(seed.try_into().expect("8 bytes"));
    let ids: Vec<[Option<u64>; 2]> = (0..event.tags.len() as u64)
        .map(|i| {
            let id = |n: u64| {
                let x = seed.rotate_left((i * 2 + n) as u32 % 64) ^ i;
                (x % 3 != 0).then_some(x)
            };
            [id(0), id(1)]
        })
        .collect();
    event.tag_ids = Some(ids.clone());
    let encoded = event.encoded();

    // Compared as raw JSON text per field: every field but `tag_ids` keeps its exact
    // bytes. (Raw values, not `Value`: a lone surrogate escape such as "\ud944" is
    // passed through as sent, which a strict `Value` parse would refuse.)
    let Ok(original) = serde_json::from_str::<Fields>(body_str(body)) else {
        // Only a key with a lone surrogate escape gets here (serde_json refuses it as a
        // Rust string; the decoder skips unknown keys unread). The output must still be
        // an event.
        let again = event::decode(&encoded).expect("the encoded body decodes");
        assert_eq!(again.event_id, event.event_id);
        return;
    };
    let out: Fields = serde_json::from_str(&encoded).expect("the encoded body is a JSON object");
    let expected_ids: Vec<Value> = ids
        .iter()
        .map(|pair| {
            Value::Array(
                pair.iter()
                    .map(|id| id.map_or(Value::Null, Value::from))
                    .collect(),
            )
        })
        .collect();
    let got_ids: Value =
        serde_json::from_str(out.get("tag_ids").expect("tag_ids is there").get()).expect("ids");
    assert_eq!(got_ids, Value::Array(expected_ids));
    let text = |m: &Fields| -> Vec<(String, String)> {
        m.iter()
            .filter(|(k, _)| k.as_str() != "tag_ids")
            .map(|(k, v)| (k.clone(), v.get().to_string()))
            .collect()
    };
    assert_eq!(
        text(&out),
        text(&original),
        "fields other than tag_ids are unchanged"
    );

    let again = event::decode(&encoded).expect("the encoded body decodes");
    assert_eq!(again.event_id, event.event_id);
    assert_eq!(again.project_id, event.project_id);
    assert_eq!(again.organization_id, event.organization_id);
    assert_eq!(again.tags, event.tags);
});

/// Every field's raw JSON text, by key.
type Fields = BTreeMap<String, Box<RawValue>>;

fn body_str(body: &[u8]) -> &str {
    std::str::from_utf8(body).expect("accepted bodies are UTF-8")
}
