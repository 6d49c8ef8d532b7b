//! `sqs-forwarder redrive`: sends dead letters back through the pipeline once their
//! cause is fixed.
//!
//! It reads `FORWARDER_DLQ_URL`. Each message received is hidden for the whole run (so
//! no message is seen twice), and what is not redriven is handed back at the end:
//!
//! - a message whose `reason` is not asked for (`--reason`), or past `--max`: back as
//!   it was;
//! - with `--dry-run`: every message, after counting it by `reason` and `stage`;
//! - otherwise it goes through the same pipeline as `run`, to its route. Accepted: it
//!   is deleted from the DLQ. Failed again for good: a copy with the new `reason`,
//!   `stage`, `error_code` and `detail` replaces it in the DLQ (SQS cannot change a
//!   message's attributes), after the receive loop so the run never meets it again.
//!   Failed for now (a throttled or paused route): back as it was.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use indicatif::ProgressBar;

use crate::aws::AwsError;
use crate::forward::{DeadLetter, DeadLetterQueue, Reason};
use crate::pipeline::{Pipeline, Settlement};
use crate::source::{SourceMessage, SqsSource};

/// The attributes the forwarder puts on a dead letter: not the event's own, so they do
/// not go on with it.
const DEAD_LETTER_ATTRIBUTES: [&str; 5] = [
    "reason",
    "stage",
    "error_code",
    "detail",
    "source_message_id",
];

/// How long each message received stays hidden: the whole run, in practice.
const HOLD: Duration = Duration::from_secs(15 * 60);

/// Empty receives in a row that end the run (each waits one second).
const EMPTY_RECEIVES: usize = 2;

/// What to redrive.
#[derive(Debug, Clone, Default)]
pub struct RedriveOptions {
    /// Only dead letters with one of these `reason`s; empty: all.
    pub reasons: Vec<String>,
    /// At most this many dead letters (of those matching).
    pub max: Option<usize>,
    /// Count only: nothing is sent, deleted or changed.
    pub dry_run: bool,
}

/// What a redrive did, per `(reason, stage)` of the dead letters that matched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedriveSummary {
    /// Per reason and stage.
    pub by_reason: BTreeMap<(String, String), Tally>,
    /// Dead letters seen that did not match (`--reason`, `--max`): left as they were.
    pub not_matching: usize,
    /// Whether it was a dry run.
    pub dry_run: bool,
}

/// The dead letters of one reason and stage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Matching dead letters seen.
    pub matched: usize,
    /// Accepted by their destination and deleted from the DLQ.
    pub redriven: usize,
    /// Failed again for good: in the DLQ again, with the new reason.
    pub dead_lettered_again: usize,
    /// Not forwarded now (a transient failure, a paused route, no route): left as
    /// they were.
    pub left: usize,
}

impl RedriveSummary {
    /// Whether every matching dead letter was redriven (a dry run leaves nothing).
    pub fn all_redriven(&self) -> bool {
        self.dry_run
            || self
                .by_reason
                .values()
                .all(|t| t.dead_lettered_again == 0 && t.left == 0)
    }

    fn tally(&mut self, m: &SourceMessage) -> &mut Tally {
        let get = |name: &str| m.attribute(name).unwrap_or("-").to_string();
        self.by_reason
            .entry((get("reason"), get("stage")))
            .or_default()
    }

    /// Matching dead letters seen so far.
    fn matched(&self) -> usize {
        self.by_reason.values().map(|t| t.matched).sum()
    }
}

impl fmt::Display for RedriveSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for ((reason, stage), t) in &self.by_reason {
            if self.dry_run {
                writeln!(f, "reason={reason} stage={stage}: {}", t.matched)?;
            } else {
                writeln!(
                    f,
                    "reason={reason} stage={stage}: {} redriven, {} dead-lettered again, {} left",
                    t.redriven, t.dead_lettered_again, t.left
                )?;
            }
        }
        let matched = self.matched();
        if self.dry_run {
            write!(f, "dry run: {matched} dead letters would be redriven")?;
        } else {
            let redriven: usize = self.by_reason.values().map(|t| t.redriven).sum();
            write!(f, "redrove {redriven} of {matched} dead letters")?;
        }
        if self.not_matching > 0 {
            write!(f, "; {} not matching, left as they were", self.not_matching)?;
        }
        Ok(())
    }
}

/// A progress bar over the DLQ's approximate depth; hidden when stderr is not a
/// terminal (indicatif's default).
pub async fn progress_bar(dlq: &SqsSource) -> ProgressBar {
    let depth = dlq.approximate_depth().await.unwrap_or(0);
    ProgressBar::new(depth).with_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/~{len} dead letters",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    )
}

/// The pipeline and the DLQ a real redrive sends through.
pub struct Redrive<'a> {
    /// The same pipeline as `run`'s, without a dead-letter step: what fails again is
    /// put back by the redrive itself, once its loop is over.
    pub pipeline: &'a Pipeline,
    /// The DLQ, to put back what fails again with its new reason.
    pub dead_letters: &'a DeadLetterQueue,
}

/// Redrives the dead letters of `dlq`; `through` is `None` for a dry run.
pub async fn redrive(
    dlq: &SqsSource,
    through: Option<Redrive<'_>>,
    options: &RedriveOptions,
    bar: &ProgressBar,
) -> Result<RedriveSummary, AwsError> {
    let mut run = Run {
        summary: RedriveSummary {
            dry_run: through.is_none(),
            ..RedriveSummary::default()
        },
        ..Run::default()
    };
    let mut empty = 0;
    while empty < EMPTY_RECEIVES && !run.full(options) {
        let received = dlq.receive().await?;
        if received.is_empty() {
            empty += 1;
            continue;
        }
        empty = 0;
        let fresh = run.hold(dlq, received).await;
        bar.inc(fresh.len() as u64);
        let (matching, other): (Vec<SourceMessage>, Vec<SourceMessage>) =
            fresh.into_iter().partition(|m| run.matches(m, options));
        run.summary.not_matching += other.len();
        run.release.extend(other);
        match &through {
            None => run.release.extend(matching),
            Some(through) => run.send(dlq, through.pipeline, matching).await,
        }
    }
    if let Some(through) = &through {
        run.put_back(dlq, through.dead_letters).await;
    }
    let release: Vec<(&SourceMessage, Duration)> =
        run.release.iter().map(|m| (m, Duration::ZERO)).collect();
    dlq.change_visibility(&release, Duration::from_secs(30))
        .await;
    bar.finish_and_clear();
    Ok(run.summary)
}

/// One redrive's state.
#[derive(Default)]
struct Run {
    /// Ids of the dead letters seen: a message seen again (its hold ran out) is skipped.
    seen: HashSet<String>,
    /// Dead letters to hand back as they were, at the end.
    release: Vec<SourceMessage>,
    /// Dead letters that failed again for good, with their new reason.
    again: Vec<(SourceMessage, Reason)>,
    /// What happened, so far.
    summary: RedriveSummary,
}

impl Run {
    fn full(&self, options: &RedriveOptions) -> bool {
        options.max.is_some_and(|max| self.summary.matched() >= max)
    }

    /// Hides what was received for the run; returns the messages not seen before.
    async fn hold(&mut self, dlq: &SqsSource, received: Vec<SourceMessage>) -> Vec<SourceMessage> {
        let hold: Vec<(&SourceMessage, Duration)> = received.iter().map(|m| (m, HOLD)).collect();
        dlq.change_visibility(&hold, Duration::from_secs(30)).await;
        received
            .into_iter()
            .filter(|m| self.seen.insert(m.message_id.clone()))
            .collect()
    }

    /// Whether `m` is to be redriven (its reason asked for, within `--max`); counted
    /// as matched if so.
    fn matches(&mut self, m: &SourceMessage, options: &RedriveOptions) -> bool {
        let wanted = options.reasons.is_empty()
            || m.attribute("reason")
                .is_some_and(|r| options.reasons.iter().any(|w| w == r));
        let take = wanted && !self.full(options);
        if take {
            self.summary.tally(m).matched += 1;
        }
        take
    }

    /// Forwards the matching dead letters through the pipeline and settles each.
    async fn send(&mut self, dlq: &SqsSource, pipeline: &Pipeline, matching: Vec<SourceMessage>) {
        // The event goes on without the dead letter's own attributes.
        let stripped: Vec<SourceMessage> = matching
            .iter()
            .map(|m| SourceMessage {
                attributes: m
                    .attributes
                    .iter()
                    .filter(|a| !DEAD_LETTER_ATTRIBUTES.contains(&a.name.as_ref()))
                    .cloned()
                    .collect(),
                ..m.clone()
            })
            .collect();
        let settlements = pipeline.process(&stripped).await;
        let mut forwarded = Vec::new();
        for (m, settlement) in matching.into_iter().zip(settlements) {
            match (&settlement, settlement.dead_letter_reason()) {
                (Settlement::Forwarded, _) => forwarded.push(m),
                (_, Some(reason)) => self.again.push((m, reason)),
                _ => {
                    self.summary.tally(&m).left += 1;
                    self.release.push(m);
                }
            }
        }
        let refs: Vec<&SourceMessage> = forwarded.iter().collect();
        let undeleted: HashMap<String, AwsError> = dlq.delete(&refs).await.into_iter().collect();
        for m in &forwarded {
            // Not deleted: it arrived, and will be redriven again (a duplicate, never
            // a loss); counted as redriven, it is.
            if let Some(err) = undeleted.get(&m.message_id) {
                tracing::warn!(message_id = %m.message_id, %err, "redriven, but not deleted from the dead-letter queue");
            }
            self.summary.tally(m).redriven += 1;
        }
    }

    /// Replaces each dead letter that failed again by a copy with its new reason.
    async fn put_back(&mut self, dlq: &SqsSource, dead_letters: &DeadLetterQueue) {
        let again = std::mem::take(&mut self.again);
        if again.is_empty() {
            return;
        }
        // The copy keeps the id of the source message it came from, first.
        let letters: Vec<DeadLetter<'_>> = again
            .iter()
            .map(|(m, reason)| DeadLetter {
                body: &m.body,
                source_message_id: m.attribute("source_message_id").unwrap_or(&m.message_id),
                reason: reason.clone(),
            })
            .collect();
        let deliveries = dead_letters.send(&letters).await;
        let mut replaced = Vec::new();
        for ((m, _), delivery) in again.iter().zip(deliveries) {
            self.summary.tally(m).dead_lettered_again += 1;
            match delivery {
                Ok(()) => replaced.push(m),
                // The copy was refused: the original stays as it was.
                Err(_) => self.release.push(m.clone()),
            }
        }
        dlq.delete(&replaced).await;
    }
}
