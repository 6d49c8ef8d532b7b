//! The core shared by `run`, `replay` and (later) Lambda: decode a batch of messages,
//! index the tags of its events (one `bulk_record` for the whole batch), forward the
//! valid events, and settle each message.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use crate::aws::SqsError;
use crate::event::{decode, DecodeError, Event};
use crate::forward::Forwarder;
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

impl From<&SqsError> for Failure {
    fn from(e: &SqsError) -> Self {
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
}

impl Settlement {
    /// Whether the message's event reached the destination.
    pub fn is_forwarded(&self) -> bool {
        matches!(self, Settlement::Forwarded)
    }
}

/// Decode, index, forward.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// Sends events to the destination.
    forwarder: Forwarder,
    /// Interns tag strings; `None` when the stage is off.
    indexer: Option<Arc<Indexer>>,
    /// Where outcomes are counted.
    metrics: Metrics,
}

impl Pipeline {
    /// A pipeline forwarding with `forwarder`, indexing with `indexer` if given.
    pub fn new(forwarder: Forwarder, indexer: Option<Arc<Indexer>>, metrics: Metrics) -> Self {
        Self {
            forwarder,
            indexer,
            metrics,
        }
    }

    /// The forwarder.
    pub fn forwarder(&self) -> &Forwarder {
        &self.forwarder
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

        if !events.is_empty() {
            let deliveries = self.forwarder.forward(&events).await;
            let accepted_at = SystemTime::now();
            for ((event, &i), delivery) in events.iter().zip(&positions).zip(deliveries) {
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
        settlements
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
            .collect()
    }

    /// One `bulk_record` for every tag of every event; sets each event's `tag_ids`.
    async fn index(&self, indexer: &Indexer, events: &mut [Event<'_>]) -> Result<(), IndexerError> {
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
                self.metrics.count(
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
}
