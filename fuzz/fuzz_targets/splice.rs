//! The field splice (`exclude_fields` / `include_fields`) against serde_json as the
//! reference: for any valid event and any path list, the spliced body parses to what
//! removing the same fields from a parsed `serde_json::Value` gives, and every member the
//! paths do not reach is byte-identical to the original's.
//!
//! Input: one byte for the mode (even: exclude, odd: include), the paths (comma-separated)
//! up to the first newline, then the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use serde_json::Value;

#[path = "../../src/event/mod.rs"]
#[allow(dead_code)]
mod event;

use event::fields::{FieldPath, FieldRules, REQUIRED};

/// The rest of every path whose first segment matches `key` (`None`: an array element).
fn matching<'p>(paths: &[&'p [Option<String>]], key: Option<&str>) -> Vec<&'p [Option<String>]> {
    paths
        .iter()
        .filter_map(|p| match p.split_first() {
            Some((None, rest)) => Some(rest),
            Some((Some(name), rest)) if key == Some(name.as_str()) => Some(rest),
            _ => None,
        })
        .collect()
}

/// The reference: `value` with the paths applied, on the parsed tree.
fn reference(value: &mut Value, paths: &[&[Option<String>]], include: bool, top: bool) {
    match value {
        Value::Object(map) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                if top && REQUIRED.contains(&k.as_str()) {
                    continue;
                }
                let m = matching(paths, Some(&k));
                let keep = if m.is_empty() {
                    !include
                } else if m.iter().any(|r| r.is_empty()) {
                    include
                } else {
                    if let Some(child) = map.get_mut(&k) {
                        reference(child, &m, include, false);
                    }
                    true
                };
                if !keep {
                    map.remove(&k);
                }
            }
        }
        Value::Array(items) => {
            let m = matching(paths, None);
            if m.is_empty() {
                if include {
                    items.clear();
                }
            } else if m.iter().any(|r| r.is_empty()) {
                if !include {
                    items.clear();
                }
            } else {
                for item in items.iter_mut() {
                    reference(item, &m, include, false);
                }
            }
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let Some((paths, body)) = text.split_once('\n') else {
        return;
    };
    let paths: Vec<String> = paths.split(',').map(str::to_string).collect();
    let include = mode % 2 == 1;
    let rules = if include {
        FieldRules::new(&[], &paths)
    } else {
        FieldRules::new(&paths, &[])
    };
    let Ok(Some(rules)) = rules else {
        return;
    };
    let Ok(event) = event::decode(body) else {
        return;
    };
    // A lone surrogate is valid JSON that `Value` cannot hold: no reference.
    let Ok(mut want) = serde_json::from_str::<Value>(body) else {
        return;
    };
    let spliced = event.encoded_with(Some(&rules));
    let got: Value = serde_json::from_str(&spliced)
        .unwrap_or_else(|e| panic!("the splice is not JSON ({e}): {spliced}"));
    let parsed: Vec<FieldPath> = match &rules {
        FieldRules::Exclude(p) | FieldRules::Include(p) => p.clone(),
    };
    let refs: Vec<&[Option<String>]> = parsed.iter().map(|p| p.0.as_slice()).collect();
    reference(&mut want, &refs, include, true);
    assert_eq!(got, want, "paths {paths:?} on {body}\ngave {spliced}");
    // Members no path reaches: byte-identical.
    fn members(t: &str) -> Option<std::collections::HashMap<String, &RawValue>> {
        serde_json::from_str(t).ok()
    }
    if let (Some(before), Some(after)) = (members(body), members(&spliced)) {
        for (k, v) in &after {
            if matching(&refs, Some(k)).is_empty() {
                assert_eq!(before.get(k).map(|r| r.get()), Some(v.get()), "{k} changed");
            }
        }
    }
});
