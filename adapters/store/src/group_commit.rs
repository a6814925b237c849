//! Group commit: concurrent requests' writes share one transaction, so N of
//! them pay for one commit. Three writers use it: fresh commands
//! ([`FreshCommitter`]: claim + new stream + response, instead of three
//! commits each), appends to existing streams ([`GroupedAppends`], an
//! [`EventStore`] whose single appends share
//! [`EventStore::append_many`] transactions, or with webhook-log rows
//! [`LoggedAppendStore::append_many_logged`] ones) and webhook-log rows
//! ([`LogCommitter`]).
//!
//! **Guarantees:**
//! - Each submitted item gets its own answer, and a success only once its
//!   transaction committed.
//! - One item cannot fail another: when a batch's transaction fails, every
//!   item of it is written again alone, so only the item at fault sees the
//!   error.
//! - An item whose submitter went away (the client hung up) is still
//!   written or not as a whole.
//! - Nothing waits on a timer: a batch forms while others are being written
//!   and starts when none is (or once it holds [`GROUP_START_EARLY`]
//!   items), so an idle system commits at once and a busy one batches by
//!   itself.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use ledger_core::ids::StreamId;
use ledger_core::{Checkpoint, ExpectedVersion, NewEvent, RecordedEvent};
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Mutex, Notify, mpsc, oneshot};

use crate::idempotency::{Fresh, FreshCommand, IdempotencyStore, check_fresh_batch};
use crate::webhook_log::{LoggedAppendStore, WebhookLogEntry, WebhookLogStore, check_webhook_log};
use crate::{AppendResult, EventStore, StoreError, StreamAppend, validate_events};

/// Most items in one transaction: enough to amortise a commit across a busy
/// server's concurrent requests, small enough to keep one transaction's
/// locks and WAL short.
pub const GROUP_MAX: usize = 64;
/// Writer tasks, so at most this many transactions are in flight.
pub const GROUP_WRITERS: usize = 3;
/// A forming batch starts beside the ones being written once it holds this
/// many items (a free writer permitting); a smaller one waits until none
/// is written. Measured under `bench http` (32 clients, Postgres): when a
/// batch waited for the one being written unless full, requests moved in
/// two alternating cohorts (batches of 31, then 1) with one transaction in
/// flight, and `POST /v1/orders` ran at 0.45x-0.52x the raw single-row
/// `INSERT` rate; starting at 16 beside it overlaps one transaction's
/// statements with another's commit: 0.60x-0.73x. (8: 0.61x-0.62x; 24:
/// 0.53x; four writers: no better.)
pub const GROUP_START_EARLY: usize = 16;
/// Submissions queued beyond the batches in flight before submitters wait.
const QUEUE_MAX: usize = 4 * GROUP_MAX;

/// Writes one batch in one transaction; answers in batch order.
type WriteBatch<C, A> = Arc<
    dyn Fn(Arc<Vec<C>>, DateTime<Utc>) -> BoxFuture<'static, Result<Vec<A>, StoreError>>
        + Send
        + Sync,
>;

struct Job<C, A> {
    item: C,
    now: DateTime<Utc>,
    reply: oneshot::Sender<Result<A, StoreError>>,
}

/// The handle requests submit through; cheap to clone. The writers stop
/// once every handle is dropped and the queue is drained.
pub struct GroupCommit<C, A> {
    queue: mpsc::Sender<Job<C, A>>,
}

impl<C, A> Clone for GroupCommit<C, A> {
    fn clone(&self) -> Self {
        GroupCommit {
            queue: self.queue.clone(),
        }
    }
}

impl<C, A> std::fmt::Debug for GroupCommit<C, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").finish_non_exhaustive()
    }
}

impl<C, A> GroupCommit<C, A>
where
    C: Clone + Send + Sync + 'static,
    A: Send + 'static,
{
    /// Spawns [`GROUP_WRITERS`] writer tasks on the current runtime.
    fn start(write: WriteBatch<C, A>) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE_MAX);
        let writers = Arc::new(Writers {
            receiver: Mutex::new(receiver),
            writing: AtomicUsize::new(0),
            finished: Notify::new(),
        });
        for _ in 0..GROUP_WRITERS {
            tokio::spawn(write_batches(Arc::clone(&write), Arc::clone(&writers)));
        }
        GroupCommit { queue }
    }

    /// Writes `item` in the next batch and answers once that batch
    /// committed (or failed). `now` stamps what the writer stamps.
    async fn submit_checked(&self, item: C, now: DateTime<Utc>) -> Result<A, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Job { item, now, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> StoreError {
    StoreError::Backend("the group-commit writers have stopped (shutting down)".to_owned())
}

/// What the writer tasks share: the queue (one of them gathers at a time),
/// how many are writing a batch, and a signal when one finishes.
struct Writers<C, A> {
    receiver: Mutex<mpsc::Receiver<Job<C, A>>>,
    writing: AtomicUsize,
    finished: Notify,
}

async fn write_batches<C, A>(write: WriteBatch<C, A>, writers: Arc<Writers<C, A>>)
where
    C: Clone + Send + Sync + 'static,
    A: Send + 'static,
{
    while let Some(jobs) = gather(&writers).await {
        let _writing = Writing(&writers);
        write_jobs(&write, jobs).await;
    }
}

/// A batch being written (counted by [`gather`]); dropping it, even while
/// a panic unwinds the writer task, uncounts it and wakes the gatherer, so
/// a dead writer never leaves small batches waiting for good.
struct Writing<'a, C, A>(&'a Writers<C, A>);

impl<C, A> Drop for Writing<'_, C, A> {
    fn drop(&mut self) {
        self.0.writing.fetch_sub(1, Ordering::SeqCst);
        self.0.finished.notify_waiters();
    }
}

/// The next batch: the first queued job, then whatever else arrives until
/// no other batch is being written or this one holds [`GROUP_START_EARLY`]
/// items (at most [`GROUP_MAX`]: all that queued meanwhile goes in). Without
/// the wait a free writer would start a transaction for every single
/// request that arrives while another batch commits; measured under `bench
/// http`, three transactions in four then carried one item. `None` once the
/// queue is closed and drained.
async fn gather<C, A>(writers: &Writers<C, A>) -> Option<Vec<Job<C, A>>> {
    let mut receiver = writers.receiver.lock().await;
    let first = receiver.recv().await?;
    let mut jobs = vec![first];
    loop {
        while jobs.len() < GROUP_MAX {
            match receiver.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        // Registered before the check, so a finish between the check and
        // the wait still wakes this writer.
        let finished = writers.finished.notified();
        if jobs.len() >= GROUP_START_EARLY || writers.writing.load(Ordering::SeqCst) == 0 {
            break;
        }
        tokio::select! {
            job = receiver.recv() => match job {
                Some(job) => jobs.push(job),
                // Closed: write what was gathered.
                None => break,
            },
            () = finished => {}
        }
    }
    writers.writing.fetch_add(1, Ordering::SeqCst);
    Some(jobs)
}

async fn write_jobs<C, A>(write: &WriteBatch<C, A>, jobs: Vec<Job<C, A>>)
where
    C: Clone + Send + Sync + 'static,
    A: Send + 'static,
{
    let now = jobs
        .iter()
        .map(|j| j.now)
        .max()
        .unwrap_or_else(crate::recorded_now);
    let count = jobs.len();
    let (items, replies): (Vec<C>, Vec<_>) =
        jobs.into_iter().map(|j| (j.item, (j.reply, j.now))).unzip();
    let items = Arc::new(items);
    tracing::debug!(items = count, "group commit");
    let error = match write(Arc::clone(&items), now).await {
        Ok(answers) if answers.len() == count => {
            for ((reply, _), answer) in replies.into_iter().zip(answers) {
                // A submitter that went away needs no answer.
                let _ = reply.send(Ok(answer));
            }
            return;
        }
        Ok(answers) => StoreError::Backend(format!(
            "a group commit answered {} of {count} items",
            answers.len()
        )),
        Err(error) => error,
    };
    if count == 1 {
        for (reply, _) in replies {
            let _ = reply.send(Err(error.clone()));
        }
        return;
    }
    // Find the item at fault: each alone, in its own transaction.
    tracing::debug!(%error, items = count, "group commit failed; writing its items one by one");
    for (item, (reply, now)) in items.iter().cloned().zip(replies) {
        let answer = write(Arc::new(vec![item]), now)
            .await
            .and_then(|mut answers| match (answers.pop(), answers.is_empty()) {
                (Some(answer), true) => Ok(answer),
                _ => Err(StoreError::Backend(
                    "a group commit of one item did not answer once".to_owned(),
                )),
            });
        let _ = reply.send(answer);
    }
}

/// Group commit of fresh commands ([`IdempotencyStore::execute_fresh`]).
#[derive(Clone, Debug)]
pub struct FreshCommitter(GroupCommit<FreshCommand, Fresh>);

impl FreshCommitter {
    pub fn start(store: Arc<dyn IdempotencyStore>) -> FreshCommitter {
        FreshCommitter(GroupCommit::start(Arc::new(move |batch, now| {
            let store = Arc::clone(&store);
            Box::pin(async move { store.execute_fresh(&batch, now).await })
        })))
    }

    /// Claims, appends and (with a response) completes `command` in the
    /// next batch; `now` stamps the claim. Bad input fails alone, before
    /// joining a batch.
    pub async fn submit(
        &self,
        command: FreshCommand,
        now: DateTime<Utc>,
    ) -> Result<Fresh, StoreError> {
        check_fresh_batch(std::slice::from_ref(&command))?;
        self.0.submit_checked(command, now).await
    }
}

/// Group commit of webhook-log rows ([`WebhookLogStore::insert_webhook_logs`]).
#[derive(Clone, Debug)]
pub struct LogCommitter(GroupCommit<WebhookLogEntry, i64>);

impl LogCommitter {
    pub fn start(store: Arc<dyn WebhookLogStore>) -> LogCommitter {
        LogCommitter(GroupCommit::start(Arc::new(move |batch, _now| {
            let store = Arc::clone(&store);
            Box::pin(async move { store.insert_webhook_logs(&batch).await })
        })))
    }

    /// Writes `entry` in the next batch; answers its row id. A refused
    /// entry fails alone, before joining a batch.
    pub async fn insert(&self, entry: WebhookLogEntry) -> Result<i64, StoreError> {
        check_webhook_log(&entry)?;
        let now = entry.received_at;
        self.0.submit_checked(entry, now).await
    }
}

/// An [`EventStore`] whose `append`s share transactions: concurrent single
/// appends go to the inner store's [`EventStore::append_many`] together
/// (all-or-nothing, so a batch that fails, say on one stale expected
/// version, is rewritten append by append and only that one fails). Reads
/// and `append_many` go straight to the inner store. Same contract as the
/// inner store: every append is atomic and answered after its commit.
///
/// With a [`LoggedAppendStore`] ([`GroupedAppends::start_logged`]), an
/// append may carry a webhook-log row ([`GroupedAppends::append_logged`]):
/// a batch holding any such row goes to
/// [`LoggedAppendStore::append_many_logged`], so each row commits in the
/// same transaction as its append, and only if the append does.
#[derive(Clone)]
pub struct GroupedAppends {
    inner: Arc<dyn EventStore>,
    logged: Option<Arc<dyn LoggedAppendStore>>,
    commit: GroupCommit<LoggedAppend, Result<(AppendResult, Option<i64>), StoreError>>,
}

/// One grouped append and the webhook-log row, if any, that commits with it.
#[derive(Clone)]
struct LoggedAppend {
    append: StreamAppend,
    log: Option<WebhookLogEntry>,
}

impl std::fmt::Debug for GroupedAppends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupedAppends").finish_non_exhaustive()
    }
}

impl GroupedAppends {
    /// Without a log store: [`GroupedAppends::append_logged`] refuses.
    pub fn start(inner: Arc<dyn EventStore>) -> GroupedAppends {
        GroupedAppends::start_with(inner, None)
    }

    /// `logged` must write to the same database as `inner` (it is the same
    /// backend, seen through its other port).
    pub fn start_logged(
        inner: Arc<dyn EventStore>,
        logged: Arc<dyn LoggedAppendStore>,
    ) -> GroupedAppends {
        GroupedAppends::start_with(inner, Some(logged))
    }

    fn start_with(
        inner: Arc<dyn EventStore>,
        logged: Option<Arc<dyn LoggedAppendStore>>,
    ) -> GroupedAppends {
        let store = Arc::clone(&inner);
        let log_store = logged.clone();
        let commit = GroupCommit::start(Arc::new(move |batch: Arc<Vec<LoggedAppend>>, _now| {
            let store = Arc::clone(&store);
            let logged = log_store.clone();
            Box::pin(async move { append_batch(&*store, logged.as_deref(), &batch).await })
                as BoxFuture<
                    'static,
                    Result<Vec<Result<(AppendResult, Option<i64>), StoreError>>, StoreError>,
                >
        }));
        GroupedAppends {
            inner,
            logged,
            commit,
        }
    }

    /// [`LoggedAppendStore::read_stream_unless_processed`] on the log
    /// store. Refused without one ([`GroupedAppends::start_logged`]).
    pub async fn read_stream_unless_processed(
        &self,
        event_id: &str,
        stream: &StreamId,
        max_count: u32,
    ) -> Result<Option<Vec<RecordedEvent>>, StoreError> {
        let Some(logged) = &self.logged else {
            return Err(StoreError::Backend(
                "these grouped appends have no webhook-log store".to_owned(),
            ));
        };
        logged
            .read_stream_unless_processed(event_id, stream, max_count)
            .await
    }

    /// [`EventStore::append`] whose webhook-log row `log` commits in the
    /// same transaction (and only if the append does); answers the row's id
    /// too. Refused without a log store ([`GroupedAppends::start_logged`]).
    pub async fn append_logged(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
        log: WebhookLogEntry,
    ) -> Result<(AppendResult, i64), StoreError> {
        check_webhook_log(&log)?;
        let (result, id) = self.submit(stream, expected, events, Some(log)).await?;
        let id = id.ok_or_else(|| {
            StoreError::Backend("a logged append answered no webhook-log row id".to_owned())
        })?;
        Ok((result, id))
    }

    async fn submit(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
        log: Option<WebhookLogEntry>,
    ) -> Result<(AppendResult, Option<i64>), StoreError> {
        // Bad input fails alone, before joining a batch.
        validate_events(events)?;
        let item = LoggedAppend {
            append: StreamAppend {
                stream: stream.clone(),
                expected,
                events: events.to_vec(),
            },
            log,
        };
        self.commit
            .submit_checked(item, crate::recorded_now())
            .await?
    }
}

/// One transaction for the first append of each stream (with the log rows
/// of those that carry one); an append to a stream already in the batch
/// waits for it and runs alone after it.
async fn append_batch(
    store: &dyn EventStore,
    logged: Option<&dyn LoggedAppendStore>,
    batch: &[LoggedAppend],
) -> Result<Vec<Result<(AppendResult, Option<i64>), StoreError>>, StoreError> {
    let mut seen: HashSet<&StreamId> = HashSet::with_capacity(batch.len());
    let first: Vec<bool> = batch
        .iter()
        .map(|a| seen.insert(&a.append.stream))
        .collect();
    let firsts: Vec<&LoggedAppend> = batch
        .iter()
        .zip(&first)
        .filter(|(_, f)| **f)
        .map(|(a, _)| a)
        .collect();
    let mut written = write_together(store, logged, &firsts).await?.into_iter();
    let mut answers = Vec::with_capacity(batch.len());
    for (item, first) in batch.iter().zip(first) {
        if first {
            let result = written.next().ok_or_else(|| {
                StoreError::Backend("append_many answered fewer parts than given".to_owned())
            })?;
            answers.push(Ok(result));
        } else {
            answers.push(
                write_together(store, logged, &[item])
                    .await
                    .and_then(|mut one| {
                        one.pop().ok_or_else(|| {
                            StoreError::Backend("an append answered no result".to_owned())
                        })
                    }),
            );
        }
    }
    Ok(answers)
}

/// `items` (of distinct streams) in one transaction: through the log store
/// when any carries a row, else plain [`EventStore::append_many`].
async fn write_together(
    store: &dyn EventStore,
    logged: Option<&dyn LoggedAppendStore>,
    items: &[&LoggedAppend],
) -> Result<Vec<(AppendResult, Option<i64>)>, StoreError> {
    let appends: Vec<StreamAppend> = items.iter().map(|i| i.append.clone()).collect();
    let entries: Vec<WebhookLogEntry> = items.iter().filter_map(|i| i.log.clone()).collect();
    if entries.is_empty() {
        return Ok(store
            .append_many(&appends)
            .await?
            .into_iter()
            .map(|r| (r, None))
            .collect());
    }
    let Some(logged) = logged else {
        return Err(StoreError::Backend(
            "a webhook-log row was given to appends started without a log store".to_owned(),
        ));
    };
    let (results, ids) = logged.append_many_logged(&appends, &entries).await?;
    if results.len() != items.len() || ids.len() != entries.len() {
        return Err(StoreError::Backend(format!(
            "a logged append of {} parts and {} rows answered {} and {}",
            items.len(),
            entries.len(),
            results.len(),
            ids.len()
        )));
    }
    let mut ids = ids.into_iter();
    Ok(items
        .iter()
        .zip(results)
        .map(|(item, result)| (result, item.log.as_ref().and_then(|_| ids.next())))
        .collect())
}

#[async_trait]
impl EventStore for GroupedAppends {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<AppendResult, StoreError> {
        Ok(self.submit(stream, expected, events, None).await?.0)
    }

    async fn append_many(&self, batch: &[StreamAppend]) -> Result<Vec<AppendResult>, StoreError> {
        self.inner.append_many(batch).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        max_count: u32,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner
            .read_stream(stream, from_version, max_count)
            .await
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Option<u64>, StoreError> {
        self.inner.stream_version(stream).await
    }

    async fn read_all(
        &self,
        after: Checkpoint,
        max_count: u32,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_all(after, max_count).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Mutex as StdMutex;

    use tokio::sync::Semaphore;
    use tokio::task::JoinHandle;

    use super::*;

    /// A group commit whose writer records each batch's size and holds it
    /// until the test lets one batch through.
    struct Gated {
        commit: GroupCommit<u32, u32>,
        sizes: Arc<StdMutex<Vec<usize>>>,
        gate: Arc<Semaphore>,
    }

    impl Gated {
        fn start() -> Gated {
            let sizes = Arc::new(StdMutex::new(Vec::new()));
            let gate = Arc::new(Semaphore::new(0));
            let write: WriteBatch<u32, u32> = {
                let (sizes, gate) = (Arc::clone(&sizes), Arc::clone(&gate));
                Arc::new(move |items: Arc<Vec<u32>>, _now| {
                    let (sizes, gate) = (Arc::clone(&sizes), Arc::clone(&gate));
                    Box::pin(async move {
                        sizes.lock().unwrap().push(items.len());
                        gate.acquire().await.unwrap().forget();
                        Ok(items.iter().map(|i| i * 10).collect())
                    })
                })
            };
            Gated {
                commit: GroupCommit::start(write),
                sizes,
                gate,
            }
        }

        fn submit(&self, n: u32) -> JoinHandle<Result<u32, StoreError>> {
            let commit = self.commit.clone();
            tokio::spawn(async move { commit.submit_checked(n, crate::recorded_now()).await })
        }

        fn sizes(&self) -> Vec<usize> {
            self.sizes.lock().unwrap().clone()
        }

        /// Lets `batches` batches through, then checks every answer.
        async fn release(
            &self,
            batches: usize,
            tasks: Vec<(u32, JoinHandle<Result<u32, StoreError>>)>,
        ) {
            self.gate.add_permits(batches);
            for (n, task) in tasks {
                assert_eq!(task.await.unwrap(), Ok(n * 10));
            }
        }
    }

    async fn let_others_run() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    /// An idle system writes a request at once; requests that arrive while
    /// that batch is written wait for it and then share one batch, instead
    /// of the free writer starting a transaction for each.
    #[tokio::test(flavor = "current_thread")]
    async fn a_batch_forms_while_another_is_written() {
        let gated = Gated::start();
        let mut tasks = vec![(1, gated.submit(1))];
        let_others_run().await;
        assert_eq!(gated.sizes(), vec![1], "the first request waits for nobody");
        tasks.extend((2..=11).map(|n| (n, gated.submit(n))));
        let_others_run().await;
        assert_eq!(
            gated.sizes(),
            vec![1],
            "nothing starts while a batch is written"
        );
        gated.release(2, tasks).await;
        assert_eq!(gated.sizes(), vec![1, 10]);
    }

    /// A batch of GROUP_START_EARLY starts beside the ones being written,
    /// while a writer is free; with every writer busy, the next batch takes
    /// all that queued (up to GROUP_MAX) once one finishes.
    #[tokio::test(flavor = "current_thread")]
    async fn a_batch_starts_beside_written_ones_once_it_holds_group_start_early() {
        let gated = Gated::start();
        let early = u32::try_from(GROUP_START_EARLY).unwrap();
        let mut tasks = vec![(0, gated.submit(0))];
        let_others_run().await;
        tasks.extend((1..early).map(|n| (n, gated.submit(n))));
        let_others_run().await;
        assert_eq!(gated.sizes(), vec![1], "one short of starting early");
        tasks.push((early, gated.submit(early)));
        let_others_run().await;
        assert_eq!(gated.sizes(), vec![1, GROUP_START_EARLY]);
        tasks.extend((early + 1..=2 * early).map(|n| (n, gated.submit(n))));
        let_others_run().await;
        assert_eq!(gated.sizes(), vec![1, GROUP_START_EARLY, GROUP_START_EARLY]);
        assert_eq!(GROUP_WRITERS, 3, "every writer is busy now");
        let rest = u32::try_from(GROUP_MAX).unwrap() + 10;
        tasks.extend((2 * early + 1..=2 * early + rest).map(|n| (n, gated.submit(n))));
        let_others_run().await;
        assert_eq!(
            gated.sizes().len(),
            3,
            "nothing starts without a free writer"
        );
        gated.gate.add_permits(1);
        let_others_run().await;
        assert_eq!(
            gated.sizes(),
            vec![1, GROUP_START_EARLY, GROUP_START_EARLY, GROUP_MAX],
            "a freed writer takes all that queued, up to GROUP_MAX"
        );
        gated.release(4, tasks).await;
        assert_eq!(
            gated.sizes(),
            vec![1, GROUP_START_EARLY, GROUP_START_EARLY, GROUP_MAX, 10]
        );
    }
}
