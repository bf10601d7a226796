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
use futures_util::future::join_all;
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
        // In queue mode a new task never overtakes one already waiting. With a ledger
        // of its own this master knows when tasks may wait (the hint); on a shared one
        // other masters queue tasks too, and the insert below decides it in its statement.
        let shared = self.ledger().is_shared();
        if queue_mode && !shared && self.may_have_pending() && self.ledger().counts().await?.pending > 0 {
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
        let stored = if queue_mode && shared {
            self.ledger().insert_assigned_unless_waiting(&task, (first.id, budget)).await
        } else {
            self.ledger().insert_task(&task, Some((first.id, budget))).await.map(Some)
        };
        let id = match stored {
            Ok(Some(id)) => id,
            Ok(None) => {
                // Tasks were waiting: this one waits behind them.
                self.slaves().release(first.id);
                return self.enqueue(&task).await;
            }
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
                self.making_pending(self.ledger().unassign(id, last, 1, 0)).await?;
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
        let id = self.making_pending(self.ledger().insert_task(task, None)).await?;
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
        let answer = self.calls().offer(&first.name, &first.url, offer).await;
        self.offer_on(offer, first, answer, deadline).await
    }

    /// [`Self::offer_in_order`] once `candidate` has given `answer`.
    async fn offer_on(
        &self,
        offer: &Offer,
        mut candidate: Candidate,
        mut answer: Answer,
        deadline: Duration,
    ) -> Result<OfferOutcome, LedgerError> {
        let id = TaskId(offer.task_id);
        let mut tried = Vec::new();
        // Why each slave tried did not answer; emptied by the first refusal, since then
        // some slave is there and merely busy.
        let mut unanswered = Some(Vec::new());
        loop {
            match answer {
                Answer::Accepted => {
                    tracing::Span::current().record("slave", candidate.name.as_str());
                    self.count_offer("accepted");
                    return Ok(OfferOutcome::Taken(candidate));
                }
                Answer::Refused => {
                    self.count_offer("refused");
                    let hold = self.slaves().release_refused(candidate.id);
                    self.wake_dispatcher_after(hold);
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
            answer = self.calls().offer(&candidate.name, &candidate.url, offer).await;
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

    /// Starts offers for the pending tasks (not already being offered) while slots are
    /// free, reading no more pending rows than there are free slots. The tasks that go
    /// to the same slave (the first in order with room, until the master counts it
    /// full) are offered to it in one request.
    async fn dispatch_round(&self, offers: &mut OffersInFlight) -> Result<(), LedgerError> {
        loop {
            let free = i64::try_from(self.slaves().free_slots()).unwrap_or(i64::MAX);
            // Nothing to start, or nothing pending: every write that makes a task
            // pending marks it (`making_pending`), so a queue last seen empty with
            // no mark since is still empty, and a result's wake costs no read.
            if free == 0 || !self.may_have_pending() {
                return Ok(());
            }
            let in_flight = i64::try_from(offers.offering.len()).unwrap_or(i64::MAX);
            let mark = self.pending_mark();
            let pending =
                self.ledger().oldest_pending(free.min(PENDING_BATCH).saturating_add(in_flight)).await?;
            if pending.is_empty() {
                self.queue_seen_empty(mark);
            }
            let mut groups: Vec<(Candidate, Vec<PendingOffer>)> = Vec::new();
            for task in pending.into_iter().filter(|task| !offers.is_offering(task.id)) {
                let variables = match task.variables() {
                    Ok(variables) => variables,
                    Err(error) => {
                        tracing::error!(task_id = %task.id, %error, "pending task cannot be offered");
                        continue;
                    }
                };
                let Some(slave) = self.slaves().reserve_next(&[]) else { break };
                // One offer at a time to a slave: the next waits for the answer, so no
                // newer task takes a slot an older one was refused a moment before.
                if offers.is_offering_to(slave.id) {
                    self.slaves().release(slave.id);
                    break;
                }
                let offer = PendingOffer::new(task, variables);
                match groups.last_mut() {
                    Some((last, group)) if last.id == slave.id => group.push(offer),
                    _ => groups.push((slave, vec![offer])),
                }
            }
            // Nothing startable in what was read (or nothing to read): wait for a wake.
            if groups.is_empty() {
                return Ok(());
            }
            for (slave, group) in groups {
                let slave_id = slave.id;
                let ids: Vec<TaskId> = group.iter().map(|offer| offer.task_id).collect();
                let cluster = self.clone();
                let handle = offers.running.spawn(async move {
                    if let Err(error) = cluster.dispatch_pending(slave, group).await {
                        tracing::error!(%error, "dispatching pending tasks failed");
                    }
                });
                offers.started(handle, slave_id, ids);
            }
        }
    }

    /// Assigns `group` to `slave` (reserved for each), offers it in one request, and
    /// takes each task the slave had no room for on to the next slaves in order; what
    /// none takes goes back to pending.
    #[tracing::instrument(name = "dispatch", skip_all, fields(tasks = group.len(), slave = %slave.name))]
    async fn dispatch_pending(&self, slave: Candidate, group: Vec<PendingOffer>) -> Result<(), LedgerError> {
        let budgets: Vec<Duration> =
            group.iter().map(|pending| self.config().task_deadline(pending.offer.delay_ms)).collect();
        let assigned = join_all(group.iter().zip(&budgets).map(|(pending, budget)| {
            let from = AssignFrom::Pending { attempts: pending.attempts };
            self.ledger().assign(pending.task_id, from, slave.id, pending.offer.attempt, *budget)
        }))
        .await;
        let mut offered = Vec::with_capacity(group.len());
        let mut first_error = None;
        for ((pending, budget), assigned) in group.into_iter().zip(budgets).zip(assigned) {
            match assigned {
                Ok(true) => {
                    self.timers().start(pending.task_id, slave.id, pending.offer.attempt, budget);
                    offered.push((pending, budget));
                }
                // Moved on since it was read (cancelled, or another dispatch took it).
                Ok(false) => self.slaves().release(slave.id),
                Err(error) => {
                    self.slaves().release(slave.id);
                    first_error.get_or_insert(error);
                }
            }
        }
        let offers: Vec<Offer> = offered.iter().map(|(pending, _)| pending.offer.clone()).collect();
        let answers = self.calls().offer_all(&slave.url, &offers).await;
        let settled =
            join_all(offered.iter().zip(answers).map(|((pending, budget), answer)| {
                self.settle_pending(pending, slave.clone(), answer, *budget)
            }))
            .await;
        match first_error {
            Some(error) => Err(error),
            None => settled.into_iter().collect(),
        }
    }

    /// Follows one pending task's first answer to its end: taken somewhere, or back to
    /// pending when every slave with room refused it.
    async fn settle_pending(
        &self,
        pending: &PendingOffer,
        slave: Candidate,
        answer: Answer,
        budget: Duration,
    ) -> Result<(), LedgerError> {
        let offer = &pending.offer;
        match self.offer_on(offer, slave, answer, budget).await? {
            OfferOutcome::AllRefused(last) | OfferOutcome::AllUnreachable(last, _) => {
                self.timers().stop(pending.task_id, last, offer.attempt);
                let unassign = self.ledger().unassign(pending.task_id, last, offer.attempt, pending.attempts);
                self.making_pending(unassign).await?;
            }
            OfferOutcome::Taken(_) | OfferOutcome::Gone => {}
        }
        Ok(())
    }
}

/// A pending task read for dispatch, with the offer it becomes.
struct PendingOffer {
    task_id: TaskId,
    /// The task's `attempts` as read: the assignment's guard, and what an unassign
    /// restores.
    attempts: i64,
    offer: Offer,
}

impl PendingOffer {
    fn new(task: TaskRow, variables: Variables) -> Self {
        let offer = Offer {
            task_id: task.id.0,
            attempt: task.attempts.max(1),
            delay_ms: u64::try_from(task.delay_ms).unwrap_or(0),
            variables,
            expression: task.expression,
        };
        Self { task_id: task.id, attempts: task.attempts, offer }
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
/// offer always frees its tasks and its slave for the next round.
#[derive(Default)]
struct OffersInFlight {
    running: JoinSet<()>,
    groups: HashMap<tokio::task::Id, (SlaveId, Vec<TaskId>)>,
    offering: HashSet<TaskId>,
}

impl OffersInFlight {
    fn is_offering(&self, id: TaskId) -> bool {
        self.offering.contains(&id)
    }

    fn is_offering_to(&self, slave: SlaveId) -> bool {
        self.groups.values().any(|(to, _)| *to == slave)
    }

    fn started(&mut self, handle: tokio::task::AbortHandle, slave: SlaveId, ids: Vec<TaskId>) {
        self.offering.extend(ids.iter().copied());
        self.groups.insert(handle.id(), (slave, ids));
    }

    fn finished(&mut self, done: Result<(tokio::task::Id, ()), tokio::task::JoinError>) {
        let id = match done {
            Ok((id, ())) => id,
            Err(error) => {
                tracing::error!(%error, "an offer task panicked");
                error.id()
            }
        };
        if let Some((_, tasks)) = self.groups.remove(&id) {
            for task in tasks {
                self.offering.remove(&task);
            }
        }
    }
}
