//! The task lifecycle around the ledger: results, cancels, registration, heartbeats,
//! re-dispatch of lost tasks, the reaper and long-poll waiters (SPEC §4, §7).
//! Submission and offers live in `dispatch`.

use std::{
    collections::HashSet,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use common::protocol::{Heartbeat, Registration, ResultReport};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    activity::Activity,
    config::{self, ServeConfig},
    ledger::{
        Cancellation, HeldTask, Ledger, LedgerError, MasterRow, Requeue, ResultRecording, SlaveDeletion,
        SlaveRow, TaskRow, outcome_columns,
    },
    metrics::{Metrics, Reason, SlaveLabel},
    model::{MAX_SLAVE_NAME_CHARS, SlaveId, SlaveName, SlaveState, SlaveUrl, TaskId, TaskStatus},
    slave_calls::SlaveCalls,
    slaves::{Liveness, SlaveRegistry, Touch},
    timers::TaskTimers,
    waiters::{RecordedEnd, Waiters},
};

/// Passes of requeue-then-delete before deregistration gives up on a slave that keeps
/// receiving offers already in flight (each pass takes one offer timeout at most).
const DEREGISTER_ROUNDS: usize = 5;
/// Largest capacity a slave may announce.
pub const MAX_SLAVE_CAPACITY: u32 = 100_000;
/// Longest instance id a slave may send.
pub const MAX_INSTANCE_CHARS: usize = 64;

/// The master's moving parts; cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    ledger: Ledger,
    slaves: SlaveRegistry,
    /// Offers, drops and availability probes to slaves.
    calls: SlaveCalls,
    config: Arc<ServeConfig>,
    metrics: Metrics,
    waiters: Waiters,
    /// Deadlines and offer times of in-progress tasks, on monotonic time.
    timers: TaskTimers,
    /// Finished tasks and round trips of the last minutes, for the live charts.
    activity: Activity,
    /// Wakes the dispatcher: a task became pending or a slot freed.
    dispatch_wanted: Notify,
    /// False once shutdown began: submissions get 503.
    accepting: AtomicBool,
    /// Whether a task may be pending, without asking the ledger: bumped before and
    /// after each write of this master that makes a task pending, and copied into
    /// `pending_cleared` when the dispatcher then finds the queue empty (see
    /// [`Cluster::may_have_pending`]).
    pending_marks: AtomicU64,
    pending_cleared: AtomicU64,
    /// A dispatcher wake is set for when a slave that refused may be asked again.
    refusal_wake_set: AtomicBool,
    /// This master's row in the ledger's `masters`, once recorded.
    master_id: OnceLock<i64>,
}

/// Why a registration was refused (400).
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("name must be 1..={MAX_SLAVE_NAME_CHARS} characters of letters, digits, `-`, `_` or `.`")]
    BadName,
    #[error("capacity must be between 1 and {MAX_SLAVE_CAPACITY}")]
    BadCapacity,
    #[error("{0}")]
    BadUrl(String),
    #[error("instance must be at most {MAX_INSTANCE_CHARS} characters")]
    BadInstance,
    #[error("{0} is up and held by another live process; stop it or pick another name")]
    NameInUse(String),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// Whether a registration's URL is checked by asking it (`GET /availability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// From the network: the URL must answer as a slave, and a name held by another
    /// live process is refused.
    Ask,
    /// The master's own local slaves, registered before they serve.
    Trusted,
}

impl Cluster {
    /// Builds the cluster on an open ledger and loads the registry from it: every known
    /// slave keeps its state and gets a full slave timeout to heartbeat again.
    pub async fn start(
        ledger: Ledger,
        config: Arc<ServeConfig>,
        metrics: Metrics,
        http: reqwest::Client,
    ) -> Result<Self, LedgerError> {
        let slaves = SlaveRegistry::default();
        let in_progress = ledger.in_progress().await?;
        for row in ledger.slaves().await? {
            let running = in_progress.iter().filter(|task| task.slave_id == row.id).count();
            slaves.upsert(&row, running);
        }
        // Downtime of the master must not count against tasks whose slaves kept working
        // (SPEC §7, late results): each gets a whole deadline from now, on this
        // process's monotonic clock (the stored `deadline_at` is for people only).
        let timers = TaskTimers::default();
        for task in &in_progress {
            let budget = config.task_deadline(u64::try_from(task.delay_ms).unwrap_or(0));
            timers.start(task.id, task.slave_id, task.attempts, budget);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                ledger,
                slaves,
                calls: SlaveCalls::new(http, config.token.clone(), config.offer_timeout),
                config,
                metrics,
                waiters: Waiters::default(),
                timers,
                activity: Activity::default(),
                dispatch_wanted: Notify::new(),
                accepting: AtomicBool::new(true),
                // Tasks left pending by an earlier run: unknown until the first look.
                pending_marks: AtomicU64::new(1),
                pending_cleared: AtomicU64::new(0),
                refusal_wake_set: AtomicBool::new(false),
                master_id: OnceLock::new(),
            }),
        })
    }

    /// The ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.inner.ledger
    }

    /// The slave registry.
    pub fn slaves(&self) -> &SlaveRegistry {
        &self.inner.slaves
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Calls to slaves: offers, drops, availability probes.
    pub(crate) fn calls(&self) -> &SlaveCalls {
        &self.inner.calls
    }

    /// Finished tasks per second and their round trips, for the live charts.
    pub fn activity(&self) -> &Activity {
        &self.inner.activity
    }

    /// Deadlines of in-progress tasks.
    pub(crate) fn timers(&self) -> &TaskTimers {
        &self.inner.timers
    }

    /// Resolves when the dispatcher should look at the queue again.
    pub(crate) async fn dispatch_wanted(&self) {
        self.inner.dispatch_wanted.notified().await
    }

    /// The configuration.
    pub fn config(&self) -> &ServeConfig {
        &self.inner.config
    }

    /// Whether submissions are taken (false once shutdown began).
    pub fn is_accepting(&self) -> bool {
        self.inner.accepting.load(Ordering::SeqCst)
    }

    /// Stops taking submissions; results, reads and heartbeats go on.
    pub fn stop_accepting(&self) {
        self.inner.accepting.store(false, Ordering::SeqCst);
    }

    /// Whether the queue may hold a pending task: false only when the dispatcher found
    /// it empty after the last time this master made a task pending (and no other
    /// master shares the ledger). Spares queue-mode submissions and the dispatcher
    /// a ledger read each.
    pub(crate) fn may_have_pending(&self) -> bool {
        self.inner.ledger.is_shared()
            || self.inner.pending_marks.load(Ordering::SeqCst)
                != self.inner.pending_cleared.load(Ordering::SeqCst)
    }

    /// Runs `write`, which may make a task pending, with the mark bumped on both sides:
    /// before, so a submission that checks the hint meanwhile does not overtake the
    /// task; after, so a dispatcher that read the queue just before the write committed,
    /// and found it empty, does not take that for "still empty" and skip its reads.
    pub(crate) async fn making_pending<T>(&self, write: impl Future<Output = T>) -> T {
        self.note_pending();
        let outcome = write.await;
        self.note_pending();
        outcome
    }

    fn note_pending(&self) {
        self.inner.pending_marks.fetch_add(1, Ordering::SeqCst);
    }

    /// The mark to pass to [`Self::queue_seen_empty`], read before the queue is read.
    pub(crate) fn pending_mark(&self) -> u64 {
        self.inner.pending_marks.load(Ordering::SeqCst)
    }

    /// The dispatcher read the queue (after [`Self::pending_mark`] gave `mark`) and
    /// found it empty: nothing made pending since then is missed, as that bumped the mark.
    pub(crate) fn queue_seen_empty(&self, mark: u64) {
        self.inner.pending_cleared.store(mark, Ordering::SeqCst);
    }

    /// Wakes the dispatcher after `hold`, when a slave that refused an offer may be
    /// asked again; one such wake is set at a time (a later one is left to the tick).
    pub(crate) fn wake_dispatcher_after(&self, hold: std::time::Duration) {
        if self.inner.refusal_wake_set.swap(true, Ordering::SeqCst) {
            return;
        }
        let cluster = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(hold).await;
            cluster.inner.refusal_wake_set.store(false, Ordering::SeqCst);
            cluster.wake_dispatcher();
        });
    }

    pub(crate) fn wake_dispatcher(&self) {
        // notify_one keeps a permit when nobody waits, so a wake during a round is not lost.
        self.inner.dispatch_wanted.notify_one();
    }

    /// Records a slave's result (exactly once) and frees its slot.
    pub async fn record_result(
        &self,
        id: TaskId,
        report: ResultReport,
    ) -> Result<ResultRecording, LedgerError> {
        let slave = SlaveId(report.slave_id);
        let (_, result, error) = outcome_columns(&report.outcome);
        let recording = self.inner.ledger.record_result(id, slave, report.attempt, report.outcome).await?;
        if let ResultRecording::Recorded { status, finished_at } = &recording {
            let round_trip = self.inner.timers.stop(id, slave, report.attempt);
            self.inner.slaves.release(slave);
            let end = RecordedEnd {
                slave,
                attempt: report.attempt,
                status: *status,
                result,
                error,
                finished_at: finished_at.clone(),
            };
            self.task_finished(id, *status, round_trip, Some(end));
            self.wake_dispatcher();
        }
        Ok(recording)
    }

    /// Cancels a task; a slave that held it is told to drop it.
    pub async fn cancel(&self, id: TaskId) -> Result<Cancellation, LedgerError> {
        let cancellation = self.inner.ledger.cancel(id).await?;
        if let Cancellation::Cancelled { slave, attempt } = cancellation {
            if let Some(slave) = slave {
                self.inner.timers.stop(id, slave, attempt);
                self.inner.slaves.release(slave);
                self.tell_slave_to_drop(slave, id, attempt);
                self.wake_dispatcher();
            }
            self.task_finished(id, TaskStatus::Cancelled, None, None);
        }
        Ok(cancellation)
    }

    /// Wakes the task's long polls (with `end` when this master recorded it) and counts it.
    fn task_finished(
        &self,
        id: TaskId,
        status: TaskStatus,
        round_trip: Option<Duration>,
        end: Option<RecordedEnd>,
    ) {
        self.inner.waiters.notify(id, end);
        self.inner.ledger.announce_end(id);
        self.inner.activity.finished(round_trip);
        self.inner.metrics.tasks_finished.get_or_create(&Reason { reason: status.as_str() }).inc();
    }

    /// Tells a slave to stop working on `attempt` of a task, in the background: best
    /// effort, since the ledger already decided and a late result from it is refused
    /// anyway. The attempt keeps a late drop from stopping a newer offer of the task.
    pub(crate) fn tell_slave_to_drop(&self, slave: SlaveId, id: TaskId, attempt: i64) {
        let Some((name, url)) = self.inner.slaves.address(slave) else { return };
        self.inner.calls.drop_task(name, url, id, attempt);
    }

    /// The task, once final or once `wait` is over (long poll of `GET /tasks/{id}?wait=`).
    pub async fn task_when_final(&self, id: TaskId, wait: Duration) -> Result<Option<TaskRow>, LedgerError> {
        // Subscribe before reading, so a finish between the read and the wait is not missed.
        let mut finished = self.inner.waiters.subscribe(id);
        let mut task = self.inner.ledger.task(id).await?;
        let unfinished = task.as_ref().is_some_and(|task| !task.status.is_final());
        if !unfinished || wait.is_zero() {
            drop(finished);
            self.inner.waiters.forget_closed(id);
            return Ok(task);
        }
        // On a shared ledger another master may record the end: it announces it
        // (`follow_task_ends`) and, in case an announcement is lost, the task is read
        // again now and then. On SQLite this master records every end: one wait.
        let reread = if self.inner.ledger.is_shared() { config::LONG_POLL_REREAD } else { wait };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let slice = deadline.saturating_duration_since(tokio::time::Instant::now()).min(reread);
            let woken = tokio::time::timeout(slice, finished).await;
            // The end this master recorded, applied to the row read before it: the final
            // row without reading it again (unless the row was of another attempt).
            let ended = match (&woken, &task) {
                (Ok(Ok(Some(end))), Some(row)) => end.applied_to(row),
                _ => None,
            };
            if ended.is_some() {
                return Ok(ended);
            }
            self.inner.waiters.forget_closed(id);
            finished = self.inner.waiters.subscribe(id);
            task = self.inner.ledger.task(id).await?;
            if tokio::time::Instant::now() >= deadline
                || task.as_ref().is_none_or(|task| task.status.is_final())
            {
                drop(finished);
                self.inner.waiters.forget_closed(id);
                return Ok(task);
            }
        }
    }

    /// Registers (or re-registers) a slave. A registering slave holds no tasks (SPEC §7),
    /// so whatever the ledger still has in progress on it goes back to pending at once.
    /// Its URL must answer `GET /availability` as a slave (so a master, this one or
    /// another, is never taken for one: SPEC §8), and a name whose slave is up in
    /// another live process is refused (409 `name_in_use`).
    pub async fn register(&self, registration: Registration) -> Result<SlaveRow, RegisterError> {
        self.register_probed(registration, Probe::Ask).await
    }

    /// Registers one of this master's own `--local-slaves`, which serve only once the
    /// master runs: nothing to ask yet.
    pub(crate) async fn register_local(&self, registration: Registration) -> Result<SlaveRow, RegisterError> {
        self.register_probed(registration, Probe::Trusted).await
    }

    async fn register_probed(
        &self,
        registration: Registration,
        probe: Probe,
    ) -> Result<SlaveRow, RegisterError> {
        SlaveName::parse(&registration.name).ok_or(RegisterError::BadName)?;
        if !(1..=MAX_SLAVE_CAPACITY).contains(&registration.capacity) {
            return Err(RegisterError::BadCapacity);
        }
        if registration
            .instance
            .as_ref()
            .is_some_and(|instance| instance.chars().count() > MAX_INSTANCE_CHARS)
        {
            return Err(RegisterError::BadInstance);
        }
        let url = SlaveUrl::parse(&registration.url).map_err(RegisterError::BadUrl)?;
        let registration = Registration { url: url.as_str().to_owned(), ..registration };
        if probe == Probe::Ask {
            self.follow_slaves_if_shared().await?;
            self.inner.calls.availability(&registration.url).await.map_err(|why| {
                RegisterError::BadUrl(format!("url `{}` does not answer as a slave: {why}", registration.url))
            })?;
            self.check_name_is_free(&registration).await?;
        }
        let row = self.inner.ledger.register_slave(registration).await?;
        let held = self.inner.ledger.in_progress_on(row.id).await?;
        self.inner.slaves.upsert(&row, held.len());
        tracing::info!(slave = %row.name, slave_id = %row.id, position = row.position, url = %row.url, "slave registered");
        for task in held {
            self.requeue(task, format!("{} registered again and holds no tasks", row.name)).await?;
        }
        self.wake_dispatcher();
        Ok(row)
    }

    /// SPEC §8: a name belongs to one live process. The current holder is asked at its
    /// URL: if it answers as the instance that registered (or, registered with none,
    /// as any other instance than this one), it is alive and the name is taken. A
    /// holder that is down, gone, or replaced by this very process (a restart on the
    /// same address) gives the name up.
    async fn check_name_is_free(&self, registration: &Registration) -> Result<(), RegisterError> {
        let Some(holder) = self.inner.slaves.holder_of(&registration.name) else { return Ok(()) };
        if holder.state == SlaveState::Down
            || holder.instance == registration.instance && holder.instance.is_some()
        {
            return Ok(());
        }
        let Ok(Some(answering)) = self.inner.calls.availability(&holder.url).await else { return Ok(()) };
        let is_new_process = registration.instance.as_deref() == Some(answering.as_str());
        let is_holder = holder.instance.as_deref().is_none_or(|instance| instance == answering);
        if !is_new_process && is_holder {
            tracing::warn!(slave = %registration.name, url = %registration.url, held_at = %holder.url,
                "registration refused: the name is held by another live process");
            return Err(RegisterError::NameInUse(registration.name.clone()));
        }
        Ok(())
    }

    /// Takes a heartbeat: the slave is up (or draining); tasks it no longer lists
    /// (allowing for offers still in flight) are lost on it.
    pub async fn heartbeat(&self, slave: SlaveId, heartbeat: &Heartbeat) -> Result<Touch, LedgerError> {
        let instance = heartbeat.instance.as_deref();
        let mut touch = self.inner.slaves.touch(slave, heartbeat.draining, instance);
        if touch == Touch::Unknown && self.follow_slaves_if_shared().await? {
            // Registered through another master: this one knows it from the ledger now.
            touch = self.inner.slaves.touch(slave, heartbeat.draining, instance);
        }
        let Touch::Taken(liveness) = touch.clone() else { return Ok(touch) };
        let state = if heartbeat.draining { SlaveState::Draining } else { SlaveState::Up };
        let Some(seen_at) = self.inner.ledger.slave_seen(slave, state).await? else {
            // Deregistered (through another master) meanwhile: it registers again.
            self.inner.slaves.remove(slave);
            return Ok(Touch::Unknown);
        };
        // The ledger's clock, so every master compares news of the slave on one clock.
        self.inner.slaves.seen_at(slave, seen_at);
        if liveness == Liveness::CameBack {
            tracing::info!(slave_id = %slave, "slave is up again");
            self.wake_dispatcher();
        }
        // An offer accepted after the slave took its heartbeat snapshot is not listed yet;
        // a draining slave accepts no offers, so for it there is nothing in flight.
        let grace = if heartbeat.draining {
            Duration::ZERO
        } else {
            self.inner.config.offer_timeout + self.inner.config.heartbeat_interval
        };
        let held: HashSet<i64> = heartbeat.running.iter().copied().collect();
        for task in self.inner.ledger.in_progress_on(slave).await? {
            // Offered through another master: the ledger's clock says how long ago.
            let in_flight = self.inner.timers.offered_within(task.id, grace).unwrap_or_else(|| {
                Duration::from_millis(u64::try_from(task.assigned_ms_ago).unwrap_or(0)) < grace
            });
            if !held.contains(&task.id.0) && !in_flight {
                self.requeue(task, "the slave no longer holds it".to_owned()).await?;
            }
        }
        Ok(touch)
    }

    /// Deregisters a slave; its in-progress tasks are re-dispatched. False if unknown.
    pub async fn deregister(&self, slave: SlaveId) -> Result<bool, LedgerError> {
        let name = self.inner.slaves.address(slave).map(|(name, _)| name);
        // Out of the registry first, so no new offer picks it; an offer already in
        // flight may still assign a task to it, which the guarded delete notices.
        self.inner.slaves.remove(slave);
        let mut deletion = SlaveDeletion::StillHoldsTasks;
        for _ in 0..DEREGISTER_ROUNDS {
            for task in self.inner.ledger.in_progress_on(slave).await? {
                self.requeue(task, "its slave was deregistered".to_owned()).await?;
            }
            deletion = self.inner.ledger.delete_slave(slave).await?;
            if deletion != SlaveDeletion::StillHoldsTasks {
                break;
            }
        }
        if let Some(name) = name {
            self.inner.metrics.slave_running.remove(&SlaveLabel { slave: name });
        }
        match deletion {
            SlaveDeletion::Deleted => Ok(true),
            SlaveDeletion::NotFound => Ok(false),
            // Offers kept landing on it: it stays in the ledger (out of the registry, so
            // never offered again); the reaper's deadline takes care of what it holds.
            SlaveDeletion::StillHoldsTasks => {
                tracing::warn!(%slave, "slave kept receiving tasks while being deregistered");
                Ok(true)
            }
        }
    }

    /// A task was lost on its slave: back to pending (and to the dispatcher) or failed.
    pub(crate) async fn requeue(&self, task: HeldTask, reason: String) -> Result<Requeue, LedgerError> {
        let max_attempts = self.inner.config.max_attempts;
        let outcome = self.inner.ledger.requeue_lost(
            task.id,
            task.slave_id,
            task.attempts,
            max_attempts,
            reason.clone(),
        );
        let outcome = self.making_pending(outcome).await?;
        if outcome != Requeue::NotHeld {
            self.inner.timers.stop(task.id, task.slave_id, task.attempts);
        }
        match outcome {
            Requeue::Pending { attempts } => {
                tracing::info!(task_id = %task.id, slave_id = %task.slave_id, attempts, %reason, "task requeued");
                self.inner.slaves.release(task.slave_id);
                self.inner.metrics.requeued.inc();
                self.wake_dispatcher();
            }
            Requeue::Failed => {
                tracing::warn!(task_id = %task.id, attempts = task.attempts, %reason, "task failed: out of attempts");
                self.inner.slaves.release(task.slave_id);
                self.task_finished(task.id, TaskStatus::Failed, None, None);
                self.wake_dispatcher();
            }
            Requeue::NotHeld => {}
        }
        Ok(outcome)
    }

    /// Runs [`Cluster::sweep`] until `stop`.
    pub async fn reaper(self, stop: CancellationToken) {
        let period =
            (self.inner.config.slave_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            tokio::select! {
                () = tokio::time::sleep(period) => {}
                () = stop.cancelled() => return,
            }
            if let Err(error) = self.sweep().await {
                tracing::error!(%error, "reaper sweep failed");
            }
        }
    }

    /// One pass of the reaper: slaves silent past the slave timeout go `down` and lose
    /// their tasks; tasks past their deadline are lost on their slave.
    #[tracing::instrument(name = "reaper", skip_all)]
    pub async fn sweep(&self) -> Result<(), LedgerError> {
        let timeout = self.inner.config.slave_timeout;
        for (slave, name) in self.inner.slaves.mark_silent_down(timeout) {
            tracing::warn!(%slave, %name, ?timeout, "slave silent past the slave timeout: down");
            self.inner.ledger.slave_down(slave).await?;
            for task in self.inner.ledger.in_progress_on(slave).await? {
                self.requeue(task, format!("{name} went silent")).await?;
            }
        }
        for overdue in self.inner.timers.overdue() {
            // The delay and age are not needed to requeue; the guarded write checks the rest.
            let (id, slave_id, attempts) = (overdue.task, overdue.slave, overdue.attempt);
            self.reap_overdue(HeldTask { id, slave_id, attempts, delay_ms: 0, assigned_ms_ago: 0 }).await?;
        }
        if self.inner.ledger.is_shared() {
            // Offered through a master that died: nobody else keeps its deadline, so the
            // ledger's (on the database's clock) counts. Racing reapers: one requeue wins.
            for task in self.inner.ledger.overdue().await? {
                if !self.inner.timers.knows(task.id) {
                    self.reap_overdue(task).await?;
                }
            }
        }
        Ok(())
    }

    /// A task past its deadline is lost on its slave, which is told to drop it; if it
    /// had moved on already, its timer (if any) stops.
    async fn reap_overdue(&self, task: HeldTask) -> Result<(), LedgerError> {
        let (id, slave, attempt) = (task.id, task.slave_id, task.attempts);
        match self.requeue(task, "it ran past its deadline".to_owned()).await? {
            Requeue::NotHeld => {
                self.inner.timers.stop(id, slave, attempt);
            }
            Requeue::Pending { .. } | Requeue::Failed => self.tell_slave_to_drop(slave, id, attempt),
        }
        Ok(())
    }

    /// On a shared ledger, reads the slaves and their loads as every master wrote them
    /// into the registry (waking the dispatcher if a slot freed). False on SQLite.
    pub(crate) async fn follow_slaves_if_shared(&self) -> Result<bool, LedgerError> {
        if !self.inner.ledger.is_shared() {
            return Ok(false);
        }
        let rows = self.inner.ledger.slaves().await?;
        let loads = self.inner.ledger.slave_loads().await?;
        if self.inner.slaves.follow(&rows, &loads) {
            self.wake_dispatcher();
        }
        Ok(true)
    }

    /// Runs until `stop`: keeps this master's row in `masters` fresh and, on a shared
    /// ledger, follows what other masters write — slaves and loads every
    /// [`config::LEDGER_FOLLOW_PERIOD`], task ends as the database announces them.
    pub async fn follow_ledger(self, stop: CancellationToken) {
        let ends = tokio::spawn(self.clone().follow_task_ends(stop.clone()));
        let mut refreshed = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = tokio::time::sleep(config::LEDGER_FOLLOW_PERIOD) => {}
                () = stop.cancelled() => break,
            }
            if let Err(error) = self.follow_slaves_if_shared().await {
                tracing::warn!(%error, "could not read the slaves from the ledger");
            }
            if refreshed.elapsed() >= config::MASTER_REFRESH {
                refreshed = tokio::time::Instant::now();
                if let Some(&id) = self.inner.master_id.get() {
                    match self.inner.ledger.touch_master(id).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(master_id = id, "this master's row is gone from the ledger")
                        }
                        Err(error) => tracing::warn!(%error, "could not refresh this master's row"),
                    }
                }
            }
        }
        let _ = ends.await;
        if let Some(&id) = self.inner.master_id.get()
            && let Err(error) = self.inner.ledger.stop_master(id).await
        {
            tracing::warn!(%error, "could not record this master's stop");
        }
    }

    /// Wakes long polls for tasks that ended through other masters, and counts those
    /// ends in the live charts. Reconnects after a lost connection (long polls re-read
    /// meanwhile). Returns at once on SQLite.
    async fn follow_task_ends(self, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        while !stop.is_cancelled() {
            let Some(listening) = self.inner.ledger.task_ends().await else { return };
            let mut ends = match listening {
                Ok(ends) => ends,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for task ends; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            loop {
                let ended = tokio::select! {
                    ended = ends.next() => ended,
                    () = stop.cancelled() => return,
                };
                match ended {
                    Ok(ended) if !ended.here => {
                        self.inner.waiters.notify(ended.task, None);
                        self.inner.activity.finished(None);
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%error, "lost the task-end listener; listening again");
                        break;
                    }
                }
            }
        }
    }

    /// Records this master in the ledger's `masters` as serving at `url`.
    pub async fn record_master(&self, url: &str) -> Result<(), LedgerError> {
        let id = self.inner.ledger.start_master(url).await?;
        let _ = self.inner.master_id.set(id);
        tracing::info!(master_id = id, %url, "master recorded in the ledger");
        Ok(())
    }

    /// The masters on this ledger (`GET /masters`).
    pub async fn masters(&self) -> Result<Vec<MasterRow>, LedgerError> {
        self.inner.ledger.masters(config::MASTER_TIMEOUT).await
    }

    /// This master's id in `masters`, once recorded.
    pub fn master_id(&self) -> Option<i64> {
        self.inner.master_id.get().copied()
    }

    /// The Prometheus text of every metric, with the gauges (slaves, queue depth) read
    /// now rather than updated on every task.
    pub async fn render_metrics(&self) -> String {
        self.publish_slave_gauges();
        match self.inner.ledger.counts().await {
            Ok(counts) => {
                self.inner.metrics.queue_depth.set(counts.pending);
            }
            Err(error) => tracing::warn!(%error, "queue depth not read for /metrics"),
        }
        self.inner.metrics.render()
    }

    fn publish_slave_gauges(&self) {
        let metrics = &self.inner.metrics;
        let views = self.inner.slaves.views();
        metrics.slaves_up.set(views.iter().filter(|v| v.state == SlaveState::Up).count() as i64);
        for view in views {
            metrics.slave_running.get_or_create(&SlaveLabel { slave: view.name }).set(view.running as i64);
        }
    }
}
