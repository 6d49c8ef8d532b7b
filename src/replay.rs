//! `sqs-forwarder replay FILE|-`: forward newline-delimited JSON events through the same
//! pipeline as `run` (backfills, demos).

use std::fmt;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::pipeline::{Pipeline, Settlement};
use crate::source::{SourceMessage, MAX_BATCH};

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
    /// Events skipped: their project has no route.
    pub skipped: usize,
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
            write!(f, ", {} skipped (no route)", self.skipped)?;
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
        let read = reader.read_until(b'\n', &mut line).await?;
        if read == 0 {
            break;
        }
        number += 1;
        bar.inc(read as u64);
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
        if batch.messages.len() == MAX_BATCH {
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
    let settlements = pipeline.process(&batch.messages).await;
    for (number, settlement) in batch.numbers.iter().zip(settlements) {
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
        }
    }
    bar.set_message(format!("{} forwarded", summary.forwarded));
    batch.numbers.clear();
    batch.messages.clear();
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
    }
}
