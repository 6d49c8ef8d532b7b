//! The batching window: SQS bills per request, so entries bound for one queue share
//! batch calls across every caller of the process (every poller, every batch, every
//! retry), for at most the window (`FORWARDER_BATCH_WINDOW`).
//!
//! One [`Window`] serves one kind of batch call to one queue: SendMessageBatch to a
//! route's destination or to the dead-letter queue, DeleteMessageBatch or
//! ChangeMessageVisibilityBatch to the source, or the lines of a packed route's
//! messages ([`crate::forward::Packer`]). A caller submits up to a call's worth of
//! entries ([`Window::submit`]) and gets, for each of its entries, what the call that
//! carried it answered, exactly as if it had made the call itself. So the retry layer
//! ([`crate::retry::retry_batch`]) is unchanged above it: each retry is one more
//! submission.
//!
//! A call goes as soon as it is full, or once its oldest entry has waited the window.
//! Full is by count (its most entries, 10 for SQS) or by bytes ([`full_by_bytes`]: the
//! next entry would pass the byte budget, or the room left would not take another entry
//! of the size of those in it: two events of 600 KB, or five of 200 KB, fill a 1 MiB
//! call). A full call never waits: a caller with a call's worth makes the call itself,
//! past whatever waits, so at full load nothing is spawned and nothing waits behind a
//! short batch. Only a partial call waits for the window: a call full by bytes that
//! waited would hold large events to one call per window.
//! Other calls run on their own tasks, so a caller that stops waiting (a Lambda
//! deadline, a shutdown) never strands the entries of others. Once the window is
//! [closed](BatchWindow::close) (shutdown), what is buffered goes at once and later
//! submissions go straight out.
//!
//! This module knows nothing of AWS: the call is a function, its entries a trait.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::concurrency::Adaptive;
use crate::retry::{BatchReply, Classified};

/// An entry of a batch call: it carries its id within the call, which the window
/// rewrites when entries of several callers share a call, and its size.
pub trait Entry: Send + 'static {
    /// Its id in the request.
    fn id(&self) -> &str;
    /// Gives it another id (its position in a shared call).
    fn set_id(&mut self, id: String);
    /// Bytes it adds to the call's payload, as the service counts them against its
    /// limit; 0 where the call has no byte limit that matters.
    fn size(&self) -> usize {
        0
    }
}

/// The setting, shared by every window of a process: how long an entry may wait to
/// share a call, the switch that flushes them all at shutdown, and who hears how long
/// each call took.
#[derive(Debug, Clone, Default)]
pub struct BatchWindow {
    /// The longest an entry waits; zero: every submission is its own call, as without
    /// a window.
    window: Duration,
    /// Cancelled at shutdown: what is buffered goes at once, and nothing waits again.
    closed: CancellationToken,
    /// The pool's in-flight bound, which follows the calls' response times; `None`
    /// where nothing adapts (Lambda, tests).
    observer: Option<Arc<Adaptive>>,
    /// Whether a submission's entries go in one call (unless its bytes alone need
    /// more): with an idempotency store, so that a batch's events are marked the moment
    /// its call answers, not a window later when the rest of it went.
    whole: bool,
}

impl BatchWindow {
    /// A window of `window` (zero: none).
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            closed: CancellationToken::new(),
            observer: None,
            whole: false,
        }
    }

    /// The same window, never splitting a submission over two calls (unless its bytes
    /// need them): a call goes with fewer entries rather than carry part of one.
    pub fn whole_submissions(mut self) -> Self {
        self.whole = true;
        self
    }

    /// The same window, each call of every window made from it timed for `bound`
    /// ([`Adaptive::observe`]).
    pub fn observed_by(mut self, bound: Arc<Adaptive>) -> Self {
        self.observer = Some(bound);
        self
    }

    /// No window: each submission is its own call (Lambda mode, tests).
    pub fn none() -> Self {
        Self::new(Duration::ZERO)
    }

    /// How long an entry may wait.
    pub fn duration(&self) -> Duration {
        self.window
    }

    /// Whether entries wait at all (a window above zero, not closed).
    pub fn is_open(&self) -> bool {
        !self.window.is_zero() && !self.closed.is_cancelled()
    }

    /// Sends what every window buffers now, and lets nothing wait again: shutdown.
    pub fn close(&self) {
        self.closed.cancel();
    }
}

/// What answers a call: the entries in, the reply by entry id out; an error of the
/// whole call is the error of each of its entries.
pub type CallFn<T, E> = Arc<
    dyn Fn(Vec<T>) -> Pin<Box<dyn Future<Output = Result<BatchReply<E>, E>> + Send>> + Send + Sync,
>;

/// A byte bound that may change while the windows that read it live (a route's message
/// size limit, read again from its queue every minute): every clone reads and sets the
/// same value; [`less`](Self::less) gives one that reads `room` bytes fewer of it.
#[derive(Debug, Clone)]
pub struct ByteBound {
    /// The bound itself, shared.
    shared: Arc<AtomicUsize>,
    /// Taken off what `shared` holds when read (a pack's room for its attributes).
    less: usize,
}

impl ByteBound {
    /// A bound of `bytes`.
    pub fn new(bytes: usize) -> Self {
        Self {
            shared: Arc::new(AtomicUsize::new(bytes)),
            less: 0,
        }
    }

    /// The bound now, at least 1.
    pub fn get(&self) -> usize {
        self.shared
            .load(Ordering::Relaxed)
            .saturating_sub(self.less)
            .max(1)
    }

    /// Sets the shared value (for every clone, and every bound made by `less`); returns
    /// the one before.
    pub fn set(&self, bytes: usize) -> usize {
        self.shared.swap(bytes, Ordering::Relaxed)
    }

    /// The same shared bound, read `room` bytes fewer.
    pub fn less(&self, room: usize) -> Self {
        Self {
            shared: self.shared.clone(),
            less: self.less + room,
        }
    }
}

impl From<usize> for ByteBound {
    fn from(bytes: usize) -> Self {
        Self::new(bytes)
    }
}

/// One kind of batch call to one queue, shared by every caller (see the module).
pub struct Window<T, E> {
    /// The setting.
    setting: BatchWindow,
    /// Entries per call at most (SQS: 10).
    max_entries: usize,
    /// Payload bytes per call at most ([`Entry::size`] summed), as the bound is when
    /// the call is made.
    max_bytes: ByteBound,
    /// Makes the call.
    call: CallFn<T, E>,
    /// What waits for a call.
    pending: Arc<Mutex<Pending<T, E>>>,
}

impl<T, E> std::fmt::Debug for Window<T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Window")
            .field("window", &self.setting.window)
            .field("max_entries", &self.max_entries)
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

/// Entries waiting for a call, oldest first.
struct Pending<T, E> {
    /// The entries.
    queue: VecDeque<Queued<T, E>>,
    /// Whether a timer task is watching the oldest entry's deadline.
    timer: bool,
}

/// One waiting entry.
struct Queued<T, E> {
    /// The entry, with its caller's id until the call renumbers it.
    entry: T,
    /// Its caller's id for it.
    id: String,
    /// Its size.
    size: usize,
    /// When it must go at the latest.
    due: Instant,
    /// Its caller's submission, which collects the answers.
    submission: Arc<Submission<E>>,
}

/// One caller's submission: the answers for its entries, sent to it once all came.
struct Submission<E> {
    /// The answers so far, and the caller's end.
    state: Mutex<Answers<E>>,
}

struct Answers<E> {
    /// Entries still without an answer.
    left: usize,
    /// The answers.
    reply: BatchReply<E>,
    /// The caller; `None` once answered (or gone).
    to: Option<oneshot::Sender<BatchReply<E>>>,
}

impl<E> Submission<E> {
    /// Records the answer for the entry the call knew as `call_id` (the caller's
    /// `own_id`): as the call answered it (one the reply does not mention stays
    /// unmentioned, as in a direct call), or the call's error.
    fn answer(&self, call_id: &str, own_id: String, reply: &CallReply<E>)
    where
        E: Clone,
    {
        let Ok(mut answers) = self.state.lock() else {
            return;
        };
        answers.left = answers.left.saturating_sub(1);
        match reply {
            Ok(reply) => {
                if reply.successful.iter().any(|id| id == call_id) {
                    answers.reply.successful.push(own_id);
                } else if let Some((_, err)) = reply.failed.iter().find(|(id, _)| id == call_id) {
                    answers.reply.failed.push((own_id, err.clone()));
                }
            }
            Err(err) => answers.reply.failed.push((own_id, err.clone())),
        }
        if answers.left == 0 {
            if let Some(to) = answers.to.take() {
                let reply = std::mem::replace(&mut answers.reply, empty());
                let _ = to.send(reply);
            }
        }
    }
}

type CallReply<E> = Result<BatchReply<E>, E>;

impl<T: Entry, E: Classified + Clone + Send + 'static> Window<T, E> {
    /// A window for calls made by `call`, each of at most `max_entries` entries and
    /// `max_bytes` bytes.
    pub fn new(
        setting: BatchWindow,
        max_entries: usize,
        max_bytes: impl Into<ByteBound>,
        call: CallFn<T, E>,
    ) -> Self {
        Self {
            setting,
            max_entries: max_entries.max(1),
            max_bytes: max_bytes.into(),
            call,
            pending: Arc::new(Mutex::new(Pending {
                queue: VecDeque::new(),
                timer: false,
            })),
        }
    }

    /// Sends `entries` (at most a call's worth, with distinct ids) in a call, shared
    /// with other callers' entries within the window; the reply for them, by their
    /// ids. An error of the whole call is each entry's failure.
    pub async fn submit(&self, entries: Vec<T>) -> Result<BatchReply<E>, E> {
        if entries.is_empty() {
            return Ok(empty());
        }
        if !self.setting.is_open() || self.is_full(&entries) {
            // No window (or closed), or a full call (full load, or large entries): the
            // call itself, from here, as without a window. What waits keeps waiting for other partial
            // submissions (or its due time): were a full one mixed in with it, a call's
            // worth would wait behind every later full one, each then split over two
            // calls on spawned tasks, for as long as the load lasts.
            return timed((self.call)(entries), self.setting.observer.as_deref()).await;
        }
        let (to, answered) = oneshot::channel();
        let submission = Arc::new(Submission {
            state: Mutex::new(Answers {
                left: entries.len(),
                reply: empty(),
                to: Some(to),
            }),
        });
        let due = Instant::now() + self.setting.window;
        let arm = {
            let Ok(mut pending) = self.pending.lock() else {
                // Unanswered entries are retried by the caller as missing.
                return Ok(empty());
            };
            for entry in entries {
                pending.queue.push_back(Queued {
                    id: entry.id().to_string(),
                    size: entry.size(),
                    entry,
                    due,
                    submission: submission.clone(),
                });
            }
            // Full calls go now, from here.
            let max_bytes = self.max_bytes.get();
            let whole = self.setting.whole;
            while let Some(call) = take_full(&mut pending, self.max_entries, max_bytes, whole) {
                spawn(self.call.clone(), call, self.setting.observer.clone());
            }
            let arm = !pending.queue.is_empty() && !pending.timer;
            if arm {
                pending.timer = true;
            }
            arm
        };
        if arm {
            self.spawn_timer();
        }
        // A call's task that ended without answering (the runtime shutting down) tells
        // nothing of these entries: unmentioned, as missing from a reply.
        Ok(answered.await.unwrap_or_else(|_| empty()))
    }

    /// Whether `entries` are a whole call by themselves: by count, or by bytes within
    /// the budget.
    fn is_full(&self, entries: &[T]) -> bool {
        if entries.len() >= self.max_entries {
            return true;
        }
        let bytes: usize = entries.iter().map(Entry::size).sum();
        let max_bytes = self.max_bytes.get();
        bytes <= max_bytes && full_by_bytes(entries.len(), bytes, max_bytes)
    }

    /// Watches the oldest entry: once it is due (or the window closes), its call goes;
    /// ends when nothing waits.
    fn spawn_timer(&self) {
        let pending = self.pending.clone();
        let call = self.call.clone();
        let (max_entries, max_bytes) = (self.max_entries, self.max_bytes.clone());
        let closed = self.setting.closed.clone();
        let observer = self.setting.observer.clone();
        let whole = self.setting.whole;
        tokio::spawn(async move {
            loop {
                let due = match pending.lock() {
                    Ok(mut p) => match p.queue.front() {
                        Some(oldest) => oldest.due,
                        None => {
                            p.timer = false;
                            return;
                        }
                    },
                    Err(_) => return,
                };
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => {}
                    _ = closed.cancelled() => {}
                }
                let now = Instant::now();
                let Ok(mut p) = pending.lock() else { return };
                let closing = closed.is_cancelled();
                while p.queue.front().is_some_and(|q| closing || q.due <= now) {
                    let entries = take(&mut p, max_entries, max_bytes.get(), whole);
                    spawn(call.clone(), entries, observer.clone());
                }
            }
        });
    }
}

/// A call's worth from the front, if the front is full already: `max_entries`
/// entries, as many as fit when the next would pass `max_bytes`, or entries that leave
/// no room for another of their size ([`full_by_bytes`]). With `whole`, the next
/// submission that does not fit whole makes the front full.
fn take_full<T, E>(
    p: &mut Pending<T, E>,
    max_entries: usize,
    max_bytes: usize,
    whole: bool,
) -> Option<Vec<Queued<T, E>>> {
    let mut n = 0;
    let mut bytes = 0;
    for (k, q) in p.queue.iter().enumerate() {
        if n == max_entries || (n > 0 && bytes + q.size > max_bytes) {
            return Some(take(p, max_entries, max_bytes, whole));
        }
        if whole && n > 0 && starts_submission(p, k) {
            let (count, size) = submission_at(p, k);
            if n + count > max_entries || bytes + size > max_bytes {
                return Some(take(p, max_entries, max_bytes, whole));
            }
        }
        n += 1;
        bytes += q.size;
    }
    (n == max_entries || full_by_bytes(n, bytes, max_bytes))
        .then(|| take(p, max_entries, max_bytes, whole))
}

/// Whether the entry at `k` is the first of its submission in the queue.
fn starts_submission<T, E>(p: &Pending<T, E>, k: usize) -> bool {
    k == 0
        || p.queue
            .get(k - 1)
            .zip(p.queue.get(k))
            .is_none_or(|(a, b)| !Arc::ptr_eq(&a.submission, &b.submission))
}

/// The entries and bytes of the submission starting at `k` (its entries queue
/// together: they are pushed under one lock).
fn submission_at<T, E>(p: &Pending<T, E>, k: usize) -> (usize, usize) {
    let Some(first) = p.queue.get(k) else {
        return (0, 0);
    };
    p.queue
        .iter()
        .skip(k)
        .take_while(|q| Arc::ptr_eq(&q.submission, &first.submission))
        .fold((0, 0), |(n, b), q| (n + 1, b + q.size))
}

/// Whether a call of `n` entries and `bytes` payload bytes is full by bytes: the room
/// the budget leaves would not take one more entry of their average size. Waiting for
/// a smaller one would rarely pay: SQS bills every 64 KiB of a payload as a request of
/// its own, so a call of large entries costs about the same however they are grouped,
/// while each call that waits holds its events for a window. Entries without a size
/// (deletes, visibility changes) are never full by bytes.
pub fn full_by_bytes(n: usize, bytes: usize, max_bytes: usize) -> bool {
    n > 0 && bytes > 0 && max_bytes.saturating_sub(bytes) < bytes.div_ceil(n)
}

/// The front entries that fit one call (at least one); with `whole`, no submission
/// but the first is split.
fn take<T, E>(
    p: &mut Pending<T, E>,
    max_entries: usize,
    max_bytes: usize,
    whole: bool,
) -> Vec<Queued<T, E>> {
    // A pack's window has no entry bound to speak of: allocate what is there.
    let mut out = Vec::with_capacity(max_entries.min(p.queue.len()));
    let mut bytes = 0;
    while let Some(q) = p.queue.front() {
        if out.len() == max_entries || (!out.is_empty() && bytes + q.size > max_bytes) {
            break;
        }
        let continues = out
            .last()
            .is_some_and(|last: &Queued<T, E>| Arc::ptr_eq(&last.submission, &q.submission));
        if whole && !out.is_empty() && !continues {
            let (count, size) = submission_at(p, 0);
            if out.len() + count > max_entries || bytes + size > max_bytes {
                break;
            }
        }
        bytes += q.size;
        if let Some(q) = p.queue.pop_front() {
            out.push(q);
        }
    }
    out
}

/// A call, its response time (and whether it was refused for load) told to `observer`.
async fn timed<E: Classified>(
    call: impl Future<Output = CallReply<E>>,
    observer: Option<&Adaptive>,
) -> CallReply<E> {
    let Some(observer) = observer else {
        return call.await;
    };
    let started = Instant::now();
    let reply = call.await;
    let refused = |e: &E| e.class().is_load();
    let load = match &reply {
        Ok(reply) => reply.failed.iter().any(|(_, e)| refused(e)),
        Err(e) => refused(e),
    };
    observer.observe(started.elapsed(), load);
    reply
}

/// Makes one call on its own task, renumbering its entries, and answers each
/// submission it carries.
fn spawn<T: Entry, E: Classified + Clone + Send + 'static>(
    call: CallFn<T, E>,
    queued: Vec<Queued<T, E>>,
    observer: Option<Arc<Adaptive>>,
) {
    if queued.is_empty() {
        return;
    }
    tokio::spawn(async move {
        let mut entries = Vec::with_capacity(queued.len());
        let mut owners = Vec::with_capacity(queued.len());
        for (n, mut q) in queued.into_iter().enumerate() {
            let call_id = n.to_string();
            q.entry.set_id(call_id.clone());
            entries.push(q.entry);
            owners.push((q.submission, call_id, q.id));
        }
        let reply = timed(call(entries), observer.as_deref()).await;
        for (submission, call_id, own_id) in owners {
            submission.answer(&call_id, own_id, &reply);
        }
    });
}

/// A reply that mentions nothing.
fn empty<E>() -> BatchReply<E> {
    BatchReply {
        successful: Vec::new(),
        failed: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The calls here fail with a plain message: never for load.
    impl Classified for String {
        fn class(&self) -> crate::outcome::ErrorClass {
            crate::outcome::ErrorClass::Local
        }
    }

    /// An entry of `size` bytes named `id`, and who made it.
    #[derive(Debug, Clone, PartialEq)]
    struct E {
        id: String,
        owner: &'static str,
        size: usize,
    }

    impl Entry for E {
        fn id(&self) -> &str {
            &self.id
        }
        fn set_id(&mut self, id: String) {
            self.id = id;
        }
        fn size(&self) -> usize {
            self.size
        }
    }

    fn entries(owner: &'static str, n: usize, size: usize) -> Vec<E> {
        (0..n)
            .map(|i| E {
                id: i.to_string(),
                owner,
                size,
            })
            .collect()
    }

    /// The owners of each call's entries, call by call.
    type Calls = Arc<Mutex<Vec<Vec<&'static str>>>>;

    /// A window whose calls record their entries' owners and answer every entry
    /// successful, but for entries of the owner `"bad"`, failed with "refused".
    fn window(wait: Duration, max_bytes: usize) -> (Window<E, String>, Calls) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = calls.clone();
        let call: CallFn<E, String> = Arc::new(move |entries: Vec<E>| {
            let seen = seen.clone();
            Box::pin(async move {
                let ids: Vec<&String> = entries.iter().map(|e| &e.id).collect();
                let distinct: std::collections::HashSet<_> = ids.iter().collect();
                assert_eq!(distinct.len(), ids.len(), "ids within a call are distinct");
                seen.lock()
                    .unwrap()
                    .push(entries.iter().map(|e| e.owner).collect());
                let (bad, good): (Vec<E>, Vec<E>) =
                    entries.into_iter().partition(|e| e.owner == "bad");
                Ok(BatchReply {
                    successful: good.into_iter().map(|e| e.id).collect(),
                    failed: bad
                        .into_iter()
                        .map(|e| (e.id, "refused".to_string()))
                        .collect(),
                })
            })
        });
        (
            Window::new(BatchWindow::new(wait), 10, max_bytes, call),
            calls,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn callers_share_calls_within_the_window_and_each_gets_its_own_answers() {
        let (w, calls) = window(Duration::from_millis(100), usize::MAX);
        let started = Instant::now();
        let (a, b, c) = tokio::join!(
            w.submit(entries("a", 3, 1)),
            w.submit(entries("b", 2, 1)),
            w.submit(entries("bad", 1, 1)),
        );
        let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
        assert!(
            started.elapsed() >= Duration::from_millis(100),
            "the call waited the window"
        );
        assert_eq!(calls.lock().unwrap().len(), 1, "one call for 6 entries");
        let mut got = a.successful.clone();
        got.sort();
        assert_eq!(got, ["0", "1", "2"], "a's ids, not the call's");
        assert!(a.failed.is_empty());
        assert_eq!(b.successful.len(), 2);
        assert_eq!(c.successful.len(), 0);
        assert_eq!(c.failed, [("0".to_string(), "refused".to_string())]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_call_never_waits() {
        let (w, calls) = window(Duration::from_secs(60), usize::MAX);
        let full = tokio::time::timeout(Duration::from_secs(5), w.submit(entries("a", 10, 1)))
            .await
            .expect("a full call goes at once")
            .unwrap();
        assert_eq!(full.successful.len(), 10);
        // 7 wait; 5 more fill a call of 10 with 2 of them: that one goes at once.
        let (seven, five) = tokio::join!(w.submit(entries("b", 7, 1)), async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            w.setting.close();
            w.submit(entries("c", 5, 1)).await
        });
        assert_eq!(seven.unwrap().successful.len(), 7);
        assert_eq!(five.unwrap().successful.len(), 5);
        let calls = calls.lock().unwrap();
        assert_eq!(calls[0], ["a"; 10]);
        assert!(calls.iter().all(|c| c.len() <= 10), "{calls:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_call_goes_at_once_past_a_short_one_that_waits() {
        let (w, calls) = window(Duration::from_secs(60), usize::MAX);
        let w = Arc::new(w);
        let short = tokio::spawn({
            let w = w.clone();
            async move { w.submit(entries("short", 3, 1)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Full load after a short receive: each full batch is its own call, at once,
        // whole (not 3 old + 7 of its own, the rest of it left to wait).
        for owner in ["a", "b"] {
            let full =
                tokio::time::timeout(Duration::from_secs(5), w.submit(entries(owner, 10, 1)))
                    .await
                    .expect("a full call goes at once while a short one waits")
                    .unwrap();
            assert_eq!(full.successful.len(), 10);
        }
        assert_eq!(*calls.lock().unwrap(), [["a"; 10], ["b"; 10]]);
        assert!(!short.is_finished(), "the short one waits for company");
        // Another short one fills it up; what is left waits for the window (closed here).
        let more = tokio::spawn({
            let w = w.clone();
            async move { w.submit(entries("more", 8, 1)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        w.setting.close();
        assert_eq!(more.await.unwrap().unwrap().successful.len(), 8);
        assert_eq!(short.await.unwrap().unwrap().successful.len(), 3);
        let calls = calls.lock().unwrap();
        assert_eq!(calls[2].len(), 10, "{calls:?}");
        assert_eq!(calls.iter().map(Vec::len).sum::<usize>(), 31);
    }

    #[tokio::test(start_paused = true)]
    async fn whole_submissions_are_never_split_over_two_calls() {
        let (w, calls) = window(Duration::from_millis(100), usize::MAX);
        let w = Window {
            setting: BatchWindow::new(Duration::from_millis(100)).whole_submissions(),
            ..w
        };
        let started = Instant::now();
        // 7 wait; 5 more would make 12: the 7 go now, alone, and the 5 wait whole.
        let (seven, five) = tokio::join!(w.submit(entries("a", 7, 1)), async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let five = w.submit(entries("b", 5, 1)).await;
            (five, started.elapsed())
        });
        assert_eq!(seven.unwrap().successful.len(), 7);
        let (five, took) = five;
        assert_eq!(five.unwrap().successful.len(), 5);
        assert_eq!(*calls.lock().unwrap(), [vec!["a"; 7], vec!["b"; 5]]);
        assert!(
            took >= Duration::from_millis(110),
            "the 5 waited their window: {took:?}"
        );

        // Without it, the same 12 share a call of 10 and 2 of the second wait.
        let (w, calls) = window(Duration::from_millis(100), usize::MAX);
        let _ = tokio::join!(w.submit(entries("a", 7, 1)), async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            w.submit(entries("b", 5, 1)).await
        });
        let calls = calls.lock().unwrap();
        assert_eq!(calls[0].len(), 10, "{calls:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_byte_budget_closes_a_call() {
        let (w, calls) = window(Duration::from_millis(50), 100);
        let (a, b) = tokio::join!(w.submit(entries("a", 2, 40)), w.submit(entries("b", 2, 40)));
        assert_eq!(a.unwrap().successful.len() + b.unwrap().successful.len(), 4);
        let calls = calls.lock().unwrap();
        // 40 + 40 fit in 100, a third does not: the first call went once it was full.
        assert_eq!(calls.len(), 2, "{calls:?}");
        assert_eq!(calls[0].len(), 2);
    }

    /// On tokio's paused clock: a call that goes at once takes no time at all, one that
    /// waits takes the window exactly.
    #[tokio::test(start_paused = true)]
    async fn a_call_full_by_bytes_goes_at_once_one_caller_after_the_other() {
        // A 1 MiB budget and events of 900 KB: each is a call by itself. Sent one after
        // the other (as a sender sends a batch planned into calls), none waits the
        // window: thirty take no time, not thirty windows.
        let (w, calls) = window(Duration::from_secs(1), 1 << 20);
        let started = Instant::now();
        for _ in 0..30 {
            let reply = w.submit(entries("a", 1, 900_000)).await.unwrap();
            assert_eq!(reply.successful, ["0"]);
        }
        assert_eq!(started.elapsed(), Duration::ZERO, "no call waited");
        assert_eq!(calls.lock().unwrap().len(), 30);
        // Five of 200 KB fill a call (a sixth would not fit); so do two of 500 KB.
        let started = Instant::now();
        assert_eq!(
            w.submit(entries("b", 5, 200_000))
                .await
                .unwrap()
                .successful
                .len(),
            5
        );
        assert_eq!(
            w.submit(entries("c", 2, 500_000))
                .await
                .unwrap()
                .successful
                .len(),
            2
        );
        assert_eq!(started.elapsed(), Duration::ZERO, "no call waited");
        // Four of 200 KB leave room for a fifth: that call waits the window.
        let started = Instant::now();
        w.submit(entries("d", 4, 200_000)).await.unwrap();
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(1) && waited < Duration::from_millis(1010),
            "a partial call waits the window: {waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_full_by_bytes_goes_from_whichever_caller_fills_it() {
        // Three callers of 300 KB against a 1 MiB budget: the first two wait (room for
        // more), the third fills the call, which goes at once with all three.
        let (w, calls) = window(Duration::from_secs(1), 1 << 20);
        let w = Arc::new(w);
        let started = Instant::now();
        let mut waiting = Vec::new();
        for owner in ["a", "b"] {
            let w = w.clone();
            waiting.push(tokio::spawn(async move {
                w.submit(entries(owner, 1, 300_000)).await
            }));
            tokio::task::yield_now().await;
        }
        assert!(calls.lock().unwrap().is_empty(), "room for more: they wait");
        let third = w.submit(entries("c", 1, 300_000)).await.unwrap();
        assert_eq!(third.successful.len(), 1);
        for w in waiting {
            assert_eq!(w.await.unwrap().unwrap().successful.len(), 1);
        }
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "the full call went at once"
        );
        assert_eq!(*calls.lock().unwrap(), [["a", "b", "c"]]);
    }

    #[test]
    fn full_by_bytes_is_no_room_for_another_entry_of_their_size() {
        let mib = 1 << 20;
        assert!(full_by_bytes(1, 900_000, mib));
        assert!(full_by_bytes(2, 1_000_000, mib));
        assert!(
            !full_by_bytes(2, 600_000, mib),
            "room for a third of 300 KB"
        );
        assert!(!full_by_bytes(1, 300_000, mib));
        assert!(
            !full_by_bytes(4, 800_000, mib),
            "room for a fifth of 200 KB"
        );
        assert!(full_by_bytes(5, 1_000_000, mib));
        assert!(
            !full_by_bytes(9, 9 * 8_000, mib),
            "small events fill by count"
        );
        assert!(!full_by_bytes(3, 0, usize::MAX), "entries without a size");
        assert!(!full_by_bytes(0, 0, mib));
    }

    #[tokio::test(start_paused = true)]
    async fn closing_sends_what_waits_at_once() {
        let (w, calls) = window(Duration::from_secs(60), usize::MAX);
        let w = Arc::new(w);
        let setting = w.setting.clone();
        let waiting = tokio::spawn({
            let w = w.clone();
            async move { w.submit(entries("a", 3, 1)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(calls.lock().unwrap().is_empty(), "waits for the window");
        setting.close();
        let reply = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("sent at once when closed")
            .unwrap()
            .unwrap();
        assert_eq!(reply.successful.len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_window_each_submission_is_its_own_call() {
        let (w, calls) = window(Duration::ZERO, usize::MAX);
        let (a, b) = tokio::join!(w.submit(entries("a", 1, 1)), w.submit(entries("b", 1, 1)));
        assert!(a.is_ok() && b.is_ok());
        assert_eq!(calls.lock().unwrap().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_whole_call_error_fails_each_entry_of_every_caller_in_it() {
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        let call: CallFn<E, String> = Arc::new(move |_entries: Vec<E>| {
            c.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Err("throttled".to_string()) })
        });
        let w = Window::new(
            BatchWindow::new(Duration::from_millis(30)),
            10,
            usize::MAX,
            call,
        );
        let (a, b) = tokio::join!(w.submit(entries("a", 2, 1)), w.submit(entries("b", 1, 1)));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(count.load(Ordering::SeqCst), 1);
        assert_eq!(a.failed.len(), 2);
        assert!(a.failed.iter().all(|(_, e)| e == "throttled"));
        assert_eq!(b.failed, [("0".to_string(), "throttled".to_string())]);
    }
}
