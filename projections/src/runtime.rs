//! The projector runtime: one loop per handler, tailing the gap-safe
//! `read_all` feed from the handler's own checkpoint.
//!
//! **Guarantees:**
//! - A handler sees events in feed order, in batches of at most [`BATCH`],
//!   and owns its checkpoint: a read model saves it in the same transaction
//!   as its rows (exactly-once), a process manager after its effects
//!   (at-least-once). The runtime never advances a checkpoint itself.
//! - An event a handler cannot apply ([`HandlerError::Poison`]) stops that
//!   handler: ERROR log naming stream, version and reason, health
//!   [`Health::Stalled`], checkpoint left before the event. Nothing is
//!   skipped; a restart retries the same event.
//! - A transient failure (database down, checkpoint moved by a concurrent
//!   rebuild) is retried after [`RETRY_DELAY`], from the stored checkpoint.
//! - [`Projector::run_once`] and [`Projector::catch_up`] drive the loop
//!   synchronously for tests and the CLI; once caught up, [`Projector::run`]
//!   waits on a [`Notify`] the caller can poke, or at most [`POLL_INTERVAL`].
//! - With [`Projector::with_coalesce`], [`Projector::run`] lets events
//!   gather for that long after a partial batch before it reads again (no
//!   poke cuts it short): under load a few large batches instead of one
//!   small transaction per handful of events; an idle projector still
//!   applies the first new event at once. (A poke during that wait is kept,
//!   so one extra empty read follows it: harmless.)

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ledger_core::{Checkpoint, RecordedEvent};
use ledger_store::{EventStore, StoreError};
use tokio::sync::{Notify, watch};

/// Events per batch: large enough to amortise one transaction and one
/// multi-row statement per table, small enough to keep a batch's rows and
/// its transaction short.
pub const BATCH: u32 = 5_000;

/// Longest wait for new events when nobody pokes the projector's `Notify`.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Wait before retrying after a transient failure.
pub const RETRY_DELAY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Starting,
    /// Applying events, or caught up and waiting.
    Running,
    /// Retrying a transient failure.
    Failing {
        error: String,
    },
    /// Stopped on an event it cannot apply; needs an operator (or a fix and
    /// a restart).
    Stalled {
        stream: String,
        version: u64,
        reason: String,
    },
}

/// What a projector reports: where it is, how far behind, how healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub name: String,
    pub checkpoint: Checkpoint,
    /// Highest global position in the store, when the handler can tell.
    pub head_position: Option<u64>,
    /// Events applied by this projector since it started.
    pub applied: u64,
    pub health: Health,
}

impl Status {
    /// Positions between the checkpoint and the store's head.
    pub fn lag(&self) -> Option<u64> {
        self.head_position
            .map(|h| h.saturating_sub(self.checkpoint.position))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// This event cannot be applied, now or on retry.
    #[error("cannot apply {stream} v{version}: {reason}")]
    Poison {
        stream: String,
        version: u64,
        reason: String,
    },
    #[error("{0}")]
    Transient(String),
}

impl From<StoreError> for HandlerError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Corrupt {
                stream,
                version,
                reason,
            } => HandlerError::Poison {
                stream,
                version,
                reason,
            },
            other => HandlerError::Transient(other.to_string()),
        }
    }
}

/// A projection or a process manager.
#[async_trait]
pub trait Handler: Send + Sync {
    fn name(&self) -> String;
    /// The checkpoint to read after (loaded from storage when unknown).
    async fn checkpoint(&mut self) -> Result<Checkpoint, HandlerError>;
    /// Applies a batch and records the last event's checkpoint: atomically
    /// with the rows (projections) or after the effects (process managers).
    async fn handle(&mut self, events: &[RecordedEvent]) -> Result<(), HandlerError>;
    /// The store's highest position, for the lag.
    async fn head_position(&self) -> Result<Option<u64>, HandlerError> {
        Ok(None)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    #[error("projection {name} stalled at {stream} v{version}: {reason}")]
    Stalled {
        name: String,
        stream: String,
        version: u64,
        reason: String,
    },
    #[error("projection {name}: {error}")]
    Transient { name: String, error: String },
}

/// Drives one handler.
pub struct Projector<H: Handler> {
    events: Arc<dyn EventStore>,
    handler: H,
    status: watch::Sender<Status>,
    batch: u32,
    stop_at: Option<Checkpoint>,
    coalesce: Duration,
}

impl<H: Handler> std::fmt::Debug for Projector<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projector")
            .field("status", &*self.status.borrow())
            .field("batch", &self.batch)
            .field("coalesce", &self.coalesce)
            .finish_non_exhaustive()
    }
}

impl<H: Handler> Projector<H> {
    pub fn new(events: Arc<dyn EventStore>, handler: H) -> Self {
        let status = Status {
            name: handler.name(),
            checkpoint: Checkpoint::START,
            head_position: None,
            applied: 0,
            health: Health::Starting,
        };
        Projector {
            events,
            handler,
            status: watch::Sender::new(status),
            batch: BATCH,
            stop_at: None,
            coalesce: Duration::ZERO,
        }
    }

    /// After a partial batch, [`Projector::run`] waits this long before it
    /// reads again, so the events written meanwhile go in one batch (one
    /// transaction, one multi-row statement per table). Zero (the default)
    /// reads again at once. The read models then trail the store by up to
    /// this much more under load.
    pub fn with_coalesce(mut self, coalesce: Duration) -> Self {
        self.coalesce = coalesce;
        self
    }

    /// Events per batch (tests use small, uneven ones).
    pub fn with_batch(mut self, batch: u32) -> Self {
        self.batch = batch.clamp(1, BATCH);
        self
    }

    /// Never applies an event after `stop_at` (a rebuild to a known point).
    pub fn with_stop_at(mut self, stop_at: Option<Checkpoint>) -> Self {
        self.stop_at = stop_at;
        self
    }

    pub fn handler(&self) -> &H {
        &self.handler
    }

    pub fn handler_mut(&mut self) -> &mut H {
        &mut self.handler
    }

    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// A live view of the status (health checks, lag logging).
    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// Reads one batch after the checkpoint and applies it. Returns how many
    /// events were applied (0: caught up).
    pub async fn run_once(&mut self) -> Result<usize, RuntimeError> {
        if let Health::Stalled {
            stream,
            version,
            reason,
        } = &self.status.borrow().health
        {
            return Err(RuntimeError::Stalled {
                name: self.handler.name(),
                stream: stream.clone(),
                version: *version,
                reason: reason.clone(),
            });
        }
        match self.step().await {
            Ok(n) => Ok(n),
            Err(HandlerError::Poison {
                stream,
                version,
                reason,
            }) => {
                let name = self.handler.name();
                tracing::error!(
                    projection = %name, stream = %stream, version, reason = %reason,
                    "projection stalled: cannot apply event; checkpoint not advanced"
                );
                self.status.send_modify(|s| {
                    s.health = Health::Stalled {
                        stream: stream.clone(),
                        version,
                        reason: reason.clone(),
                    }
                });
                Err(RuntimeError::Stalled {
                    name,
                    stream,
                    version,
                    reason,
                })
            }
            Err(HandlerError::Transient(error)) => {
                let name = self.handler.name();
                tracing::warn!(projection = %name, error = %error, "projection batch failed; will retry");
                self.status.send_modify(|s| {
                    s.health = Health::Failing {
                        error: error.clone(),
                    }
                });
                Err(RuntimeError::Transient { name, error })
            }
        }
    }

    async fn step(&mut self) -> Result<usize, HandlerError> {
        let after = self.handler.checkpoint().await?;
        let mut page = self.events.read_all(after, self.batch).await?;
        if let Some(stop) = self.stop_at {
            page.retain(|e| e.checkpoint() <= stop);
        }
        if !page.is_empty() {
            match self.handler.handle(&page).await {
                Ok(()) => {}
                Err(HandlerError::Poison {
                    stream,
                    version,
                    reason,
                }) => {
                    // Apply what precedes the bad event, so the checkpoint stops
                    // right before it (and the status says exactly where).
                    let bad = page
                        .iter()
                        .position(|e| e.stream_id.as_str() == stream && e.stream_version == version)
                        .unwrap_or(0);
                    if bad > 0 {
                        self.handler.handle(&page[..bad]).await?;
                        let at = page[bad - 1].checkpoint();
                        self.status.send_modify(|s| {
                            s.checkpoint = at;
                            s.applied = s.applied.saturating_add(bad as u64);
                        });
                    }
                    return Err(HandlerError::Poison {
                        stream,
                        version,
                        reason,
                    });
                }
                Err(other) => return Err(other),
            }
        }
        let checkpoint = page.last().map_or(after, RecordedEvent::checkpoint);
        let head = if page.is_empty() {
            Some(checkpoint.position)
        } else {
            self.handler.head_position().await.unwrap_or(None)
        };
        let n = page.len();
        self.status.send_modify(|s| {
            s.checkpoint = checkpoint;
            s.head_position = head.map(|h| h.max(checkpoint.position));
            s.applied = s.applied.saturating_add(n as u64);
            s.health = Health::Running;
        });
        Ok(n)
    }

    /// Applies batches until a read comes back empty. Returns the count.
    pub async fn catch_up(&mut self) -> Result<u64, RuntimeError> {
        let mut total: u64 = 0;
        loop {
            let n = self.run_once().await?;
            if n == 0 {
                return Ok(total);
            }
            total = total.saturating_add(n as u64);
        }
    }

    /// Runs until `shutdown` turns true (or its sender drops). Returns an
    /// error only when the handler stalls.
    pub async fn run(
        &mut self,
        wake: Arc<Notify>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), RuntimeError> {
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            // (how long to wait, whether a poke ends the wait)
            let (wait, wakeable) = match self.run_once().await {
                Ok(0) => (POLL_INTERVAL, true),
                Ok(n) if !self.coalesce.is_zero() && n < self.batch as usize => {
                    (self.coalesce, false)
                }
                Ok(_) => continue,
                Err(e @ RuntimeError::Stalled { .. }) => return Err(e),
                Err(RuntimeError::Transient { .. }) => (RETRY_DELAY, true),
            };
            tokio::select! {
                _ = wake.notified(), if wakeable => {}
                _ = tokio::time::sleep(wait) => {}
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Mutex;

    use ledger_core::ExpectedVersion;
    use ledger_core::ids::StreamId;
    use ledger_store::conformance::new_event;
    use ledger_store::memory::MemoryStore;

    use super::*;

    /// Records each batch's size and keeps its checkpoint in memory.
    struct Sizes {
        checkpoint: Checkpoint,
        sizes: Arc<Mutex<Vec<usize>>>,
    }

    #[async_trait]
    impl Handler for Sizes {
        fn name(&self) -> String {
            "sizes".to_owned()
        }
        async fn checkpoint(&mut self) -> Result<Checkpoint, HandlerError> {
            Ok(self.checkpoint)
        }
        async fn handle(&mut self, events: &[RecordedEvent]) -> Result<(), HandlerError> {
            self.sizes.lock().unwrap().push(events.len());
            if let Some(last) = events.last() {
                self.checkpoint = last.checkpoint();
            }
            Ok(())
        }
    }

    async fn append(store: &MemoryStore, n: usize) {
        let stream = StreamId::new(format!("s-{}", uuid::Uuid::new_v4())).unwrap();
        let events: Vec<_> = (0..n).map(|_| new_event("Noted", "{}")).collect();
        store
            .append(&stream, ExpectedVersion::NoStream, &events)
            .await
            .unwrap();
    }

    async fn let_others_run() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    /// Runs a projector with `coalesce`; after its first batch (1 event),
    /// appends 3 more and pokes it. Returns the batch sizes seen with no
    /// (virtual) time passed, just short of `coalesce`, at `coalesce`, and
    /// once it went idle and was poked about one more event (no time
    /// passed). Stopping it takes no time either, even mid-wait.
    async fn batches_after_a_poke(coalesce: Duration) -> [Vec<usize>; 4] {
        let store = Arc::new(MemoryStore::new());
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let handler = Sizes {
            checkpoint: Checkpoint::START,
            sizes: Arc::clone(&sizes),
        };
        let mut projector = Projector::new(Arc::clone(&store) as Arc<dyn EventStore>, handler)
            .with_coalesce(coalesce);
        let wake = Arc::new(Notify::new());
        let (stop, stopped) = watch::channel(false);
        append(&store, 1).await;
        let run = {
            let wake = Arc::clone(&wake);
            tokio::spawn(async move { projector.run(wake, stopped).await })
        };
        let_others_run().await;
        assert_eq!(
            *sizes.lock().unwrap(),
            vec![1],
            "the first event goes at once"
        );
        append(&store, 3).await;
        wake.notify_one();
        let_others_run().await;
        let at_once = sizes.lock().unwrap().clone();
        let short = coalesce.saturating_sub(Duration::from_millis(1));
        tokio::time::advance(short).await;
        let_others_run().await;
        let just_short = sizes.lock().unwrap().clone();
        tokio::time::advance(coalesce - short).await;
        let_others_run().await;
        let after = sizes.lock().unwrap().clone();
        // Past the wait after the batch of 3: caught up, idle.
        tokio::time::advance(coalesce).await;
        let_others_run().await;
        append(&store, 1).await;
        wake.notify_one();
        let_others_run().await;
        let idle_poked = sizes.lock().unwrap().clone();
        let stopping = tokio::time::Instant::now();
        stop.send(true).unwrap();
        run.await.unwrap().unwrap();
        assert_eq!(
            tokio::time::Instant::now(),
            stopping,
            "a stop ends any wait at once"
        );
        [at_once, just_short, after, idle_poked]
    }

    #[tokio::test(start_paused = true)]
    async fn without_coalesce_a_poke_reads_at_once() {
        let [at_once, _, _, idle_poked] = batches_after_a_poke(Duration::ZERO).await;
        assert_eq!(at_once, vec![1, 3]);
        assert_eq!(idle_poked, vec![1, 3, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn coalesce_holds_the_next_read_after_a_partial_batch() {
        let coalesce = Duration::from_millis(250);
        let [at_once, just_short, after, idle_poked] = batches_after_a_poke(coalesce).await;
        assert_eq!(at_once, vec![1], "a poke does not cut the wait short");
        assert_eq!(just_short, vec![1], "nothing is read before the wait ends");
        assert_eq!(after, vec![1, 3], "what gathered goes in one batch");
        assert_eq!(
            idle_poked,
            vec![1, 3, 1],
            "an idle projector applies a poked event at once"
        );
    }
}
