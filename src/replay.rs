//! `sqs-forwarder replay FILE|-`: forward newline-delimited JSON events through the same
//! pipeline as `run` (backfills, demos).

use std::fmt;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, BufReader};

use crate::forward::DeferCause;
use crate::pipeline::{Pipeline, Settlement};
use crate::source::SourceMessage;

/// Totals of a replay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Non-blank lines read.
    pub lines: usize,
    /// Events accepted by the destination.
    pub forwarded: usize,
    /// Lines that are not valid events.
    pub invalid: usize,
    /// Events that could not be forwarded.
    pub failed: usize,
    /// Events skipped on purpose: their project has no route, their route's filter
    /// leaves them out, or the idempotency store says they went already.
    pub skipped: usize,
    /// A route stayed paused past the bound once: later lines deferred for a paused
    /// route fail at once instead of waiting again.
    gave_up_on_paused: bool,
}

impl ReplaySummary {
    /// Whether every line was forwarded (or skipped on purpose: no route).
    pub fn all_forwarded(&self) -> bool {
        self.forwarded + self.skipped == self.lines
    }
}

impl fmt::Display for ReplaySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "replayed {} events: {} forwarded, {} invalid, {} failed",
            self.lines, self.forwarded, self.invalid, self.failed
        )?;
        if self.skipped > 0 {
            write!(
                f,
                ", {} skipped (no route, filtered or forwarded already)",
                self.skipped
            )?;
        }
        Ok(())
    }
}

/// Why a replay could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The input could not be opened or read.
    #[error("cannot read {input}: {source}")]
    Input {
        /// The file name, or `-`.
        input: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Replays `input` (a path, or `-` for stdin). Bad lines are reported on stderr with
/// their line number and do not stop the rest.
pub async fn replay(pipeline: &Pipeline, input: &str) -> Result<ReplaySummary, ReplayError> {
    let io_err = |source| ReplayError::Input {
        input: input.to_string(),
        source,
    };
    if input == "-" {
        let bar = ProgressBar::new_spinner();
        replay_from(pipeline, tokio::io::stdin(), bar)
            .await
            .map_err(io_err)
    } else {
        let file = tokio::fs::File::open(input).await.map_err(io_err)?;
        let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
        let bar = ProgressBar::new(len).with_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        replay_from(pipeline, file, bar).await.map_err(io_err)
    }
}

/// Replays from any reader; `bar` is hidden by indicatif when stderr is not a terminal.
pub async fn replay_from<R: AsyncRead + Unpin>(
    pipeline: &Pipeline,
    reader: R,
    bar: ProgressBar,
) -> std::io::Result<ReplaySummary> {
    let mut reader = BufReader::new(reader);
    let mut summary = ReplaySummary::default();
    let mut batch = Batch::default();
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        let (read, whole) = read_line_capped(&mut reader, &mut line, MAX_LINE_BYTES).await?;
        if read == 0 {
            break;
        }
        number += 1;
        bar.inc(read as u64);
        if !whole {
            summary.lines += 1;
            summary.invalid += 1;
            bar.suspend(|| {
                eprintln!("line {number}: invalid event (too_long): over {MAX_LINE_BYTES} bytes")
            });
            continue;
        }
        let text = trim_line(&line);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        summary.lines += 1;
        match String::from_utf8(text.to_vec()) {
            Ok(body) => {
                batch.numbers.push(number);
                batch.messages.push(message(number, body));
            }
            Err(err) => {
                summary.invalid += 1;
                bar.suspend(|| eprintln!("line {number}: invalid event (not_utf8): {err}"));
            }
        }
        if batch.messages.len() == REPLAY_BATCH {
            flush(pipeline, &mut batch, &mut summary, &bar).await;
        }
    }
    flush(pipeline, &mut batch, &mut summary, &bar).await;
    bar.finish_and_clear();
    Ok(summary)
}

/// Lines waiting to be sent together.
#[derive(Default)]
struct Batch {
    /// Line number of each message.
    numbers: Vec<usize>,
    /// The messages, one per line.
    messages: Vec<SourceMessage>,
}

async fn flush(
    pipeline: &Pipeline,
    batch: &mut Batch,
    summary: &mut ReplaySummary,
    bar: &ProgressBar,
) {
    if batch.messages.is_empty() {
        return;
    }
    // Deferred lines (an organization over its rate limit, a paused route) are sent
    // again once their delay is over: there is no queue to leave them in. A route still
    // paused past the bound fails its lines, and the later batches' at once.
    let started = Instant::now();
    let mut pending: Vec<usize> = (0..batch.messages.len()).collect();
    while !pending.is_empty() {
        let messages: Vec<SourceMessage> =
            pending.iter().map(|&k| batch.messages[k].clone()).collect();
        let settlements = pipeline.process(&messages).await;
        let mut again = Vec::new();
        let mut wait = Duration::ZERO;
        for (&k, settlement) in pending.iter().zip(settlements) {
            let number = batch.numbers[k];
            if let Settlement::Deferred(deferral) = &settlement {
                let paused = deferral.cause == DeferCause::RoutePaused;
                if !(paused && (summary.gave_up_on_paused || started.elapsed() >= DEFER_BOUND)) {
                    again.push(k);
                    wait = wait.max(deferral.delay.unwrap_or(MIN_WAIT));
                    continue;
                }
                summary.gave_up_on_paused = true;
            }
            report(number, settlement, summary, bar);
        }
        if !again.is_empty() {
            tokio::time::sleep(wait.clamp(MIN_WAIT, MAX_WAIT)).await;
        }
        pending = again;
    }
    bar.set_message(format!("{} forwarded", summary.forwarded));
    batch.numbers.clear();
    batch.messages.clear();
}

/// Lines processed together: enough for the events of many routes to fill their calls
/// within the batching window (each batch waits it at most once).
const REPLAY_BATCH: usize = 200;

/// How long a batch's lines may wait for a paused route.
const DEFER_BOUND: Duration = Duration::from_secs(60);
/// Shortest and longest wait before deferred lines are sent again.
const MIN_WAIT: Duration = Duration::from_millis(50);
const MAX_WAIT: Duration = Duration::from_secs(5);

/// Counts and prints what became of one line.
fn report(number: usize, settlement: Settlement, summary: &mut ReplaySummary, bar: &ProgressBar) {
    summary.invalid += usize::from(settlement.is_invalid());
    summary.failed += usize::from(settlement.is_failed());
    match settlement {
        Settlement::Forwarded => summary.forwarded += 1,
        Settlement::Skipped(_) => summary.skipped += 1,
        Settlement::Invalid(err) => {
            bar.suspend(|| eprintln!("line {number}: invalid event ({}): {err}", err.reason()));
        }
        Settlement::Failed(err) => {
            bar.suspend(|| eprintln!("line {number}: not forwarded: {err}"));
        }
        Settlement::DeadLettered(reason) => {
            bar.suspend(|| {
                eprintln!(
                    "line {number}: sent to the dead-letter queue ({}): {}",
                    reason.reason, reason.detail
                )
            });
        }
        Settlement::Deferred(deferral) => {
            summary.failed += 1;
            bar.suspend(|| {
                eprintln!(
                    "line {number}: not forwarded: deferred ({}) past {DEFER_BOUND:?}",
                    deferral.cause.as_str()
                )
            });
        }
    }
}

/// The longest line read: longer ones are reported and skipped, never held in memory.
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// Reads one line (through its `\n`) into `line`, keeping at most `cap` bytes. Returns
/// the bytes consumed (0 at the end) and whether the line fit: the rest of a longer one
/// is read and dropped.
async fn read_line_capped<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
    cap: usize,
) -> std::io::Result<(usize, bool)> {
    let mut consumed = 0;
    let mut whole = true;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok((consumed, whole));
        }
        let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
            Some(end) => (&available[..=end], true),
            None => (available, false),
        };
        let n = chunk.len();
        if whole && line.len() + n <= cap {
            line.extend_from_slice(chunk);
        } else {
            whole = false;
            line.clear();
        }
        reader.consume(n);
        consumed += n;
        if done {
            return Ok((consumed, whole));
        }
    }
}

fn trim_line(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn message(number: usize, body: String) -> SourceMessage {
    SourceMessage {
        message_id: format!("line {number}"),
        receipt_handle: String::new(),
        body,
        sent_at: None,
        receive_count: 1,
        group: None,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_line_over_the_cap_is_skipped_whole_and_the_next_one_read() {
        let input = format!("short\n{}\nnext\nlast", "x".repeat(100));
        let mut reader = BufReader::with_capacity(16, input.as_bytes());
        let mut line = Vec::new();
        let mut lines = Vec::new();
        loop {
            line.clear();
            let (read, whole) = read_line_capped(&mut reader, &mut line, 32).await.unwrap();
            if read == 0 {
                break;
            }
            lines.push((
                read,
                whole,
                String::from_utf8(trim_line(&line).to_vec()).unwrap(),
            ));
        }
        assert_eq!(
            lines,
            [
                (6, true, "short".to_string()),
                (101, false, String::new()),
                (5, true, "next".to_string()),
                (4, true, "last".to_string()),
            ]
        );
    }
}
