//! A batch call retried entry by entry: only the entries that failed transiently are
//! sent again, with the policy's backoff. Generic over the call and its error, so the
//! SQS batches (send, delete, change visibility) share it.

use std::collections::HashMap;
use std::future::Future;

use super::{Classified, RetryPolicy};
use crate::internal_events::{CallFailed, InternalEvent, RetryScheduled};
use crate::metrics::Metrics;
use crate::outcome::Operation;

/// What a batch call answered: the ids of the entries that succeeded, and those that
/// failed with their (classified) errors.
#[derive(Debug)]
pub struct BatchReply<E> {
    /// Ids of the entries that succeeded.
    pub successful: Vec<String>,
    /// `(id, error)` of each entry that failed.
    pub failed: Vec<(String, E)>,
}

/// Runs a batch call until every entry has succeeded or failed for good, sending again
/// only the entries that failed transiently, within `policy`'s time bound (and the
/// task's deadline). An entry the reply does not mention counts as a transient failure,
/// `missing()`.
///
/// `entries` are keyed by their batch id. The result has one outcome per id.
pub async fn retry_batch<T, E, F, Fut>(
    policy: &RetryPolicy,
    operation: Operation,
    metrics: &Metrics,
    entries: Vec<(String, T)>,
    call: F,
    missing: impl Fn() -> E,
) -> HashMap<String, Result<(), E>>
where
    T: Clone,
    E: Classified + Clone + std::fmt::Display,
    F: FnMut(Vec<T>) -> Fut,
    Fut: Future<Output = Result<BatchReply<E>, E>>,
{
    let copies: HashMap<String, T> = entries.iter().cloned().collect();
    let again = |id: &str| copies.get(id).cloned();
    retry_batch_rebuilt(policy, operation, metrics, entries, again, call, missing).await
}

/// [`retry_batch`], each retry's entries built again by `again(id)` rather than kept
/// from the first call: an entry that carries a large body (a SendMessageBatch entry of
/// a 1 MiB event) is then held once while its call is made, not twice. An id `again`
/// cannot build is as missing from the reply.
pub async fn retry_batch_rebuilt<T, E, F, Fut>(
    policy: &RetryPolicy,
    operation: Operation,
    metrics: &Metrics,
    entries: Vec<(String, T)>,
    again: impl Fn(&str) -> Option<T>,
    mut call: F,
    missing: impl Fn() -> E,
) -> HashMap<String, Result<(), E>>
where
    E: Classified + Clone + std::fmt::Display,
    F: FnMut(Vec<T>) -> Fut,
    Fut: Future<Output = Result<BatchReply<E>, E>>,
{
    let mut outcomes = HashMap::with_capacity(entries.len());
    let mut pending: Vec<String> = entries.iter().map(|(id, _)| id.clone()).collect();
    let mut first = Some(entries);
    let mut schedule = policy.schedule();
    while !pending.is_empty() {
        let request: Vec<T> = match first.take() {
            Some(entries) => entries.into_iter().map(|(_, entry)| entry).collect(),
            None => pending.iter().filter_map(|id| again(id)).collect(),
        };
        let mut transient: HashMap<String, E> = HashMap::new();
        match call(request).await {
            Ok(reply) => {
                for id in reply.successful {
                    outcomes.insert(id, Ok(()));
                }
                for (id, err) in reply.failed {
                    if err.class().is_retryable() {
                        transient.insert(id, err);
                    } else {
                        outcomes.insert(id, Err(err));
                    }
                }
            }
            Err(err) if err.class().is_retryable() => {
                for id in &pending {
                    transient.insert(id.clone(), err.clone());
                }
            }
            Err(err) => {
                for id in &pending {
                    outcomes.insert(id.clone(), Err(err.clone()));
                }
            }
        }
        pending.retain(|id| !outcomes.contains_key(id));
        for id in &pending {
            transient.entry(id.clone()).or_insert_with(&missing);
        }
        let Some(first) = transient.values().next().cloned() else {
            break;
        };
        match schedule.next_delay() {
            Some(wait) => {
                RetryScheduled {
                    operation,
                    class: first.class(),
                    error: &first,
                    wait,
                }
                .emit(metrics);
                tokio::time::sleep(wait).await;
            }
            None => {
                CallFailed {
                    operation,
                    class: first.class(),
                    error: &first,
                }
                .emit(metrics);
                outcomes.extend(transient.into_iter().map(|(id, e)| (id, Err(e))));
                break;
            }
        }
    }
    outcomes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::ErrorClass;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[derive(Debug, Clone, PartialEq)]
    struct E(ErrorClass);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0.as_str())
        }
    }
    impl Classified for E {
        fn class(&self) -> ErrorClass {
            self.0
        }
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            initial_interval: Duration::from_millis(1),
            max_interval: Duration::from_millis(2),
            max_elapsed: Duration::from_millis(300),
        }
    }

    fn missing() -> E {
        E(ErrorClass::ServerError)
    }

    /// Entries that own what they carry are not kept for a retry: the first call takes
    /// them as given, a retry gets them built again, only for the ids still pending.
    #[tokio::test]
    async fn a_retry_builds_its_entries_again_for_the_ids_still_pending() {
        let calls = std::sync::Mutex::new(Vec::new());
        let built = std::sync::Mutex::new(Vec::new());
        let entries = vec![("0".to_string(), "a".to_string()), ("1".into(), "b".into())];
        let out = retry_batch_rebuilt(
            &fast(),
            Operation::Send,
            &Metrics::disabled(),
            entries,
            |id| {
                built.lock().unwrap().push(id.to_string());
                Some(format!("{id} again"))
            },
            |req: Vec<String>| {
                let first = calls.lock().unwrap().is_empty();
                calls.lock().unwrap().push(req.clone());
                async move {
                    Ok(if first {
                        BatchReply {
                            successful: vec!["0".to_string()],
                            failed: vec![("1".to_string(), E(ErrorClass::Throttled))],
                        }
                    } else {
                        BatchReply {
                            successful: vec!["1".to_string()],
                            failed: Vec::new(),
                        }
                    })
                }
            },
            missing,
        )
        .await;
        assert!(out["0"].is_ok());
        assert!(out["1"].is_ok(), "{out:?}");
        let calls = calls.lock().unwrap();
        assert_eq!(calls[0], ["a", "b"], "the entries as given");
        assert_eq!(calls[1], ["1 again"], "built again, only the failed one");
        assert_eq!(*built.lock().unwrap(), ["1"]);
    }

    #[tokio::test]
    async fn only_transiently_failed_entries_are_sent_again() {
        let calls = std::sync::Mutex::new(Vec::new());
        let entries = vec![("0".to_string(), 0), ("1".into(), 1), ("2".into(), 2)];
        let out = retry_batch(
            &fast(),
            Operation::Send,
            &Metrics::disabled(),
            entries,
            |req: Vec<i32>| {
                let n = {
                    let mut c = calls.lock().unwrap();
                    c.push(req.clone());
                    c.len()
                };
                async move {
                    Ok(match n {
                        1 => BatchReply {
                            successful: vec!["0".into()],
                            failed: vec![
                                ("1".into(), E(ErrorClass::ServerError)),
                                ("2".into(), E(ErrorClass::MessageRejected)),
                            ],
                        },
                        _ => BatchReply {
                            successful: vec!["1".into()],
                            failed: vec![],
                        },
                    })
                }
            },
            missing,
        )
        .await;
        assert_eq!(*calls.lock().unwrap(), vec![vec![0, 1, 2], vec![1]]);
        assert!(out["0"].is_ok() && out["1"].is_ok());
        assert_eq!(out["2"], Err(E(ErrorClass::MessageRejected)));
    }

    #[tokio::test]
    async fn whole_call_errors_fail_every_entry_after_the_bound() {
        let calls = AtomicUsize::new(0);
        let entries = vec![("0".to_string(), ()), ("1".into(), ())];
        let out = retry_batch(
            &fast(),
            Operation::Send,
            &Metrics::disabled(),
            entries,
            |_req| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err::<BatchReply<E>, _>(E(ErrorClass::Throttled)) }
            },
            missing,
        )
        .await;
        assert!(calls.load(Ordering::SeqCst) > 1);
        assert_eq!(out.len(), 2);
        assert!(out.values().all(|r| *r == Err(E(ErrorClass::Throttled))));
    }

    #[tokio::test]
    async fn permanent_call_errors_are_not_retried() {
        let calls = AtomicUsize::new(0);
        let out = retry_batch(
            &fast(),
            Operation::Send,
            &Metrics::disabled(),
            vec![("0".to_string(), ())],
            |_req| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err::<BatchReply<E>, _>(E(ErrorClass::QueueNotFound)) }
            },
            missing,
        )
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(out["0"].is_err());
    }

    #[tokio::test]
    async fn entries_missing_from_the_reply_are_sent_again() {
        let calls = AtomicUsize::new(0);
        let out = retry_batch(
            &fast(),
            Operation::Delete,
            &Metrics::disabled(),
            vec![("0".to_string(), ()), ("1".to_string(), ())],
            |_req| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    Ok(BatchReply::<E> {
                        successful: if n == 0 {
                            vec!["0".into()]
                        } else {
                            vec!["1".into()]
                        },
                        failed: vec![],
                    })
                }
            },
            missing,
        )
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(out.values().all(Result::is_ok));
    }
}
