//! The slave registry: the master's in-memory view of its slaves in registration
//! order, with the free capacity of each, so dispatch never waits on a slave it
//! already knows is full (SPEC §5). The ledger's `slaves` table is the durable copy;
//! this view is rebuilt from it at start.

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

// tokio's clock, so the reaper's timing is testable on a paused clock.
use tokio::time::Instant;

use serde::Serialize;

use crate::{
    ledger::{SlaveLoad, SlaveRow},
    model::{SlaveId, SlaveState, Timestamp},
};

/// A slave as dispatch sees it.
#[derive(Debug, Clone)]
struct Entry {
    id: SlaveId,
    name: String,
    url: String,
    capacity: usize,
    /// Offers accepted (or being made) and not yet finished, as the master counts them.
    running: usize,
    position: i64,
    state: SlaveState,
    registered_at: Timestamp,
    last_seen_at: Timestamp,
    last_seen: Instant,
    /// Skipped by dispatch until its next heartbeat: an offer went unanswered.
    suspect: bool,
    /// Skipped by dispatch until then, a slot of it frees, or it heartbeats: it refused
    /// an offer the view thought it had room for (it holds work the master does not
    /// know of, or a result the master recorded but the slave has not heard so yet).
    refused_until: Option<Instant>,
    /// Refusals since a slot of it last freed: each doubles the hold.
    refusals: u32,
    /// The process run that registered it last.
    instance: Option<String>,
}

/// A slave picked for one offer, with a slot reserved for it in the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: SlaveId,
    pub name: String,
    pub url: String,
}

/// A slave as `GET /slaves` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SlaveView {
    pub id: SlaveId,
    pub name: String,
    pub url: String,
    pub capacity: usize,
    pub running: usize,
    pub state: SlaveState,
    pub position: i64,
    pub registered_at: Timestamp,
    pub last_seen_at: Timestamp,
    pub suspect: bool,
}

/// The holder of a name, for the one-process-per-name check at registration (SPEC §8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameHolder {
    pub url: String,
    pub state: SlaveState,
    pub instance: Option<String>,
}

/// What a heartbeat found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touch {
    /// Taken: the slave is up (or draining), seen now (the caller stores when, by the
    /// ledger's clock: [`SlaveRegistry::seen_at`]).
    Taken(Liveness),
    /// The master does not know this slave id.
    Unknown,
    /// Another process registered under this slave's name since this one did.
    Superseded,
}

/// What a heartbeat changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// The slave was up and stays up.
    StillUp,
    /// The slave was down (or suspect) and is up again.
    CameBack,
}

/// A row's capacity as dispatch counts it (at least one slot).
fn capacity_of(row: &SlaveRow) -> usize {
    usize::try_from(row.capacity).unwrap_or(1).max(1)
}

/// How long a slave that refused an offer is skipped. The master frees its count of a
/// slot when it records the result, a moment before the slave hears so and frees the
/// slot itself; an offer in that moment is refused though the slot is about to be
/// free. Short, so such a slave is asked again soon (the dispatcher is woken then).
pub const REFUSAL_HOLD: Duration = Duration::from_millis(20);
/// The longest hold: a slave that keeps refusing (it holds work the master does not
/// know of) is asked about once a second, not in a loop.
pub const MAX_REFUSAL_HOLD: Duration = Duration::from_secs(1);

impl Entry {
    /// Up, answering, and not skipped after a refusal.
    fn takes_offers(&self, now: Instant) -> bool {
        self.state == SlaveState::Up && !self.suspect && self.refused_until.is_none_or(|until| now >= until)
    }
}

/// A slave fresh from its row, with nothing running, seen now.
fn entry_of(row: &SlaveRow) -> Entry {
    Entry {
        id: row.id,
        name: row.name.clone(),
        url: row.url.clone(),
        capacity: capacity_of(row),
        running: 0,
        position: row.position,
        state: row.state,
        registered_at: row.registered_at.clone(),
        last_seen_at: row.last_seen_at.clone(),
        last_seen: Instant::now(),
        suspect: false,
        refused_until: None,
        refusals: 0,
        instance: row.instance.clone(),
    }
}

/// Shared registry; cheap to clone. A std `Mutex`: every section is a short scan of a
/// handful of slaves and never awaits.
#[derive(Clone, Default)]
pub struct SlaveRegistry {
    slaves: Arc<Mutex<Vec<Entry>>>,
}

impl SlaveRegistry {
    fn slaves(&self) -> MutexGuard<'_, Vec<Entry>> {
        // Sections never leave an entry half-updated, so a poisoned lock is still usable.
        self.slaves.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds or updates a slave from its stored row; `running` is how many tasks the
    /// ledger has in progress on it. Keeps the list in position order.
    pub fn upsert(&self, row: &SlaveRow, running: usize) {
        let mut slaves = self.slaves();
        let entry = Entry { running, ..entry_of(row) };
        match slaves.iter_mut().find(|e| e.id == row.id) {
            Some(existing) => *existing = entry,
            None => slaves.push(entry),
        }
        slaves.sort_by_key(|e| e.position);
    }

    /// Catches up with what other masters on a shared ledger wrote (SPEC §11): slaves
    /// registered or deregistered through them, heartbeats they took (the slave counts
    /// as seen now, on this master's monotonic clock), `down` they wrote, and the tasks
    /// in progress on each slave (whoever offered them). `running` is a hint either way:
    /// the slave's own reservation decides. True if some slave may have room it had not.
    pub fn follow(&self, rows: &[SlaveRow], loads: &[SlaveLoad]) -> bool {
        let mut slaves = self.slaves();
        slaves.retain(|entry| rows.iter().any(|row| row.id == entry.id));
        let mut freed = false;
        for row in rows {
            let running = loads
                .iter()
                .find(|load| load.slave_id == row.id)
                .map_or(0, |load| usize::try_from(load.running).unwrap_or(0));
            let Some(entry) = slaves.iter_mut().find(|e| e.id == row.id) else {
                freed = true;
                slaves.push(Entry { running, ..entry_of(row) });
                continue;
            };
            freed |= running < entry.running;
            entry.running = running;
            entry.capacity = capacity_of(row);
            entry.url.clone_from(&row.url);
            entry.instance.clone_from(&row.instance);
            // Newer news of the slave than this master has: someone heard from it (or
            // it registered again). The same news with `down`: another reaper judged it
            // on the same silence. Anything else is a read that raced this master's own
            // write of newer news, and is left alone.
            if row.last_seen_at > entry.last_seen_at {
                if row.state != SlaveState::Down {
                    entry.last_seen = Instant::now();
                    entry.suspect = false;
                    entry.refused_until = None;
                    freed = true;
                }
                entry.state = row.state;
                entry.last_seen_at = row.last_seen_at.clone();
            } else if row.last_seen_at == entry.last_seen_at && row.state == SlaveState::Down {
                entry.state = SlaveState::Down;
            }
        }
        slaves.sort_by_key(|e| e.position);
        freed
    }

    /// Forgets a slave.
    pub fn remove(&self, id: SlaveId) -> bool {
        let mut slaves = self.slaves();
        let before = slaves.len();
        slaves.retain(|e| e.id != id);
        slaves.len() != before
    }

    /// Whether any slave is registered and not down.
    pub fn has_live_slaves(&self) -> bool {
        self.slaves().iter().any(|e| e.state == SlaveState::Up)
    }

    /// Whether any slave is up and answered its last offer (not suspect).
    pub fn has_reachable_slaves(&self) -> bool {
        self.slaves().iter().any(|e| e.state == SlaveState::Up && !e.suspect)
    }

    /// Reserves a slot on the first slave in position order that is up, not suspect,
    /// not in `skip`, and has room as far as the master knows.
    pub fn reserve_next(&self, skip: &[SlaveId]) -> Option<Candidate> {
        let now = Instant::now();
        let mut slaves = self.slaves();
        let entry = slaves
            .iter_mut()
            .find(|e| e.takes_offers(now) && e.running < e.capacity && !skip.contains(&e.id))?;
        entry.running += 1;
        Some(Candidate { id: entry.id, name: entry.name.clone(), url: entry.url.clone() })
    }

    /// Slots free on slaves that take offers now, as far as the master knows.
    pub fn free_slots(&self) -> usize {
        let now = Instant::now();
        self.slaves()
            .iter()
            .filter(|e| e.takes_offers(now))
            .map(|e| e.capacity.saturating_sub(e.running))
            .sum()
    }

    /// Frees a slot: the offer was refused, or the task finished or left the slave.
    pub fn release(&self, id: SlaveId) {
        if let Some(entry) = self.slaves().iter_mut().find(|e| e.id == id) {
            entry.running = entry.running.saturating_sub(1);
            entry.refused_until = None;
            entry.refusals = 0;
        }
    }

    /// The slave refused an offer: frees the reserved slot and skips the slave until one
    /// of its tasks finishes, it heartbeats, or the hold ends: [`REFUSAL_HOLD`], doubled
    /// for each refusal since a slot of it last freed, up to [`MAX_REFUSAL_HOLD`].
    /// Returns the hold.
    pub fn release_refused(&self, id: SlaveId) -> Duration {
        let mut slaves = self.slaves();
        let Some(entry) = slaves.iter_mut().find(|e| e.id == id) else { return REFUSAL_HOLD };
        entry.running = entry.running.saturating_sub(1);
        let hold = REFUSAL_HOLD.saturating_mul(1 << entry.refusals.min(10)).min(MAX_REFUSAL_HOLD);
        entry.refusals = entry.refusals.saturating_add(1);
        entry.refused_until = Some(Instant::now() + hold);
        hold
    }

    /// An offer to this slave went unanswered: skip it until it heartbeats.
    pub fn mark_suspect(&self, id: SlaveId) {
        if let Some(entry) = self.slaves().iter_mut().find(|e| e.id == id) {
            entry.suspect = true;
        }
    }

    /// A heartbeat arrived from `instance`: the slave is up (or draining, if it said so)
    /// and no longer suspect, unless another instance holds its name now.
    pub fn touch(&self, id: SlaveId, draining: bool, instance: Option<&str>) -> Touch {
        let mut slaves = self.slaves();
        let Some(entry) = slaves.iter_mut().find(|e| e.id == id) else { return Touch::Unknown };
        if let (Some(holder), Some(sender)) = (entry.instance.as_deref(), instance)
            && holder != sender
        {
            return Touch::Superseded;
        }
        let came_back = !draining && (entry.state != SlaveState::Up || entry.suspect);
        entry.state = if draining { SlaveState::Draining } else { SlaveState::Up };
        entry.suspect = false;
        entry.refused_until = None;
        entry.last_seen = Instant::now();
        let liveness = if came_back { Liveness::CameBack } else { Liveness::StillUp };
        Touch::Taken(liveness)
    }

    /// The ledger stored `at` as the slave's `last_seen_at` (its clock is the one every
    /// master compares by).
    pub fn seen_at(&self, id: SlaveId, at: Timestamp) {
        if let Some(entry) = self.slaves().iter_mut().find(|e| e.id == id) {
            entry.last_seen_at = at;
        }
    }

    /// Who holds `name` now, if anyone.
    pub fn holder_of(&self, name: &str) -> Option<NameHolder> {
        self.slaves().iter().find(|e| e.name == name).map(|e| NameHolder {
            url: e.url.clone(),
            state: e.state,
            instance: e.instance.clone(),
        })
    }

    /// Marks `down` every up or draining slave silent for longer than `timeout`; returns them.
    pub fn mark_silent_down(&self, timeout: Duration) -> Vec<(SlaveId, String)> {
        let mut slaves = self.slaves();
        let now = Instant::now();
        slaves
            .iter_mut()
            .filter(|e| e.state != SlaveState::Down && now.duration_since(e.last_seen) > timeout)
            .map(|e| {
                e.state = SlaveState::Down;
                (e.id, e.name.clone())
            })
            .collect()
    }

    /// Name and URL of a slave.
    pub fn address(&self, id: SlaveId) -> Option<(String, String)> {
        self.slaves().iter().find(|e| e.id == id).map(|e| (e.name.clone(), e.url.clone()))
    }

    /// Every slave in registration order.
    pub fn views(&self) -> Vec<SlaveView> {
        self.slaves()
            .iter()
            .map(|e| SlaveView {
                id: e.id,
                name: e.name.clone(),
                url: e.url.clone(),
                capacity: e.capacity,
                running: e.running,
                state: e.state,
                position: e.position,
                registered_at: e.registered_at.clone(),
                last_seen_at: e.last_seen_at.clone(),
                suspect: e.suspect,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, name: &str, capacity: i64, position: i64) -> SlaveRow {
        SlaveRow {
            id: SlaveId(id),
            name: name.into(),
            url: format!("http://127.0.0.1:{}", 9000 + id),
            capacity,
            position,
            state: SlaveState::Up,
            registered_at: Timestamp::now(),
            last_seen_at: Timestamp::now(),
            instance: Some(format!("run-{id}")),
        }
    }

    fn liveness(touch: Touch) -> Liveness {
        match touch {
            Touch::Taken(liveness) => liveness,
            other => panic!("heartbeat not taken: {other:?}"),
        }
    }

    #[test]
    fn reserves_in_position_order_until_every_slot_is_taken() {
        let registry = SlaveRegistry::default();
        registry.upsert(&row(2, "slave-2", 1, 2), 0);
        registry.upsert(&row(1, "slave-1", 1, 1), 0);
        assert_eq!(registry.reserve_next(&[]).unwrap().name, "slave-1");
        assert_eq!(registry.reserve_next(&[]).unwrap().name, "slave-2");
        assert_eq!(registry.reserve_next(&[]), None);
        registry.release(SlaveId(1));
        assert_eq!(registry.reserve_next(&[]).unwrap().name, "slave-1");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusing_slave_is_skipped_for_a_hold_that_doubles_until_a_slot_frees() {
        let registry = SlaveRegistry::default();
        registry.upsert(&row(1, "slave-1", 2, 1), 0);
        registry.upsert(&row(2, "slave-2", 2, 2), 0);
        let first = registry.reserve_next(&[]).unwrap();
        assert_eq!(registry.release_refused(first.id), REFUSAL_HOLD);
        assert_eq!(registry.reserve_next(&[]).unwrap().name, "slave-2", "held after a refusal");
        tokio::time::advance(REFUSAL_HOLD).await;
        let again = registry.reserve_next(&[]).unwrap();
        assert_eq!(again.name, "slave-1", "asked again once the hold ended");
        assert_eq!(
            registry.release_refused(again.id),
            REFUSAL_HOLD * 2,
            "a second refusal holds twice as long"
        );
        tokio::time::advance(REFUSAL_HOLD).await;
        assert_eq!(registry.reserve_next(&[]).unwrap().name, "slave-2");
        // A slot of it freed (its earlier task finished): asked at once, and the hold
        // starts over.
        registry.release(SlaveId(1));
        let freed = registry.reserve_next(&[]).unwrap();
        assert_eq!(freed.name, "slave-1");
        assert_eq!(registry.release_refused(freed.id), REFUSAL_HOLD);
        for _ in 0..20 {
            registry.release_refused(SlaveId(1));
        }
        assert_eq!(registry.release_refused(SlaveId(1)), MAX_REFUSAL_HOLD);
    }

    #[test]
    fn skips_suspect_and_skipped_slaves() {
        let registry = SlaveRegistry::default();
        registry.upsert(&row(1, "slave-1", 5, 1), 0);
        registry.upsert(&row(2, "slave-2", 5, 2), 0);
        registry.mark_suspect(SlaveId(1));
        assert_eq!(registry.reserve_next(&[]).unwrap().name, "slave-2");
        assert_eq!(registry.reserve_next(&[SlaveId(2)]), None);
        assert_eq!(liveness(registry.touch(SlaveId(1), false, None)), Liveness::CameBack);
        assert_eq!(registry.reserve_next(&[]).unwrap().name, "slave-1");
    }

    #[test]
    fn re_registration_keeps_the_position() {
        let registry = SlaveRegistry::default();
        registry.upsert(&row(1, "slave-1", 1, 1), 0);
        registry.upsert(&row(2, "slave-2", 1, 2), 0);
        registry.upsert(&row(1, "slave-1", 3, 1), 0);
        let names: Vec<_> = registry.views().into_iter().map(|v| (v.name, v.capacity)).collect();
        assert_eq!(names, vec![("slave-1".to_owned(), 3), ("slave-2".to_owned(), 1)]);
    }

    #[test]
    fn a_draining_slave_gets_no_offers() {
        let registry = SlaveRegistry::default();
        registry.upsert(&row(1, "slave-1", 1, 1), 0);
        assert_eq!(liveness(registry.touch(SlaveId(1), true, Some("run-1"))), Liveness::StillUp);
        assert_eq!(registry.views()[0].state, SlaveState::Draining);
        assert_eq!(registry.reserve_next(&[]), None);
    }

    #[test]
    fn a_heartbeat_from_a_superseded_process_is_refused() {
        let registry = SlaveRegistry::default();
        registry.upsert(&row(1, "slave-1", 1, 1), 0);
        assert_eq!(registry.touch(SlaveId(1), false, Some("an-older-run")), Touch::Superseded);
        assert!(matches!(registry.touch(SlaveId(1), false, Some("run-1")), Touch::Taken(..)));
        assert_eq!(registry.touch(SlaveId(9), false, None), Touch::Unknown);
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_and_loads_written_by_another_master_are_followed() {
        let registry = SlaveRegistry::default();
        let mut one = row(1, "slave-1", 2, 1);
        registry.upsert(&one, 2);
        assert_eq!(registry.reserve_next(&[]), None, "full as far as this master knows");
        tokio::time::advance(Duration::from_secs(8)).await;
        one.last_seen_at = Timestamp::in_future(Duration::from_secs(1));
        let loads = [SlaveLoad { slave_id: SlaveId(1), running: 1 }];
        assert!(registry.follow(&[one.clone(), row(2, "slave-2", 1, 2)], &loads), "a slot freed elsewhere");
        tokio::time::advance(Duration::from_secs(8)).await;
        assert!(registry.mark_silent_down(Duration::from_secs(10)).is_empty(), "seen through another master");
        assert_eq!(registry.reserve_next(&[]).unwrap().name, "slave-1");
        assert_eq!(registry.reserve_next(&[]).unwrap().name, "slave-2", "registered through another master");
        one.state = SlaveState::Up;
        let stale = SlaveRow { last_seen_at: Timestamp::now(), ..one.clone() };
        registry.follow(&[stale], &[]);
        assert_eq!(registry.views()[0].last_seen_at, one.last_seen_at, "an older row changes nothing");
        one.state = SlaveState::Down;
        registry.follow(&[one], &[]);
        let states: Vec<_> = registry.views().into_iter().map(|v| (v.name, v.state)).collect();
        assert_eq!(states, [("slave-1".to_owned(), SlaveState::Down)], "slave-2 deregistered elsewhere");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slave_silent_past_the_timeout_is_marked_down() {
        let registry = SlaveRegistry::default();
        registry.upsert(&row(1, "slave-1", 1, 1), 0);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(registry.mark_silent_down(Duration::from_secs(10)).is_empty());
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(registry.mark_silent_down(Duration::from_secs(10)).len(), 1);
        assert_eq!(registry.views()[0].state, SlaveState::Down);
        assert_eq!(registry.reserve_next(&[]), None);
    }
}
