//! Shared strings: common tag keys and values with ids fixed in code, the same for
//! every organization, in a range ([`MAX_SHARED_ID`] and below) that stored ids never
//! reach. They are never written to the store. As Sentry's `SHARED_STRINGS`.
//!
//! An entry's id is its position in [`SHARED`] plus one: append new strings at the end,
//! never reorder or remove, or ids already forwarded change meaning.

use std::collections::HashMap;
use std::sync::LazyLock;

/// Highest id a shared string may take; stored ids start above it.
pub const MAX_SHARED_ID: u64 = 65535;

/// The shared strings, in id order (id = index + 1).
pub const SHARED: &[&str] = &[
    // Tag keys Sentry sets on most events.
    "environment",
    "release",
    "dist",
    "level",
    "logger",
    "transaction",
    "server_name",
    "site",
    "url",
    "user",
    "handled",
    "mechanism",
    "runtime",
    "runtime.name",
    "browser",
    "browser.name",
    "os",
    "os.name",
    "device",
    "device.family",
    "sdk.name",
    "sdk.version",
    "platform",
    "status",
    "http.method",
    "http.status_code",
    "transaction.op",
    "transaction.status",
    "mobile",
    "replayId",
    // Common values.
    "production",
    "prod",
    "staging",
    "development",
    "dev",
    "test",
    "debug",
    "info",
    "warning",
    "error",
    "fatal",
    "yes",
    "no",
    "true",
    "false",
    "ok",
    "cancelled",
    "unknown",
    "internal_error",
    "GET",
    "POST",
    "PUT",
    "DELETE",
    "PATCH",
    "python",
    "javascript",
    "node",
    "java",
    "go",
    "ruby",
    "php",
    "csharp",
    "cocoa",
    "native",
    "android",
    "Chrome",
    "Firefox",
    "Safari",
    "Edge",
    "Windows",
    "macOS",
    "Linux",
    "iOS",
    "Android",
];

/// Shared string to id, built once.
static IDS: LazyLock<HashMap<&'static str, u64>> = LazyLock::new(|| {
    SHARED
        .iter()
        .enumerate()
        .map(|(i, s)| (*s, i as u64 + 1))
        .collect()
});

/// The id of a shared string.
pub fn id_of(s: &str) -> Option<u64> {
    IDS.get(s).copied()
}

/// The shared string with this id.
pub fn string_of(id: u64) -> Option<&'static str> {
    let index = usize::try_from(id.checked_sub(1)?).ok()?;
    SHARED.get(index).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_stay_in_range() {
        assert!(SHARED.len() as u64 <= MAX_SHARED_ID);
        for (i, s) in SHARED.iter().enumerate() {
            let id = id_of(s).unwrap();
            assert_eq!(id, i as u64 + 1, "{s} is listed twice");
            assert!(id <= MAX_SHARED_ID);
            assert_eq!(string_of(id), Some(*s));
        }
        assert_eq!(id_of("environment"), Some(1));
        assert_eq!(string_of(0), None);
        assert_eq!(id_of("not-shared"), None);
    }
}
