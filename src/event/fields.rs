//! What each destination receives of an event: only the fields it wants
//! ([`FieldRules`], `exclude_fields` / `include_fields`), and only the events it wants
//! ([`Filter`]).
//!
//! Paths are dotted, with `*` for every element of an array or every member of an
//! object: `request.cookies`, `user.ip_address`, `exception.values.*.stacktrace.frames.*.vars`.
//!
//! Removing fields is a splice, as adding `tag_ids` is: the rules give byte ranges of the
//! original body to leave out ([`FieldRules::deletions`]), and the encoder copies the
//! rest. What is kept stays byte for byte as it came: no reordering, no reformatting.
//! A removed member takes its separating comma with it; a kept one keeps its own.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Range;

use super::{Event, Text};

/// The fields the forwarder needs at the destination: never removed, always included.
pub const REQUIRED: [&str; 4] = ["event_id", "project_id", "organization_id", "tag_ids"];

/// A path, one segment per level; `None` is `*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FieldPath(pub Vec<Option<String>>);

impl std::str::FromStr for FieldPath {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("an empty path".into());
        }
        let segments = text
            .split('.')
            .map(|s| match s {
                "" => Err(format!("{text:?}: an empty segment")),
                "*" => Ok(None),
                s => Ok(Some(s.to_string())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(FieldPath(segments))
    }
}

impl std::fmt::Display for FieldPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            f.write_str(s.as_deref().unwrap_or("*"))?;
        }
        Ok(())
    }
}

/// A route's field rules: the fields left out, or the only ones sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FieldRules {
    /// `exclude_fields`: every field but these (and what they hold).
    Exclude(Vec<FieldPath>),
    /// `include_fields`: only these, plus [`REQUIRED`].
    Include(Vec<FieldPath>),
}

/// The paths as a tree: what a level's members match.
#[derive(Debug, Clone, Default)]
struct Node {
    /// A path ends here: the whole value is named.
    end: bool,
    /// Named members.
    children: BTreeMap<String, Node>,
    /// `*`: every member or element.
    any: Option<Box<Node>>,
}

impl Node {
    fn from_paths(paths: &[FieldPath]) -> Node {
        let mut root = Node::default();
        for path in paths {
            let mut node = &mut root;
            for segment in &path.0 {
                node = match segment {
                    Some(name) => node.children.entry(name.clone()).or_default(),
                    None => node.any.get_or_insert_with(Box::default),
                };
            }
            node.end = true;
        }
        root
    }

    /// What a member named `key` (`None`: an array element) matches: its named child
    /// and `*`, merged.
    fn matching(&self, key: Option<&str>) -> Option<Cow<'_, Node>> {
        let named = key.and_then(|k| self.children.get(k));
        match (named, self.any.as_deref()) {
            (None, None) => None,
            (Some(n), None) | (None, Some(n)) => Some(Cow::Borrowed(n)),
            (Some(a), Some(b)) => Some(Cow::Owned(a.merged(b))),
        }
    }

    fn merged(&self, other: &Node) -> Node {
        let mut out = self.clone();
        out.end |= other.end;
        for (k, v) in &other.children {
            let merged = match out.children.get(k) {
                Some(mine) => mine.merged(v),
                None => v.clone(),
            };
            out.children.insert(k.clone(), merged);
        }
        out.any = match (out.any.take(), &other.any) {
            (Some(a), Some(b)) => Some(Box::new(a.merged(b))),
            (a, b) => a.or_else(|| b.clone()),
        };
        out
    }
}

impl FieldRules {
    /// Rules from their setting: `exclude` or `include` (not both), each a list of
    /// paths. `None` when neither is given.
    pub fn new(exclude: &[String], include: &[String]) -> Result<Option<FieldRules>, String> {
        let parse = |paths: &[String]| -> Result<Vec<FieldPath>, String> {
            paths
                .iter()
                .filter(|p| !p.trim().is_empty())
                .map(|p| p.parse())
                .collect()
        };
        let (exclude, include) = (parse(exclude)?, parse(include)?);
        match (exclude.is_empty(), include.is_empty()) {
            (true, true) => Ok(None),
            (false, false) => Err("exclude_fields and include_fields cannot both be set".into()),
            (false, true) => {
                if let Some(p) = exclude.iter().find(|p| match p.0.first() {
                    Some(Some(first)) => REQUIRED.contains(&first.as_str()),
                    _ => true,
                }) {
                    return Err(format!(
                        "{p}: cannot exclude a field the forwarder needs ({}) or every field",
                        REQUIRED.join(", ")
                    ));
                }
                Ok(Some(FieldRules::Exclude(exclude)))
            }
            (true, false) => Ok(Some(FieldRules::Include(include))),
        }
    }

    /// The rules as set, for `check` and the start-up line.
    pub fn describe(&self) -> String {
        let (kind, paths) = match self {
            FieldRules::Exclude(p) => ("exclude", p),
            FieldRules::Include(p) => ("include", p),
        };
        let paths: Vec<String> = paths.iter().map(ToString::to_string).collect();
        format!("{kind} {}", paths.join(","))
    }

    /// The byte ranges of `body` (a valid event) to leave out, sorted, not overlapping.
    pub fn deletions(&self, body: &str) -> Vec<Range<usize>> {
        let (include, paths) = match self {
            FieldRules::Exclude(p) => (false, p),
            FieldRules::Include(p) => (true, p),
        };
        let root = Node::from_paths(paths);
        let top = body.trim();
        let offset = top.as_ptr() as usize - body.as_ptr() as usize;
        let mut out = Vec::new();
        visit(
            body,
            offset..offset + top.len(),
            &root,
            include,
            true,
            &mut out,
        );
        out.sort_by_key(|r| r.start);
        // Containment is possible (a member removed whole, and inside it): merge.
        let mut merged: Vec<Range<usize>> = Vec::with_capacity(out.len());
        for r in out {
            match merged.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        merged
    }
}

/// The members of an object (with their keys) or the elements of an array, each value
/// as its raw JSON text (a slice of the body), in their order.
enum Items<'a> {
    /// A key JSON allows but a Rust string cannot hold (a lone surrogate escape) is
    /// `None`: it matches only `*`, and the rest of its object is still read, or the
    /// fields it excluded would go out.
    Object(Vec<(Option<Cow<'a, str>>, &'a str)>),
    Array(Vec<&'a str>),
}

/// The items of `text`, a JSON object or array (the decoder validated the body): one
/// pass over its bytes that skips each value, copying nothing but escaped keys. `None`
/// for anything else, or for text that is not what it should be.
fn items(text: &str) -> Option<Items<'_>> {
    let b = text.as_bytes();
    let object = match b.first()? {
        b'{' => true,
        b'[' => false,
        _ => return None,
    };
    let close = if object { b'}' } else { b']' };
    let mut members = Vec::new();
    let mut elements = Vec::new();
    let mut i = skip_ws(b, 1);
    if b.get(i) == Some(&close) {
        return Some(if object {
            Items::Object(members)
        } else {
            Items::Array(elements)
        });
    }
    loop {
        if object {
            let key_end = string_end(b, i)?;
            let raw = text.get(i..key_end)?;
            let key = if raw.contains('\\') {
                serde_json::from_str::<Text<'_>>(raw).ok().map(|Text(k)| k)
            } else {
                raw.get(1..raw.len() - 1).map(Cow::Borrowed)
            };
            i = skip_ws(b, key_end);
            if b.get(i) != Some(&b':') {
                return None;
            }
            i = skip_ws(b, i + 1);
            let end = value_end(b, i)?;
            members.push((key, text.get(i..end)?));
            i = end;
        } else {
            let end = value_end(b, i)?;
            elements.push(text.get(i..end)?);
            i = end;
        }
        i = skip_ws(b, i);
        match b.get(i)? {
            b',' => i = skip_ws(b, i + 1),
            c if *c == close => break,
            _ => return None,
        }
    }
    Some(if object {
        Items::Object(members)
    } else {
        Items::Array(elements)
    })
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The end (exclusive) of the string starting at `i` (its opening quote).
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let mut j = i + 1;
    loop {
        j += memchr::memchr2(b'"', b'\\', b.get(j..)?)?;
        match b.get(j)? {
            b'"' => return Some(j + 1),
            _ => j += 2,
        }
    }
}

/// The end (exclusive) of the value starting at `i`.
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => string_end(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match b.get(j)? {
                    b'"' => {
                        j = string_end(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while !matches!(
                b.get(j),
                None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            ) {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

/// Collects the deletions inside the value at `at` (a range of `body`) under `node`.
/// `top`: the event object itself, whose [`REQUIRED`] fields always stay whole.
fn visit(
    body: &str,
    at: Range<usize>,
    node: &Node,
    include: bool,
    top: bool,
    out: &mut Vec<Range<usize>>,
) {
    let Some(items) = items(&body[at.clone()]) else {
        return;
    };
    let base = body.as_ptr() as usize;
    let span = |raw: &str| {
        let start = raw.as_ptr() as usize - base;
        start..start + raw.len()
    };
    let entries: Vec<(Option<&str>, Range<usize>)> = match &items {
        Items::Object(members) => members
            .iter()
            .map(|(k, v)| (k.as_deref(), span(v)))
            .collect(),
        Items::Array(elements) => elements.iter().map(|v| (None, span(v))).collect(),
    };
    let mut keep = Vec::with_capacity(entries.len());
    for (key, value) in &entries {
        if top && key.is_some_and(|k| REQUIRED.contains(&k)) {
            keep.push(true);
            continue;
        }
        let kept = match node.matching(*key) {
            None => !include,
            Some(m) if m.end => include,
            Some(m) => {
                visit(body, value.clone(), &m, include, false, out);
                true
            }
        };
        keep.push(kept);
    }
    // Member j's region runs from the end of the one before (or the opening bracket)
    // to the end of its value: its separator, key and value.
    let open = at.start + 1;
    let begin = |j: usize| if j == 0 { open } else { entries[j - 1].1.end };
    let item_start = |j: usize| {
        let rest = &body[begin(j)..];
        let skipped = rest.trim_start();
        let skipped = skipped.strip_prefix(',').unwrap_or(skipped).trim_start();
        begin(j) + (rest.len() - skipped.len())
    };
    match keep.iter().position(|k| *k) {
        None if !entries.is_empty() => out.push(open..at.end - 1),
        None => {}
        Some(first) => {
            if first > 0 {
                out.push(item_start(0)..item_start(first));
            }
            for j in first + 1..entries.len() {
                if !keep[j] {
                    out.push(begin(j)..entries[j].1.end);
                }
            }
        }
    }
}

/// Which events a route forwards: every entry must match.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Filter(pub Vec<(FieldPath, Vec<String>)>);

impl Filter {
    /// A filter from `path → accepted values`. A path may not hold `*`.
    pub fn new(
        entries: impl IntoIterator<Item = (String, Vec<String>)>,
    ) -> Result<Option<Filter>, String> {
        let mut out = Vec::new();
        for (path, values) in entries {
            let parsed: FieldPath = path.parse()?;
            if parsed.0.iter().any(Option::is_none) {
                return Err(format!("{path}: a filter path cannot hold `*`"));
            }
            if values.is_empty() {
                return Err(format!("{path}: no accepted value"));
            }
            out.push((parsed, values));
        }
        Ok((!out.is_empty()).then_some(Filter(out)))
    }

    /// `FORWARDER_FILTER`: `path=value|value,path=value`.
    pub fn parse_env(text: &str) -> Result<Option<Filter>, String> {
        let entries = text
            .split(',')
            .filter(|e| !e.trim().is_empty())
            .map(|e| {
                let (path, values) = e
                    .split_once('=')
                    .ok_or_else(|| format!("{e:?}: expected path=value|value"))?;
                Ok((
                    path.trim().to_string(),
                    values.split('|').map(|v| v.trim().to_string()).collect(),
                ))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Filter::new(entries)
    }

    /// The filter as set, for `check` and the start-up line.
    pub fn describe(&self) -> String {
        self.0
            .iter()
            .map(|(p, v)| format!("{p}={}", v.join("|")))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Whether `event` matches every entry: `tags.KEY` is a tag's value; any other path
    /// a field of the body (a string's text, or a number's or boolean's JSON text).
    pub fn matches(&self, event: &Event<'_>) -> bool {
        self.0.iter().all(|(path, accepted)| {
            let value = match path.0.as_slice() {
                [Some(tags), Some(key)] if tags == "tags" => event
                    .tags
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v.clone()),
                _ => lookup(event.body, path),
            };
            value.is_some_and(|v| accepted.iter().any(|a| *a == v))
        })
    }
}

/// The text of the value at `path` in `body`: a string unescaped, else its JSON text;
/// `None` if there is none (or it is an object, an array or null).
fn lookup<'a>(body: &'a str, path: &FieldPath) -> Option<Cow<'a, str>> {
    let mut raw: &'a str = body.trim();
    for segment in &path.0 {
        let name = segment.as_deref()?;
        let Some(Items::Object(members)) = items(raw) else {
            return None;
        };
        raw = members
            .into_iter()
            .find(|(k, _)| k.as_deref() == Some(name))?
            .1;
    }
    match raw.as_bytes().first()? {
        b'"' => serde_json::from_str::<Text<'a>>(raw).ok().map(|Text(t)| t),
        b'{' | b'[' | b'n' => None,
        _ => Some(Cow::Borrowed(raw)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(rules: &FieldRules, body: &str) -> String {
        let mut out = String::new();
        let mut at = 0;
        for r in rules.deletions(body) {
            out.push_str(&body[at..r.start]);
            at = r.end;
        }
        out.push_str(&body[at..]);
        out
    }

    fn exclude(paths: &[&str]) -> FieldRules {
        let paths: Vec<String> = paths.iter().map(|s| s.to_string()).collect();
        FieldRules::new(&paths, &[]).unwrap().unwrap()
    }

    fn include(paths: &[&str]) -> FieldRules {
        let paths: Vec<String> = paths.iter().map(|s| s.to_string()).collect();
        FieldRules::new(&[], &paths).unwrap().unwrap()
    }

    const HEAD: &str =
        r#""event_id":"0123456789abcdef0123456789abcdef","project_id":1,"organization_id":2"#;

    #[test]
    fn excluded_members_go_with_their_comma_and_the_rest_stays_byte_for_byte() {
        let body = format!(
            r#"{{ "user": {{"id": "u1", "ip_address": "10.0.0.1"}}, {HEAD}, "request": {{"cookies": "a=b",  "url" : "/x"}} }}"#
        );
        let out = apply(&exclude(&["user.ip_address", "request.cookies"]), &body);
        assert_eq!(
            out,
            format!(r#"{{ "user": {{"id": "u1"}}, {HEAD}, "request": {{"url" : "/x"}} }}"#)
        );
        let out = apply(&exclude(&["user"]), &body);
        assert_eq!(
            out,
            format!(r#"{{ {HEAD}, "request": {{"cookies": "a=b",  "url" : "/x"}} }}"#)
        );
    }

    #[test]
    fn wildcards_reach_into_arrays_and_objects() {
        let body = format!(
            r#"{{{HEAD},"exception":{{"values":[{{"type":"E","stacktrace":{{"frames":[{{"f":"a","vars":{{"x":1}}}},{{"f":"b","vars":{{}}}}]}}}},{{"type":"F"}}]}}}}"#
        );
        let out = apply(
            &exclude(&["exception.values.*.stacktrace.frames.*.vars"]),
            &body,
        );
        assert_eq!(
            out,
            format!(
                r#"{{{HEAD},"exception":{{"values":[{{"type":"E","stacktrace":{{"frames":[{{"f":"a"}},{{"f":"b"}}]}}}},{{"type":"F"}}]}}}}"#
            )
        );
        let all = format!(r#"{{{HEAD},"extra":{{"a":1,"b":2}},"list":[1,2,3]}}"#);
        assert_eq!(
            apply(&exclude(&["extra.*", "list.*"]), &all),
            format!(r#"{{{HEAD},"extra":{{}},"list":[]}}"#)
        );
    }

    #[test]
    fn include_keeps_only_its_paths_and_the_required_fields() {
        let body = format!(
            r#"{{"level":"error",{HEAD},"user":{{"id":"u1","ip_address":"10.0.0.1"}},"tag_ids":[[1,2]],"extra":{{"n":1}}}}"#
        );
        let out = apply(&include(&["user.id", "level"]), &body);
        assert_eq!(
            out,
            format!(r#"{{"level":"error",{HEAD},"user":{{"id":"u1"}},"tag_ids":[[1,2]]}}"#)
        );
        let out = apply(&include(&["nothing_there"]), &body);
        assert_eq!(out, format!(r#"{{{HEAD},"tag_ids":[[1,2]]}}"#));
    }

    #[test]
    fn a_key_no_rust_string_can_hold_does_not_keep_an_excluded_field() {
        // `"\ud800"`: valid JSON, not a Rust string. Its object is still spliced.
        let body = format!(r#"{{{HEAD},"user":{{"\ud800x":1,"ip_address":"10.0.0.1"}}}}"#);
        crate::event::decode(&body).unwrap();
        assert_eq!(
            apply(&exclude(&["user.ip_address"]), &body),
            format!(r#"{{{HEAD},"user":{{"\ud800x":1}}}}"#)
        );
        assert_eq!(
            apply(&exclude(&["user.*"]), &body),
            format!(r#"{{{HEAD},"user":{{}}}}"#)
        );
    }

    #[test]
    fn bad_paths_and_both_settings_are_refused() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(FieldRules::new(&s(&["a..b"]), &[]).is_err());
        assert!(FieldRules::new(&s(&["event_id"]), &[]).is_err());
        assert!(FieldRules::new(&s(&["*"]), &[]).is_err());
        assert!(FieldRules::new(&s(&["a"]), &s(&["b"])).is_err());
        assert_eq!(FieldRules::new(&[], &[]), Ok(None));
        assert!(Filter::parse_env("level").is_err());
        assert!(Filter::parse_env("a.*=x").is_err());
    }

    #[test]
    fn filters_match_fields_and_tags_and_all_entries() {
        let body = format!(
            r#"{{{HEAD},"level":"error","type":"error","n":3,"tags":[["customer","acme"]]}}"#
        );
        let event = crate::event::decode(&body).unwrap();
        let f = |text: &str| Filter::parse_env(text).unwrap().unwrap();
        assert!(f("level=error|fatal").matches(&event));
        assert!(f("level=error,tags.customer=acme|globex").matches(&event));
        assert!(!f("level=error,tags.customer=globex").matches(&event));
        assert!(
            !f("environment=production").matches(&event),
            "a missing field does not match"
        );
        assert!(f("n=3").matches(&event));
        assert_eq!(
            f("level=error|fatal,type=error").describe(),
            "level=error|fatal,type=error"
        );
    }
}
