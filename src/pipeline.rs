//! The core shared by `run`, `replay` and (later) Lambda: decode a batch of messages,
//! forward the valid events, and settle each message.

use std::time::SystemTime;

use crate::aws::SqsError;
use crate::event::{decode, DecodeError, Event};
use crate::forward::Forwarder;
use crate::metrics::{events, Metrics, Timer};
use crate::source::SourceMessage;

/// What became of one message.
#[derive(Debug, Clone)]
pub enum Settlement {
    /// The destination accepted its event: the message may be deleted.
    Forwarded,
    /// The body is not a valid event; the message must not be deleted silently.
    Invalid(DecodeError),
    /// The event could not be forwarded; the message stays for a later try.
    Failed(SqsError),
}

impl Settlement {
    /// Whether the message's event reached the destination.
    pub fn is_forwarded(&self) -> bool {
        matches!(self, Settlement::Forwarded)
    }
}

/// Decode, then forward.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// Sends events to the destination.
    forwarder: Forwarder,
    /// Where outcomes are counted.
    metrics: Metrics,
}

impl Pipeline {
    /// A pipeline forwarding with `forwarder`.
    pub fn new(forwarder: Forwarder, metrics: Metrics) -> Self {
        Self { forwarder, metrics }
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
                        events::forward_failed(
                            &self.metrics,
                            &message.message_id,
                            &event.event_id,
                            &err,
                        );
                        Settlement::Failed(err)
                    }
                });
            }
        }
        settlements
            .into_iter()
            .map(|s| {
                s.unwrap_or_else(|| {
                    Settlement::Failed(SqsError {
                        operation: "send",
                        class: crate::retry::ErrorClass::Local,
                        code: None,
                        message: "no outcome for the message".into(),
                    })
                })
            })
            .collect()
    }
}
