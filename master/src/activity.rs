//! What the dashboard's live charts draw (SPEC §9): tasks finished per second and the
//! offer→result round trip of each, for the last five minutes, kept in memory on the
//! monotonic clock. A restarted master starts empty (and `uptime_s` says since when).

use std::{
    collections::VecDeque,
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::Serialize;
use utoipa::ToSchema;

/// Seconds the charts cover.
pub const WINDOW_SECONDS: u64 = 300;
/// Round trips kept per second for its percentiles: a bounded sample under any load.
const SAMPLES_PER_SECOND: usize = 512;

/// The ring of the last [`WINDOW_SECONDS`] seconds.
pub struct Activity {
    started: Instant,
    seconds: Mutex<VecDeque<Second>>,
}

struct Second {
    /// Seconds since `started`.
    index: u64,
    finished: u32,
    /// The sample of the second still running; emptied once its percentiles are taken.
    round_trips_ms: Vec<f64>,
    /// (p50, p99) of a second that is over, computed once when the next one began.
    closed: Option<(Option<f64>, Option<f64>)>,
}

impl Second {
    fn percentiles(&self) -> (Option<f64>, Option<f64>) {
        if let Some(closed) = self.closed {
            return closed;
        }
        let mut sorted = self.round_trips_ms.clone();
        sorted.sort_by(f64::total_cmp);
        (nearest_rank(&sorted, 0.50), nearest_rank(&sorted, 0.99))
    }

    /// The second is over: keep its percentiles, free its sample.
    fn close(&mut self) {
        self.closed = Some(self.percentiles());
        self.round_trips_ms = Vec::new();
    }
}

/// One second of the window, as `GET /activity` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct SecondView {
    /// How long ago this second ended, 0 for the current one.
    pub ago_s: u64,
    /// Tasks that became final in it (done, failed or cancelled).
    pub finished: u32,
    /// Offer→result round trip of the results recorded in it, median and 99th
    /// percentile (nearest rank); absent without a result.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// `GET /activity` answer.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ActivityView {
    /// Seconds the window covers.
    pub window_s: u64,
    /// Seconds since this master started: the charts hold nothing older.
    pub uptime_s: f64,
    /// The seconds with something in them, oldest first.
    pub seconds: Vec<SecondView>,
}

impl Default for Activity {
    fn default() -> Self {
        Self { started: Instant::now(), seconds: Mutex::new(VecDeque::new()) }
    }
}

impl Activity {
    /// A task became final; `round_trip` is its offer→result time when a slave's result did it.
    pub fn finished(&self, round_trip: Option<Duration>) {
        let index = self.started.elapsed().as_secs();
        let mut seconds = self.seconds.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if seconds.back().is_none_or(|last| last.index != index) {
            if let Some(last) = seconds.back_mut() {
                last.close();
            }
            seconds.push_back(Second { index, finished: 0, round_trips_ms: Vec::new(), closed: None });
        }
        while seconds.front().is_some_and(|first| first.index + WINDOW_SECONDS <= index) {
            seconds.pop_front();
        }
        let Some(current) = seconds.back_mut() else { return };
        current.finished = current.finished.saturating_add(1);
        if let Some(round_trip) = round_trip
            && current.round_trips_ms.len() < SAMPLES_PER_SECOND
        {
            current.round_trips_ms.push(round_trip.as_secs_f64() * 1000.0);
        }
    }

    /// The window as it is now.
    pub fn view(&self) -> ActivityView {
        let elapsed = self.started.elapsed();
        let now = elapsed.as_secs();
        let seconds = self.seconds.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let seconds = seconds
            .iter()
            .filter(|second| second.index + WINDOW_SECONDS > now)
            .map(|second| {
                let (p50_ms, p99_ms) = second.percentiles();
                SecondView { ago_s: now - second.index, finished: second.finished, p50_ms, p99_ms }
            })
            .collect();
        ActivityView { window_s: WINDOW_SECONDS, uptime_s: elapsed.as_secs_f64(), seconds }
    }
}

fn nearest_rank(sorted: &[f64], quantile: f64) -> Option<f64> {
    let rank = (quantile * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.max(1) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_tasks_and_their_round_trips_are_counted_in_the_current_second() {
        let activity = Activity::default();
        for ms in [1, 2, 3, 100] {
            activity.finished(Some(Duration::from_millis(ms)));
        }
        activity.finished(None);
        let view = activity.view();
        assert_eq!(view.window_s, WINDOW_SECONDS);
        let total: u32 = view.seconds.iter().map(|second| second.finished).sum();
        assert_eq!(total, 5);
        let last = view.seconds.last().expect("a second");
        assert!(last.p50_ms.is_some_and(|p50| p50 <= 3.0) && last.p99_ms == Some(100.0), "{last:?}");
    }

    #[test]
    fn a_closed_second_keeps_its_percentiles_and_frees_its_sample() {
        let mut second = Second { index: 0, finished: 3, round_trips_ms: vec![5.0, 1.0, 9.0], closed: None };
        let open = second.percentiles();
        second.close();
        assert_eq!(second.percentiles(), open);
        assert_eq!(open, (Some(5.0), Some(9.0)));
        assert!(second.round_trips_ms.is_empty());
    }

    #[test]
    fn an_empty_window_says_how_long_the_master_has_run() {
        let view = Activity::default().view();
        assert!(view.seconds.is_empty());
        assert!(view.uptime_s >= 0.0 && view.uptime_s < 5.0);
    }

    #[test]
    fn percentiles_are_observed_values() {
        assert_eq!(nearest_rank(&[], 0.5), None);
        assert_eq!(nearest_rank(&[1.0, 2.0, 3.0, 4.0], 0.5), Some(2.0));
        assert_eq!(nearest_rank(&[1.0, 2.0, 3.0, 4.0], 0.99), Some(4.0));
    }
}
