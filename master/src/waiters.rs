//! Long-poll waiters (`GET /tasks/{id}?wait=`): who waits for which task to finish.
//! Each waiter subscribes before it reads the task, so a finish between the read and
//! the wait is never missed; a finished task wakes all of its waiters at once.
//!
//! A result recorded by this master wakes its waiters with the end it stored, so a
//! waiter that holds the row of that same attempt answers without reading the task
//! again: one read fewer on every round trip's critical path.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::oneshot;

use crate::{
    ledger::TaskRow,
    model::{SlaveId, TaskId, TaskStatus, Timestamp},
};

/// A task's end as this master recorded it: what the result statement wrote.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RecordedEnd {
    pub slave: SlaveId,
    pub attempt: i64,
    pub status: TaskStatus,
    pub result: Option<f64>,
    pub error: Option<String>,
    pub finished_at: Timestamp,
}

impl RecordedEnd {
    /// `row` as it reads after this end, if `row` is the in-progress row of the attempt
    /// that ended (anything else — another attempt, a row read after the end — is read
    /// again instead). The result statement changes exactly these columns.
    pub(crate) fn applied_to(&self, row: &TaskRow) -> Option<TaskRow> {
        let same_attempt = row.status == TaskStatus::InProgress
            && row.slave_id == Some(self.slave)
            && row.attempts == self.attempt;
        same_attempt.then(|| TaskRow {
            status: self.status,
            result: self.result,
            error: self.error.clone(),
            finished_at: Some(self.finished_at.clone()),
            ..row.clone()
        })
    }
}

/// What wakes a waiter: the recorded end when this master recorded it, `None` when the
/// task ended otherwise (cancelled, failed on a requeue, ended by another master).
pub(crate) type Wake = Option<Arc<RecordedEnd>>;

type Senders = HashMap<TaskId, Vec<oneshot::Sender<Wake>>>;

/// Long-poll waiters per task. A std `Mutex`: sections are map operations, never awaits.
#[derive(Default)]
pub(crate) struct Waiters(Mutex<Senders>);

impl Waiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, Senders> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn subscribe(&self, id: TaskId) -> oneshot::Receiver<Wake> {
        let (sender, receiver) = oneshot::channel();
        self.lock().entry(id).or_default().push(sender);
        receiver
    }

    pub(crate) fn notify(&self, id: TaskId, end: Option<RecordedEnd>) {
        let Some(senders) = self.lock().remove(&id) else { return };
        let end = end.map(Arc::new);
        for sender in senders {
            let _ = sender.send(end.clone()); // a waiter that gave up is fine
        }
    }

    /// Drops the senders of waiters that gave up (timed out or hung up).
    pub(crate) fn forget_closed(&self, id: TaskId) {
        let mut waiters = self.lock();
        if let Some(senders) = waiters.get_mut(&id) {
            senders.retain(|sender| !sender.is_closed());
            if senders.is_empty() {
                waiters.remove(&id);
            }
        }
    }
}
