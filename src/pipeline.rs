//! The core shared by `run`, `replay` and (later) Lambda: decode a batch of messages,
//! index the tags of its events (one `bulk_record` for the whole batch), forward the
//! valid events, and settle each message.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use crate::aws::AwsError;
use crate::event::{decode, DecodeError, Event};
use crate::forward::{DeadLetter, DeadLetterQueue, Forwarder, Reason, Router};
use crate::indexer::{Indexer, IndexerError};
use crate::metrics::{events, Counter, Metrics, Timer};
use crate::retry::ErrorClass;
use crate::source::SourceMessage;

/// Why an event was not forwarded, whatever the stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// `index` or `forward`.
    pub stage: &'static str,
    /// What kind of failure.
    pub class: ErrorClass,
    /// The service's or the database's error code, if any.
    pub code: Option<String>,
    /// Detail for logs.
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed ({}", self.stage, self.class.as_str())?;
        if let Some(code) = &self.code {
            write!(f, ", {code}")?;
        }
        write!(f, "): {}", self.message)
    }
}

impl From<&AwsError> for Failure {
    fn from(e: &AwsError) -> Self {
        Failure {
            stage: "forward",
            class: e.class,
            code: e.code.clone(),
            message: e.message.clone(),
        }
    }
}

impl From<&IndexerError> for Failure {
    fn from(e: &IndexerError) -> Self {
        Failure {
            stage: "index",
            class: e.class(),
            code: None,
            message: e.to_string(),
        }
    }
}

/// What became of one message.
#[derive(Debug, Clone)]
pub enum Settlement {
    /// The destination accepted its event: the message may be deleted.
    Forwarded,
    /// The body is not a valid event; the message must not be deleted silently.
    Invalid(DecodeError),
    /// The event was not forwarded; the message stays for a later try.
    Failed(Failure),
    /// It can never be forwarded, and the dead-letter queue accepted it: the message may
    /// be deleted.
    DeadLettered(Reason),
    /// Not to be forwarded: its project has no route (`skip_unconfigured`). Counted;
    /// the message may be deleted.
    Skipped(&'static str),
}

impl Settlement {
    /// Whether the body was not a valid event (dead-lettered or not).
    pub fn is_invalid(&self) -> bool {
        match self {
            Settlement::Invalid(_) => true,
            Settlement::DeadLettered(reason) => reason.stage == "decode",
            _ => false,
        }
    }

    /// Whether a valid event could not be forwarded (dead-lettered or not).
    pub fn is_failed(&self) -> bool {
        match self {
            Settlement::Failed(_) => true,
            Settlement::DeadLettered(reason) => reason.stage != "decode",
            _ => false,
        }
    }

    /// Whether the message is settled for good (forwarded or dead-lettered) and may be
    /// deleted from the source.
    pub fn is_done(&self) -> bool {
        matches!(
            self,
            Settlement::Forwarded | Settlement::DeadLettered(_) | Settlement::Skipped(_)
        )
    }

    /// Why the message would be dead-lettered: an invalid body, or a permanent failure.
    /// Transient failures whose retries ran out are not: a later try may succeed.
    fn dead_letter_reason(&self) -> Option<Reason> {
        match self {
            Settlement::Invalid(err) => Some(Reason {
                stage: "decode",
                reason: err.reason(),
                error_code: None,
                detail: err.to_string(),
            }),
            Settlement::Failed(f) if !f.class.is_retryable() => Some(Reason {
                stage: f.stage,
                reason: f.class.as_str(),
                error_code: f.code.clone(),
                detail: f.message.clone(),
            }),
            _ => None,
        }
    }
}

/// Decode, index, forward.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The forwarder of each project.
    router: Router,
    /// Interns tag strings; `None` when the stage is off.
    indexer: Option<Arc<Indexer>>,
    /// Takes what can never be forwarded (`FORWARDER_DLQ_URL`); `None`: such messages
    /// stay in the source queue for its redrive policy.
    dead_letter: Option<DeadLetterQueue>,
    /// Where outcomes are counted.
    metrics: Metrics,
}

impl Pipeline {
    /// A pipeline forwarding through `router`, indexing with `indexer` if given.
    pub fn new(router: Router, indexer: Option<Arc<Indexer>>, metrics: Metrics) -> Self {
        Self {
            router,
            indexer,
            dead_letter: None,
            metrics,
        }
    }

    /// Sends what can never be forwarded to this dead-letter queue.
    pub fn with_dead_letter(mut self, dead_letter: Option<DeadLetterQueue>) -> Self {
        self.dead_letter = dead_letter;
        self
    }

    /// The router.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Processes a batch; returns one settlement per message, in order.
    pub async fn process(&self, messages: &[SourceMessage]) -> Vec<Settlement> {
        let mut settlements: Vec<Option<Settlement>> = vec![None; messages.len()];
        let mut events: Vec<Event<'_>> = Vec::with_capacity(messages.len());
        let mut positions = Vec::with_capacity(messages.len());
        for (i, message) in messages.iter().enumerate() {
            match decode(&message.body) {
                Ok(event) => {
                    events.push(event);
                    positions.push(i);
                }
                Err(err) => {
                    events::invalid_event(
                        &self.metrics,
                        &message.message_id,
                        message.receive_count,
                        &err,
                    );
                    settlements[i] = Some(Settlement::Invalid(err));
                }
            }
        }

        if let (Some(indexer), false) = (&self.indexer, events.is_empty()) {
            if let Err(err) = self.index(indexer, &mut events).await {
                let failure = Failure::from(&err);
                for (event, &i) in events.iter().zip(&positions) {
                    events::forward_failed(
                        &self.metrics,
                        &messages[i].message_id,
                        &event.event_id,
                        &failure,
                    );
                    settlements[i] = Some(Settlement::Failed(failure.clone()));
                }
                events.clear();
            }
        }

        // Group the events by destination, keeping their order within each.
        let mut groups: Vec<(Arc<Forwarder>, Vec<usize>)> = Vec::new();
        for (k, event) in events.iter().enumerate() {
            match self.router.route(event.project_id) {
                Some(forwarder) => match groups.iter_mut().find(|(f, _)| Arc::ptr_eq(f, forwarder))
                {
                    Some((_, members)) => members.push(k),
                    None => groups.push((forwarder.clone(), vec![k])),
                },
                None => {
                    events::skipped_unconfigured(&self.metrics, &event.event_id, event.project_id);
                    settlements[positions[k]] = Some(Settlement::Skipped("unconfigured"));
                }
            }
        }
        for (forwarder, members) in groups {
            let batch: Vec<&Event<'_>> = members.iter().map(|&k| &events[k]).collect();
            let deliveries = forwarder.forward(&batch).await;
            let accepted_at = SystemTime::now();
            for (&k, delivery) in members.iter().zip(deliveries) {
                let (event, i) = (&events[k], positions[k]);
                let message = &messages[i];
                settlements[i] = Some(match delivery {
                    Ok(()) => {
                        if let Some(latency) = message
                            .sent_at
                            .and_then(|sent| accepted_at.duration_since(sent).ok())
                        {
                            self.metrics.timing(Timer::EndToEnd, latency);
                        }
                        Settlement::Forwarded
                    }
                    Err(err) => {
                        let failure = Failure::from(&err);
                        events::forward_failed(
                            &self.metrics,
                            &message.message_id,
                            &event.event_id,
                            &failure,
                        );
                        Settlement::Failed(failure)
                    }
                });
            }
        }
        let mut settlements: Vec<Settlement> = settlements
            .into_iter()
            .map(|s| {
                s.unwrap_or_else(|| {
                    Settlement::Failed(Failure {
                        stage: "forward",
                        class: ErrorClass::Local,
                        code: None,
                        message: "no outcome for the message".into(),
                    })
                })
            })
            .collect();
        if let Some(dlq) = &self.dead_letter {
            self.dead_letter(dlq, messages, &mut settlements).await;
        }
        settlements
    }

    /// Sends the messages that can never be forwarded to the DLQ, with their original
    /// bodies; those it accepts become [`Settlement::DeadLettered`].
    async fn dead_letter(
        &self,
        dlq: &DeadLetterQueue,
        messages: &[SourceMessage],
        settlements: &mut [Settlement],
    ) {
        let (positions, letters): (Vec<usize>, Vec<DeadLetter<'_>>) = settlements
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                s.dead_letter_reason().map(|reason| {
                    (
                        i,
                        DeadLetter {
                            body: &messages[i].body,
                            source_message_id: &messages[i].message_id,
                            reason,
                        },
                    )
                })
            })
            .unzip();
        if letters.is_empty() {
            return;
        }
        let deliveries = dlq.send(&letters).await;
        for ((i, letter), delivery) in positions.into_iter().zip(letters).zip(deliveries) {
            match delivery {
                Ok(()) => settlements[i] = Settlement::DeadLettered(letter.reason),
                Err(err) => events::dead_letter_failed(&messages[i].message_id, &err),
            }
        }
    }

    /// One `bulk_record` for every tag of every event; sets each event's `tag_ids`.
    async fn index(&self, indexer: &Indexer, events: &mut [Event<'_>]) -> Result<(), IndexerError> {
        index_events(indexer, &self.metrics, events).await
    }
}

/// The indexer stage for a batch: one `bulk_record` for every tag string of every
/// event, then each event's `tag_ids` in tag order. Public for the per-event benchmark.
pub async fn index_events(
    indexer: &Indexer,
    metrics: &Metrics,
    events: &mut [Event<'_>],
) -> Result<(), IndexerError> {
    let ids: Vec<Vec<[Option<u64>; 2]>> = {
        let mut request: HashMap<u64, HashSet<&str>> = HashMap::new();
        let mut empty_keys = 0u64;
        for event in events.iter() {
            let strings = request.entry(event.organization_id).or_default();
            for (key, value) in &event.tags {
                if key.is_empty() {
                    empty_keys += 1;
                } else {
                    strings.insert(key);
                }
                strings.insert(value);
            }
        }
        if empty_keys > 0 {
            metrics.count(
                Counter::IndexerRefused {
                    reason: "empty_key",
                },
                empty_keys,
            );
        }
        let found = indexer.bulk_record(&request).await?;
        events
            .iter()
            .map(|event| {
                let org = found.get(&event.organization_id);
                let id = |s: &str| org.and_then(|m| m.get(s)).and_then(|l| l.id);
                event
                    .tags
                    .iter()
                    .map(|(k, v)| [if k.is_empty() { None } else { id(k) }, id(v)])
                    .collect()
            })
            .collect()
    };
    for (event, ids) in events.iter_mut().zip(ids) {
        event.tag_ids = Some(ids);
    }
    Ok(())
}
