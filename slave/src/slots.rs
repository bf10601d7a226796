//! The tasks a slave holds: running ones occupy one of `capacity` slots; finished ones
//! stay held (without a slot) until the master has taken their result, so heartbeats
//! keep listing them and a restarted master does not think them lost (SPEC §7).

use std::{
    collections::HashMap,
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What an offer found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// A slot was free and is now this task's; start running it.
    Reserved { running: usize },
    /// The same task and attempt is already held: a retried offer, answered 202 again.
    AlreadyHeld { running: usize },
    /// Every slot is taken (or the slave is stopping).
    Full { running: usize },
}

struct Held {
    attempt: i64,
    running: bool,
    cancel: CancellationToken,
}

/// Held tasks behind a std `Mutex`: every critical section is a few map operations and
/// never awaits, which is what the std lock is for (tokio's docs say the same).
pub struct Slots {
    capacity: usize,
    held: Mutex<HashMap<i64, Held>>,
    /// Set once the master has this slave's registration: before that, a task it
    /// accepted would be requeued by the registration itself ("holds no tasks").
    registered: AtomicBool,
    /// Set at shutdown: no more offers, heartbeats say `draining`.
    stopping: AtomicBool,
    /// Signalled whenever a task stops being held, for shutdown to wait on.
    released: Notify,
}

impl Slots {
    /// Slots for `capacity` tasks at once (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            held: Mutex::new(HashMap::new()),
            registered: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            released: Notify::new(),
        }
    }

    fn held(&self) -> MutexGuard<'_, HashMap<i64, Held>> {
        // A panic while holding this lock cannot leave the map half-updated (single map
        // operations), so a poisoned lock is still safe to use.
        self.held.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Tasks occupying a slot right now.
    pub fn running(&self) -> usize {
        count_running(&self.held())
    }

    /// Whether an offer would be accepted now.
    pub fn is_available(&self) -> bool {
        self.is_accepting() && self.running() < self.capacity
    }

    /// Whether offers are taken: registered and not stopping.
    pub fn is_accepting(&self) -> bool {
        self.registered.load(Ordering::SeqCst) && !self.is_stopping()
    }

    /// Whether shutdown began.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The master has registered this slave: offers may be taken from now on.
    pub fn start_accepting(&self) {
        self.registered.store(true, Ordering::SeqCst);
    }

    /// Refuses every later offer (graceful shutdown).
    pub fn stop_accepting(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Reserves a slot for `task_id` at `attempt`; the returned token cancels its run.
    pub fn reserve(&self, task_id: i64, attempt: i64) -> (Reservation, CancellationToken) {
        let mut held = self.held();
        let running = count_running(&held);
        if let Some(existing) = held.get(&task_id)
            && existing.attempt == attempt
        {
            return (Reservation::AlreadyHeld { running }, existing.cancel.clone());
        }
        if !self.is_accepting() || running >= self.capacity {
            return (Reservation::Full { running }, CancellationToken::new());
        }
        let cancel = CancellationToken::new();
        // The master re-offered this task under a new attempt: the old run is void.
        if let Some(old) = held.insert(task_id, Held { attempt, running: true, cancel: cancel.clone() }) {
            old.cancel.cancel();
        }
        (Reservation::Reserved { running: running + 1 }, cancel)
    }

    /// The task's evaluation ended: its slot is free, the task stays held until reported.
    pub fn finish_running(&self, task_id: i64, attempt: i64) {
        if let Some(held) = self.held().get_mut(&task_id).filter(|h| h.attempt == attempt) {
            held.running = false;
        }
    }

    /// The master has the result, or no longer wants it: forget the task.
    pub fn release(&self, task_id: i64, attempt: i64) {
        let mut held = self.held();
        if held.get(&task_id).is_some_and(|h| h.attempt == attempt) {
            held.remove(&task_id);
            self.released.notify_waiters();
        }
    }

    /// The master cancelled the task (or gave up on this attempt): stop its run and
    /// forget it. With `attempt`, only that attempt is dropped, so a late drop of an
    /// old attempt cannot stop a new offer of the same task. False if not held.
    pub fn drop_task(&self, task_id: i64, attempt: Option<i64>) -> bool {
        let mut held = self.held();
        let matches = held.get(&task_id).is_some_and(|h| attempt.is_none_or(|a| a == h.attempt));
        let removed = if matches { held.remove(&task_id) } else { None };
        if let Some(held) = &removed {
            held.cancel.cancel();
            self.released.notify_waiters();
        }
        removed.is_some()
    }

    /// Every held task id, for heartbeats.
    pub fn held_ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.held().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Waits until no task is held.
    pub async fn wait_until_empty(&self) {
        loop {
            let released = self.released.notified();
            if self.held().is_empty() {
                return;
            }
            released.await;
        }
    }

    /// Cancels every run (shutdown grace is over: these tasks are handed back).
    pub fn abandon_all(&self) -> Vec<i64> {
        let mut held = self.held();
        let ids = held.keys().copied().collect();
        for (_, task) in held.drain() {
            task.cancel.cancel();
        }
        self.released.notify_waiters();
        ids
    }
}

fn count_running(held: &HashMap<i64, Held>) -> usize {
    held.values().filter(|h| h.running).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepting(capacity: usize) -> Slots {
        let slots = Slots::new(capacity);
        slots.start_accepting();
        slots
    }

    #[test]
    fn offers_are_refused_until_the_master_has_the_registration() {
        let slots = Slots::new(1);
        assert_eq!(slots.reserve(1, 1).0, Reservation::Full { running: 0 });
        slots.start_accepting();
        assert_eq!(slots.reserve(1, 1).0, Reservation::Reserved { running: 1 });
    }

    #[test]
    fn a_drop_for_an_old_attempt_leaves_the_new_one_running() {
        let slots = accepting(1);
        let (_, cancel) = slots.reserve(7, 2);
        assert!(!slots.drop_task(7, Some(1)));
        assert!(!cancel.is_cancelled());
        assert!(slots.drop_task(7, Some(2)));
        assert!(cancel.is_cancelled());
    }

    #[test]
    fn reserves_up_to_capacity_then_refuses() {
        let slots = accepting(2);
        assert_eq!(slots.reserve(1, 1).0, Reservation::Reserved { running: 1 });
        assert_eq!(slots.reserve(2, 1).0, Reservation::Reserved { running: 2 });
        assert_eq!(slots.reserve(3, 1).0, Reservation::Full { running: 2 });
    }

    #[test]
    fn a_retried_offer_is_answered_without_taking_another_slot() {
        let slots = accepting(1);
        slots.reserve(7, 1);
        assert_eq!(slots.reserve(7, 1).0, Reservation::AlreadyHeld { running: 1 });
    }

    #[test]
    fn a_finished_task_frees_its_slot_but_stays_held_until_released() {
        let slots = accepting(1);
        slots.reserve(1, 1);
        slots.finish_running(1, 1);
        assert_eq!(slots.reserve(2, 1).0, Reservation::Reserved { running: 1 });
        assert_eq!(slots.held_ids(), vec![1, 2]);
        slots.release(1, 1);
        assert_eq!(slots.held_ids(), vec![2]);
    }

    #[test]
    fn dropping_a_task_cancels_its_run() {
        let slots = accepting(1);
        let (_, cancel) = slots.reserve(1, 1);
        assert!(slots.drop_task(1, None));
        assert!(cancel.is_cancelled());
        assert!(!slots.drop_task(1, None));
    }

    #[test]
    fn a_stopping_slave_refuses_offers() {
        let slots = accepting(1);
        slots.stop_accepting();
        assert_eq!(slots.reserve(1, 1).0, Reservation::Full { running: 0 });
    }
}
