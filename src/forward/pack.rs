//! Packing (`pack = "ndjson"`): many events in one destination message, one per line,
//! each line the event as an unpacked route would send it (its fields, its `tag_ids`).
//!
//! A route's events wait in a [`Window`] of lines, shared by every poller: a message
//! closes when the next line would pass the message size limit, or when its oldest line
//! has waited the batch window (`FORWARDER_BATCH_WINDOW`). Without a window (zero, or a
//! Lambda), a message packs what one received batch brings. To a FIFO destination a
//! message packs one received batch too: the order of a group is only known within a
//! batch, and two messages of one group must never race.
//!
//! Each message holds one message group's events (its `MessageGroupId`), in their order,
//! and carries the Number attribute `events`. To a FIFO queue its deduplication id is
//! derived from its event ids, so a resend of the same message is deduplicated, and
//! the messages of one group follow each other ([`Outgoing::after`]).
//!
//! All or none: once a message is accepted, every event in it is; if it is not, none is.
//! A message-level rejection (`InvalidMessageContents`, …: [`ErrorClass::MessageRejected`])
//! sends its events again one per message, so only the bad one fails (and is
//! dead-lettered). With `s3_offload = "always"` each message is one S3 object of NDJSON
//! (gzip with `pack_compression = "gzip"`) and the queue gets its pointer
//! ([`Offloader::offload_pack`]).

use std::collections::HashMap;
use std::sync::Arc;

use super::offload::Offloader;
use super::pack_object::{pack_id, PackCompression};
use super::sender::{local, Attribute, Outgoing, SendOutcome, SqsSender};
use crate::batching::{BatchWindow, ByteBound, CallFn, Entry, Window};
use crate::metrics::{Distribution, Metrics};
use crate::outcome::ErrorClass;
use crate::retry::BatchReply;

/// Room kept in a packed message for its attributes: `events` (name, type, up to
/// twenty digits) and a pointer's payload size.
const ATTRIBUTE_ROOM: usize = 96;

/// Lines one message holds at most: far more than a megabyte of events ever makes.
const MAX_LINES: usize = 100_000;

/// How a route's messages carry events (`pack` / `FORWARDER_PACK`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Pack {
    /// One event per message.
    #[default]
    Off,
    /// Many events per message, one JSON object per line.
    Ndjson,
}

impl std::str::FromStr for Pack {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Pack::Off),
            "ndjson" => Ok(Pack::Ndjson),
            other => Err(format!(
                "{other:?} is not a packing; expected off or ndjson"
            )),
        }
    }
}

impl Pack {
    /// The setting's value, as written.
    pub fn as_str(self) -> &'static str {
        match self {
            Pack::Off => "off",
            Pack::Ndjson => "ndjson",
        }
    }
}

/// One event waiting for its pack.
#[derive(Debug, Clone)]
pub struct Line {
    /// Its id within its submission (then within the pack's call).
    id: String,
    /// Its event id: the pack's deduplication id is derived from them.
    event_id: String,
    /// The message it would be alone: its line is the body, and it is what is sent if
    /// its pack is rejected as a message.
    message: Outgoing<'static>,
}

impl Line {
    /// The line of an event whose message alone would be `message`. A raw line break in
    /// the body can only be whitespace between JSON tokens (a string holds `\n`
    /// escaped): it becomes a space, so the line is one line and the event the same.
    pub fn new(event_id: &str, mut message: Outgoing<'static>) -> Self {
        if memchr::memchr2(b'\n', b'\r', message.body.as_bytes()).is_some() {
            message.body = message.body.replace(['\n', '\r'], " ").into();
        }
        Self {
            id: String::new(),
            event_id: event_id.to_string(),
            message,
        }
    }
}

impl Entry for Line {
    fn id(&self) -> &str {
        &self.id
    }

    fn set_id(&mut self, id: String) {
        self.id = id;
    }

    /// Its line and the line break after it.
    fn size(&self) -> usize {
        self.message.body.len() + 1
    }
}

/// A route's packer: every poller's lines share its window (clones share it).
#[derive(Debug, Clone)]
pub struct Packer {
    /// Where lines wait for their pack.
    window: Arc<Window<Line, SendOutcome>>,
}

/// What a pack's call needs.
#[derive(Debug, Clone)]
struct Packing {
    /// Sends the packs (and the lines of a rejected pack): its own SendMessageBatch
    /// calls go at once, the pack having waited its window already.
    sender: SqsSender,
    /// Stores each pack, when the route offloads always.
    offloader: Option<Offloader>,
    /// How a pack's object is stored.
    compression: PackCompression,
    /// Whether the destination is a FIFO queue: deduplication ids, and a group's packs
    /// one after the other.
    fifo: bool,
    /// The most line bytes in one pack: the route's message limit less the room for
    /// the pack's attributes (it follows the queue's own limit).
    budget: ByteBound,
    /// Where pack sizes are counted.
    metrics: Metrics,
}

impl Packer {
    /// A packer sending through `sender` (with no window of its own), its lines sharing
    /// packs within `window` (to a standard queue).
    pub fn new(
        sender: &SqsSender,
        offloader: Option<Offloader>,
        compression: PackCompression,
        fifo: bool,
        window: &BatchWindow,
        metrics: Metrics,
    ) -> Self {
        let budget = sender.limit().bound().less(ATTRIBUTE_ROOM);
        let packing = Packing {
            sender: sender.clone().with_window(&BatchWindow::none()),
            offloader: offloader.filter(Offloader::always),
            compression,
            fifo,
            budget: budget.clone(),
            metrics,
        };
        let call: CallFn<Line, SendOutcome> = Arc::new(move |lines| {
            let packing = packing.clone();
            Box::pin(async move { Ok(packing.send(lines).await) })
        });
        let setting = if fifo {
            BatchWindow::none()
        } else {
            window.clone()
        };
        Self {
            window: Arc::new(Window::new(setting, MAX_LINES, budget.clone(), call)),
        }
    }

    /// Sends `lines` packed (shared with other callers' within the window); one outcome
    /// per line, in order.
    pub async fn send(&self, mut lines: Vec<Line>) -> Vec<SendOutcome> {
        for (n, line) in lines.iter_mut().enumerate() {
            line.id = n.to_string();
        }
        let count = lines.len();
        let mut outcomes: Vec<Option<SendOutcome>> = vec![None; count];
        if let Ok(reply) = self.window.submit(lines).await {
            let at = |id: &str| id.parse::<usize>().ok().filter(|&n| n < count);
            for id in reply.successful {
                if let Some(n) = at(&id) {
                    outcomes[n] = Some(SendOutcome::Accepted);
                }
            }
            for (id, outcome) in reply.failed {
                if let Some(n) = at(&id) {
                    outcomes[n] = Some(outcome);
                }
            }
        }
        outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| SendOutcome::Failed(local("no outcome for the event's pack")))
            })
            .collect()
    }
}

impl Packing {
    /// One call's lines: packed, sent, and each line's outcome by its id.
    async fn send(&self, lines: Vec<Line>) -> BatchReply<SendOutcome> {
        let mut reply = BatchReply {
            successful: Vec::new(),
            failed: Vec::new(),
        };
        let mut messages = Vec::new();
        let mut members: Vec<Vec<usize>> = Vec::new();
        // FIFO: the last pack of each group, which the next one follows, and the groups
        // a pack of which could not be built: their later packs are held back.
        let mut last: HashMap<Option<&str>, usize> = HashMap::new();
        let mut broken: Vec<Option<&str>> = Vec::new();
        for pack in plan(&lines, self.budget.get()) {
            let group = lines[pack[0]].message.group_id.as_deref();
            if self.fifo && broken.contains(&group) {
                for &i in &pack {
                    reply
                        .failed
                        .push((lines[i].id.clone(), SendOutcome::HeldBack));
                }
                continue;
            }
            self.metrics
                .distribution(Distribution::PackEvents, pack.len() as u64);
            match self.message(&lines, &pack).await {
                Ok(mut message) => {
                    if self.fifo {
                        message.after = last.insert(group, messages.len());
                    }
                    messages.push(message);
                    members.push(pack);
                }
                // Its object could not be stored: none of its events goes.
                Err(outcome) => {
                    broken.push(group);
                    for &i in &pack {
                        reply.failed.push((lines[i].id.clone(), outcome.clone()));
                    }
                }
            }
        }
        let sent = self.sender.send(&messages).await;
        let mut rejected = Vec::new();
        for (pack, outcome) in members.into_iter().zip(sent) {
            match outcome {
                SendOutcome::Accepted => {
                    reply
                        .successful
                        .extend(pack.iter().map(|&i| lines[i].id.clone()));
                }
                SendOutcome::Failed(err)
                    if err.class == ErrorClass::MessageRejected && pack.len() > 1 =>
                {
                    tracing::warn!(
                        events = pack.len(),
                        error = %err,
                        "packed message rejected: its events are sent again one per message"
                    );
                    rejected.extend(pack);
                }
                other => {
                    for &i in &pack {
                        reply.failed.push((lines[i].id.clone(), other.clone()));
                    }
                }
            }
        }
        if !rejected.is_empty() {
            rejected.sort_unstable();
            self.send_alone(&lines, &rejected, &mut reply).await;
        }
        reply
    }

    /// The lines of rejected packs, each as its own message (a group's in order).
    async fn send_alone(
        &self,
        lines: &[Line],
        which: &[usize],
        reply: &mut BatchReply<SendOutcome>,
    ) {
        let mut last: HashMap<Option<&str>, usize> = HashMap::new();
        let singles: Vec<Outgoing<'_>> = which
            .iter()
            .enumerate()
            .map(|(k, &i)| {
                let mut m = lines[i].message.clone();
                if self.fifo {
                    m.after = last.insert(lines[i].message.group_id.as_deref(), k);
                }
                m
            })
            .collect();
        let sent = self.sender.send(&singles).await;
        for (&i, outcome) in which.iter().zip(sent) {
            let id = lines[i].id.clone();
            match outcome {
                SendOutcome::Accepted => reply.successful.push(id),
                other => reply.failed.push((id, other)),
            }
        }
    }

    /// The message of one pack: its lines, or (offloading always) the pointer to its
    /// object.
    async fn message(
        &self,
        lines: &[Line],
        pack: &[usize],
    ) -> Result<Outgoing<'static>, SendOutcome> {
        let mut body = String::with_capacity(pack.iter().map(|&i| lines[i].size()).sum());
        for &i in pack {
            body.push_str(&lines[i].message.body);
            body.push('\n');
        }
        let first = &lines[pack[0]].message;
        let id = pack_id(pack.iter().map(|&i| lines[i].event_id.as_str()));
        let mut message = Outgoing {
            body: body.into(),
            attributes: vec![Attribute::number("events", pack.len() as u64)],
            group_id: first.group_id.clone(),
            trace_header: None,
            dedup_id: self.fifo.then(|| id.clone()),
            after: None,
        };
        if let Some(offloader) = &self.offloader {
            let pointer = offloader
                .offload_pack(&id, message.body.as_bytes(), pack.len(), self.compression)
                .await
                .map_err(SendOutcome::Failed)?;
            message.body = pointer.body.into();
            message.attributes.extend(pointer.attributes);
        }
        Ok(message)
    }
}

/// The packs of one call's lines: each one message group's lines, in their order, within
/// `budget` bytes (a line alone over it is a pack of its own).
fn plan(lines: &[Line], budget: usize) -> Vec<Vec<usize>> {
    // Each group's lines, the groups in the order they first appear.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut index: HashMap<Option<&str>, usize> = HashMap::new();
    for (i, line) in lines.iter().enumerate() {
        let group = line.message.group_id.as_deref();
        let at = *index.entry(group).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[at].push(i);
    }
    let mut packs = Vec::new();
    for members in groups {
        let mut pack: Vec<usize> = Vec::new();
        let mut bytes = 0;
        for i in members {
            let size = lines[i].size();
            if !pack.is_empty() && bytes + size > budget {
                packs.push(std::mem::take(&mut pack));
                bytes = 0;
            }
            pack.push(i);
            bytes += size;
        }
        if !pack.is_empty() {
            packs.push(pack);
        }
    }
    packs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(event: u32, group: Option<&str>, bytes: usize) -> Line {
        let body = format!(
            "{{\"event_id\":\"{event:032x}\",\"x\":\"{}\"}}",
            "a".repeat(bytes)
        );
        Line::new(
            &format!("{event:032x}"),
            Outgoing {
                body: body.into(),
                attributes: Vec::new(),
                group_id: group.map(str::to_string),
                trace_header: None,
                dedup_id: None,
                after: None,
            },
        )
    }

    #[test]
    fn packs_hold_one_group_each_in_order_within_the_budget() {
        let lines = vec![
            line(1, Some("a"), 10),
            line(2, Some("b"), 10),
            line(3, Some("a"), 10),
            line(4, Some("a"), 10),
            line(5, Some("b"), 10),
        ];
        let each = lines[0].size();
        assert_eq!(
            plan(&lines, 2 * each),
            vec![vec![0, 2], vec![3], vec![1, 4]]
        );
        // A line alone over the budget is a pack of its own.
        let big = vec![line(1, None, 10), line(2, None, 500), line(3, None, 10)];
        assert_eq!(plan(&big, 100), vec![vec![0], vec![1], vec![2]]);
    }

    #[test]
    fn a_line_break_in_a_body_becomes_a_space() {
        let mut l = line(1, None, 1);
        l.message.body = "{\"event_id\":\n\"x\",\r\n\"s\":\"a\\nb\"}".into();
        let l = Line::new("x", l.message);
        assert_eq!(l.message.body, "{\"event_id\": \"x\",  \"s\":\"a\\nb\"}");
        let parsed: serde_json::Value = serde_json::from_str(&l.message.body).unwrap();
        assert_eq!(parsed["s"], "a\nb");
    }
}
