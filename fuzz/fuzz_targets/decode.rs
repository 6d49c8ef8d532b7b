//! The event decoder on arbitrary bytes: it never panics, and what it accepts is
//! forwarded byte for byte and decodes again to the same event.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// The decoder and encoder exactly as the worker builds them.
#[path = "../../src/event/mod.rs"]
#[allow(dead_code)]
mod event;

fuzz_target!(|data: &[u8]| {
    let Ok(event) = event::decode_bytes(data) else {
        return;
    };
    // Nothing added yet: the forwarded body is the input, untouched.
    assert_eq!(event.encoded(), event.body);
    assert_eq!(event.body.as_bytes(), data);
    // Accepted input is stable: decoding it again gives the same event.
    let again = event::decode(event.body).expect("an accepted body decodes again");
    assert_eq!(again, event);
    assert_eq!(event.event_id.len(), 32);
    assert!(event.project_id > 0 && event.organization_id > 0);
});
