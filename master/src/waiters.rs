//! Long-poll waiters (`GET /tasks/{id}?wait=`): who waits for which task to finish.
//! Each waiter subscribes before it reads the task, so a finish between the read and
//! the wait is never missed; a finished task wakes all of its waiters at once.

use std::{collections::HashMap, sync::Mutex};

use tokio::sync::oneshot;

use crate::model::TaskId;

/// Long-poll waiters per task. A std `Mutex`: sections are map operations, never awaits.
#[derive(Default)]
pub(crate) struct Waiters(Mutex<HashMap<TaskId, Vec<oneshot::Sender<()>>>>);

impl Waiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, Vec<oneshot::Sender<()>>>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn subscribe(&self, id: TaskId) -> oneshot::Receiver<()> {
        let (sender, receiver) = oneshot::channel();
        self.lock().entry(id).or_default().push(sender);
        receiver
    }

    pub(crate) fn notify(&self, id: TaskId) {
        let senders = self.lock().remove(&id);
        for sender in senders.into_iter().flatten() {
            let _ = sender.send(()); // a waiter that gave up is fine
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
