//! The timers that decide a task's fate, on monotonic time (SPEC §7, §8): each
//! in-progress task's deadline, and when it was offered (the heartbeat grace for offers
//! still in flight). A wall-clock jump, forward or back, changes neither: they are
//! `Instant`s, never compared with the stored RFC 3339 timestamps, which are for people.
//!
//! The ledger stays the truth about who holds a task; a timer only says when to ask it.
//! Every requeue it triggers is a guarded write on (status, slave, attempt), so a timer
//! left over from an older attempt changes nothing.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

// tokio's clock, so the reaper's timing is testable on a paused clock.
use tokio::time::Instant;

use crate::model::{SlaveId, TaskId};

/// One in-progress attempt as the timers know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    pub task: TaskId,
    pub slave: SlaveId,
    pub attempt: i64,
}

#[derive(Debug, Clone, Copy)]
struct Timer {
    slave: SlaveId,
    attempt: i64,
    offered: Instant,
    deadline: Instant,
}

/// Timers of every in-progress task. A std `Mutex`: sections are map operations.
#[derive(Default)]
pub struct TaskTimers(Mutex<HashMap<TaskId, Timer>>);

impl TaskTimers {
    fn timers(&self) -> MutexGuard<'_, HashMap<TaskId, Timer>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `task` was offered to `slave` under `attempt` now and has `budget` to finish.
    pub fn start(&self, task: TaskId, slave: SlaveId, attempt: i64, budget: Duration) {
        let offered = Instant::now();
        let deadline = offered.checked_add(budget).unwrap_or_else(far_future);
        self.timers().insert(task, Timer { slave, attempt, offered, deadline });
    }

    /// `task` left `slave`'s `attempt` (result, requeue, cancel, refusal): its timer
    /// stops, unless a newer offer of the task already replaced it. The time since the
    /// offer, when this stopped it.
    pub fn stop(&self, task: TaskId, slave: SlaveId, attempt: i64) -> Option<Duration> {
        let mut timers = self.timers();
        if timers.get(&task).is_some_and(|timer| timer.slave == slave && timer.attempt == attempt) {
            return timers.remove(&task).map(|timer| timer.offered.elapsed());
        }
        None
    }

    /// Whether `task` was offered less than `grace` ago (so a heartbeat that does not
    /// list it yet may have been taken before the offer landed); `None` if this master
    /// has no timer for it (another master on a shared ledger offered it).
    pub fn offered_within(&self, task: TaskId, grace: Duration) -> Option<bool> {
        self.timers().get(&task).map(|timer| timer.offered.elapsed() < grace)
    }

    /// Whether this master keeps a deadline for `task`.
    pub fn knows(&self, task: TaskId) -> bool {
        self.timers().contains_key(&task)
    }

    /// Every attempt whose deadline has passed.
    pub fn overdue(&self) -> Vec<Attempt> {
        let now = Instant::now();
        let mut overdue: Vec<Attempt> = self
            .timers()
            .iter()
            .filter(|(_, timer)| timer.deadline <= now)
            .map(|(task, timer)| Attempt { task: *task, slave: timer.slave, attempt: timer.attempt })
            .collect();
        overdue.sort_by_key(|attempt| attempt.task);
        overdue
    }
}

/// A deadline that never comes (a budget too large for `Instant`).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_deadline_passes_on_monotonic_time_only() {
        let timers = TaskTimers::default();
        timers.start(TaskId(1), SlaveId(1), 1, Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(timers.overdue().is_empty());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(timers.overdue(), vec![Attempt { task: TaskId(1), slave: SlaveId(1), attempt: 1 }]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_stop_leaves_the_newer_attempt_running() {
        let timers = TaskTimers::default();
        timers.start(TaskId(1), SlaveId(1), 1, Duration::from_secs(5));
        timers.start(TaskId(1), SlaveId(2), 2, Duration::from_secs(5));
        timers.stop(TaskId(1), SlaveId(1), 1);
        assert_eq!(timers.offered_within(TaskId(1), Duration::from_secs(1)), Some(true));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(timers.offered_within(TaskId(1), Duration::from_secs(1)), Some(false));
        timers.stop(TaskId(1), SlaveId(2), 2);
        assert_eq!(timers.offered_within(TaskId(1), Duration::from_secs(1)), None);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(timers.overdue().is_empty());
    }
}
