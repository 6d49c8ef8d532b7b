//! The encoder that splices `tag_ids` into the forwarded body. For any body the decoder
//! accepts and any ids: the output is one JSON object, it decodes to the same event,
//! its `tag_ids` are exactly the ids given, and every other field is unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

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

    let out: Map<String, Value> =
        serde_json::from_str(&encoded).expect("the encoded body is a JSON object");
    let original: Map<String, Value> =
        serde_json::from_str(body_str(body)).expect("an accepted body is a JSON object");
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
    assert_eq!(out.get("tag_ids"), Some(&Value::Array(expected_ids)));
    let mut rest = out.clone();
    rest.remove("tag_ids");
    let mut original_rest = original;
    original_rest.remove("tag_ids");
    assert_eq!(
        rest, original_rest,
        "fields other than tag_ids are unchanged"
    );

    let again = event::decode(&encoded).expect("the encoded body decodes");
    assert_eq!(again.event_id, event.event_id);
    assert_eq!(again.project_id, event.project_id);
    assert_eq!(again.organization_id, event.organization_id);
    assert_eq!(again.tags, event.tags);
});

fn body_str(body: &[u8]) -> &str {
    std::str::from_utf8(body).expect("accepted bodies are UTF-8")
}
