//! Dispatch (SPEC §5): offers a task to the slaves in registration order until one
//! takes it. "Are you available?" and the assignment are one step on the slave (its
//! `POST /tasks` answers 202 with the slot reserved, or 409). The ledger records the
//! assignment *before* each offer, so a result can never arrive for an assignment that
//! is not on disk, and a crash between the two is caught by heartbeat reconciliation.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use common::protocol::{Offer, Variables};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{
    cluster::Cluster,
    config::WhenFull,
    ledger::{AssignFrom, LedgerError, TaskRow},
    metrics::Reason,
    model::{NewTask, SlaveId, TaskId},
    slave_calls::Answer,
    slaves::Candidate,
};

/// Pending tasks the dispatcher reads per round.
const PENDING_BATCH: i64 = 256;
/// The dispatcher looks at the queue at least this often, whatever woke it or not.
const DISPATCH_TICK: std::time::Duration = std::time::Duration::from_secs(1);

/// What a submission became.
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    /// A slave took it (201).
    Assigned { id: TaskId, slave: Candidate },
    /// Stored as pending, to run when a slave frees (202, queue mode).
    Queued { id: TaskId },
}

/// Why a submission was not taken.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("All slaves are busy: full capacity")]
    FullCapacity,
    #[error("no slave is registered and up")]
    NoSlaves,
    #[error("no slave could be reached: {0}")]
    Unreachable(String),
    #[error("the queue holds {0} pending tasks, its limit")]
    QueueFull(i64),
    #[error("the master is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// How the offers of one task ended.
#[derive(Debug)]
enum OfferOutcome {
    /// This slave accepted.
    Taken(Candidate),
    /// Every slave with room refused; the task is still assigned to this last one.
    AllRefused(SlaveId),
    /// No slave tried answered at all (each is marked suspect); the task is still
    /// assigned to the last one. Says why, slave by slave.
    AllUnreachable(SlaveId, String),
    /// The task moved on (cancelled, requeued) while being offered: leave it alone.
    Gone,
}

impl Cluster {
    /// Submits a task (SPEC §4 `POST /tasks`): to the first slave in order with room; if
    /// none, 503 `full_capacity` with nothing stored, or pending in queue mode.
    #[tracing::instrument(name = "dispatch", skip_all, fields(task_id = tracing::field::Empty, slave = tracing::field::Empty))]
    pub async fn submit(&self, task: NewTask) -> Result<Submitted, SubmitError> {
        if !self.is_accepting() {
            return Err(self.rejected(SubmitError::ShuttingDown));
        }
        if !self.slaves().has_live_slaves() {
            // On a shared ledger a slave may have registered through another master
            // within the last follow period.
            self.follow_slaves_if_shared().await?;
            if !self.slaves().has_live_slaves() {
                return Err(self.rejected(SubmitError::NoSlaves));
            }
        }
        let queue_mode = self.config().when_full == WhenFull::Queue;
        // In queue mode a new task never overtakes one already waiting.
        if queue_mode && self.ledger().counts().await?.pending > 0 {
            return self.enqueue(&task).await;
        }
        let Some(first) = self.slaves().reserve_next(&[]) else {
            return if queue_mode {
                self.enqueue(&task).await
            } else if !self.slaves().has_reachable_slaves() {
                let why = "every slave that is up left its last offer unanswered".to_owned();
                Err(self.rejected(SubmitError::Unreachable(why)))
            } else {
                Err(self.rejected(SubmitError::FullCapacity))
            };
        };
        let budget = self.config().task_deadline(task.delay_ms);
        let id = match self.ledger().insert_task(&task, Some((first.id, budget))).await {
            Ok(id) => id,
            Err(error) => {
                self.slaves().release(first.id);
                return Err(error.into());
            }
        };
        self.timers().start(id, first.id, 1, budget);
        tracing::Span::current().record("task_id", id.0);
        let offer = Offer {
            task_id: id.0,
            attempt: 1,
            expression: task.expression,
            variables: task.variables,
            delay_ms: task.delay_ms,
        };
        let outcome = self.offer_in_order(&offer, first, budget).await?;
        let submitted = match outcome {
            OfferOutcome::Taken(slave) => Submitted::Assigned { id, slave },
            OfferOutcome::AllRefused(last) | OfferOutcome::AllUnreachable(last, _) if queue_mode => {
                self.timers().stop(id, last, 1);
                self.ledger().unassign(id, last, 1, 0).await?;
                self.wake_dispatcher();
                Submitted::Queued { id }
            }
            OfferOutcome::AllRefused(last) | OfferOutcome::AllUnreachable(last, _) => {
                let refusal = match outcome_reason(&outcome) {
                    Some(why) => SubmitError::Unreachable(why),
                    None => SubmitError::FullCapacity,
                };
                self.timers().stop(id, last, 1);
                if self.ledger().delete_refused_task(id, last).await? {
                    return Err(self.rejected(refusal));
                }
                // It moved on meanwhile (the slave went down and the task was requeued):
                // it is stored and will run, so the client hears so.
                Submitted::Queued { id }
            }
            // Moved on or cancelled while being offered: it is stored either way.
            OfferOutcome::Gone => Submitted::Queued { id },
        };
        self.metrics().tasks_submitted.inc();
        Ok(submitted)
    }

    fn rejected(&self, error: SubmitError) -> SubmitError {
        let reason = crate::api::ErrorCode::of_submit_error(&error).as_str();
        self.metrics().tasks_rejected.get_or_create(&Reason { reason }).inc();
        error
    }

    async fn enqueue(&self, task: &NewTask) -> Result<Submitted, SubmitError> {
        let pending = self.ledger().counts().await?.pending;
        if pending >= self.config().queue_limit {
            return Err(self.rejected(SubmitError::QueueFull(pending)));
        }
        let id = self.ledger().insert_task(task, None).await?;
        self.metrics().tasks_submitted.inc();
        self.wake_dispatcher();
        Ok(Submitted::Queued { id })
    }

    /// Offers to `first` (already reserved and assigned in the ledger), then, while
    /// refused, to each next slave with room in position order, assigning before each.
    async fn offer_in_order(
        &self,
        offer: &Offer,
        first: Candidate,
        deadline: Duration,
    ) -> Result<OfferOutcome, LedgerError> {
        let id = TaskId(offer.task_id);
        let mut tried = Vec::new();
        // Why each slave tried did not answer; emptied by the first refusal, since then
        // some slave is there and merely busy.
        let mut unanswered = Some(Vec::new());
        let mut candidate = first;
        loop {
            match self.calls().offer(&candidate.name, &candidate.url, offer).await {
                Answer::Accepted => {
                    tracing::Span::current().record("slave", candidate.name.as_str());
                    self.count_offer("accepted");
                    return Ok(OfferOutcome::Taken(candidate));
                }
                Answer::Refused => {
                    self.count_offer("refused");
                    self.slaves().release_refused(candidate.id);
                    unanswered = None;
                }
                Answer::Unreachable(why) => {
                    self.count_offer("unanswered");
                    tracing::warn!(slave = %candidate.name, %why, "offer unanswered; slave marked suspect");
                    self.slaves().release(candidate.id);
                    self.slaves().mark_suspect(candidate.id);
                    if let Some(reasons) = unanswered.as_mut() {
                        reasons.push(format!("{}: {why}", candidate.name));
                    }
                }
            }
            tried.push(candidate.id);
            let Some(next) = self.slaves().reserve_next(&tried) else {
                return Ok(match unanswered {
                    Some(reasons) => OfferOutcome::AllUnreachable(candidate.id, reasons.join("; ")),
                    None => OfferOutcome::AllRefused(candidate.id),
                });
            };
            let from = AssignFrom::Slave { slave: candidate.id };
            let assigned = self.ledger().assign(id, from, next.id, offer.attempt, deadline).await;
            if !matches!(assigned, Ok(true)) {
                self.slaves().release(next.id);
                return assigned.map(|_| OfferOutcome::Gone);
            }
            self.timers().start(id, next.id, offer.attempt, deadline);
            candidate = next;
        }
    }

    fn count_offer(&self, answer: &'static str) {
        self.metrics().offers.get_or_create(&Reason { reason: answer }).inc();
    }

    /// The dispatcher: offers pending tasks, oldest first, whenever a slot may have
    /// freed or a task became pending, until `stop`; then waits for its offers to end.
    pub async fn dispatcher(self, stop: CancellationToken) {
        let mut offers = OffersInFlight::default();
        loop {
            if let Err(error) = self.dispatch_round(&mut offers).await {
                tracing::error!(%error, "dispatch round failed");
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = self.dispatch_wanted() => {}
                Some(done) = offers.running.join_next_with_id() => offers.finished(done),
                () = tokio::time::sleep(DISPATCH_TICK) => {}
            }
            while let Some(done) = offers.running.try_join_next_with_id() {
                offers.finished(done);
            }
        }
        while offers.running.join_next().await.is_some() {}
    }

    /// Starts an offer for each pending task (not already being offered) while slots
    /// are free, reading no more pending rows than there are free slots.
    async fn dispatch_round(&self, offers: &mut OffersInFlight) -> Result<(), LedgerError> {
        loop {
            let free = i64::try_from(self.slaves().free_slots()).unwrap_or(i64::MAX);
            if free == 0 {
                return Ok(());
            }
            let in_flight = i64::try_from(offers.offering.len()).unwrap_or(i64::MAX);
            let pending =
                self.ledger().oldest_pending(free.min(PENDING_BATCH).saturating_add(in_flight)).await?;
            let waiting: Vec<TaskRow> =
                pending.into_iter().filter(|task| !offers.is_offering(task.id)).collect();
            let mut started = 0;
            for task in waiting {
                let variables = match task.variables() {
                    Ok(variables) => variables,
                    Err(error) => {
                        tracing::error!(task_id = %task.id, %error, "pending task cannot be offered");
                        continue;
                    }
                };
                let Some(slave) = self.slaves().reserve_next(&[]) else { return Ok(()) };
                let cluster = self.clone();
                let id = task.id;
                let handle = offers.running.spawn(async move {
                    if let Err(error) = cluster.dispatch_pending(task, variables, slave).await {
                        tracing::error!(task_id = %id, %error, "dispatching a pending task failed");
                    }
                });
                offers.started(handle, id);
                started += 1;
            }
            // Nothing startable in what was read (or nothing to read): wait for a wake.
            if started == 0 {
                return Ok(());
            }
        }
    }

    #[tracing::instrument(name = "dispatch", skip_all, fields(task_id = %task.id, slave = tracing::field::Empty))]
    async fn dispatch_pending(
        &self,
        task: TaskRow,
        variables: Variables,
        slave: Candidate,
    ) -> Result<(), LedgerError> {
        let attempt = task.attempts.max(1);
        let delay_ms = u64::try_from(task.delay_ms).unwrap_or(0);
        let budget = self.config().task_deadline(delay_ms);
        let from = AssignFrom::Pending { attempts: task.attempts };
        let assigned = self.ledger().assign(task.id, from, slave.id, attempt, budget).await;
        if !matches!(assigned, Ok(true)) {
            // Moved on since it was read (cancelled, or another dispatch took it).
            self.slaves().release(slave.id);
            return assigned.map(|_| ());
        }
        self.timers().start(task.id, slave.id, attempt, budget);
        let offer = Offer { task_id: task.id.0, attempt, variables, expression: task.expression, delay_ms };
        match self.offer_in_order(&offer, slave, budget).await? {
            OfferOutcome::AllRefused(last) | OfferOutcome::AllUnreachable(last, _) => {
                self.timers().stop(task.id, last, attempt);
                self.ledger().unassign(task.id, last, attempt, task.attempts).await?;
            }
            OfferOutcome::Taken(_) | OfferOutcome::Gone => {}
        }
        Ok(())
    }
}

/// Why a submission found no slave at all, when that is why (rather than all busy).
fn outcome_reason(outcome: &OfferOutcome) -> Option<String> {
    match outcome {
        OfferOutcome::AllUnreachable(_, why) => Some(why.clone()),
        OfferOutcome::Taken(_) | OfferOutcome::AllRefused(_) | OfferOutcome::Gone => None,
    }
}

/// The dispatcher's offers in flight, by tokio task id, so a finished (or panicked)
/// offer always frees its task for the next round.
#[derive(Default)]
struct OffersInFlight {
    running: JoinSet<()>,
    tasks: HashMap<tokio::task::Id, TaskId>,
    offering: HashSet<TaskId>,
}

impl OffersInFlight {
    fn is_offering(&self, id: TaskId) -> bool {
        self.offering.contains(&id)
    }

    fn started(&mut self, handle: tokio::task::AbortHandle, id: TaskId) {
        self.tasks.insert(handle.id(), id);
        self.offering.insert(id);
    }

    fn finished(&mut self, done: Result<(tokio::task::Id, ()), tokio::task::JoinError>) {
        let id = match done {
            Ok((id, ())) => id,
            Err(error) => {
                tracing::error!(%error, "an offer task panicked");
                error.id()
            }
        };
        if let Some(task) = self.tasks.remove(&id) {
            self.offering.remove(&task);
        }
    }
}
