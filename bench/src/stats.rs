//! The pure parts of the bench: latency percentiles, the expression generator and a
//! small seeded random source. No I/O, so they are unit-tested here.

use std::time::Duration;

use common::protocol::Variables;
use serde::Serialize;

/// Latency percentiles in milliseconds, nearest-rank (no interpolation): p99 of 1 000
/// samples is the 990th smallest, a value that was really observed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub samples: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Percentiles of `samples` (sorted here); `None` when there are none.
    pub fn of(samples: &mut [Duration]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        Some(Self {
            samples: samples.len(),
            p50: ms(nearest_rank(samples, 50.0)),
            p90: ms(nearest_rank(samples, 90.0)),
            p99: ms(nearest_rank(samples, 99.0)),
            max: ms(samples[samples.len() - 1]),
        })
    }
}

/// The nearest-rank `p`th percentile of sorted, non-empty `sorted`: the smallest value
/// with at least `p`% of the samples at or below it.
pub fn nearest_rank(sorted: &[Duration], p: f64) -> Duration {
    debug_assert!(!sorted.is_empty(), "percentile of no samples");
    let n = sorted.len();
    // ceil(p/100 * n) as a 1-based rank, kept within 1..=n.
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// The `n`th trivial expression of a run: varied shapes (sums, products, powers,
/// functions, a variable) so no cache on the way sees the same text twice in a row,
/// each cheap to evaluate and finite.
pub fn expression(n: u64) -> (String, Variables) {
    let mut variables = Variables::new();
    let expression = match n % 8 {
        0 => format!("1+{n}"),
        1 => format!("{n}*2"),
        2 => format!("{n}-3*4"),
        3 => format!("({n}+1)/2"),
        4 => format!("sqrt({n})"),
        5 => format!("{n}^2 % 97"),
        6 => format!("max({n}, 7) - min({n}, 7)"),
        _ => {
            variables.insert("x".to_owned(), (n % 1000) as f64 + 0.5);
            format!("x*{n} + 1")
        }
    };
    (expression, variables)
}

/// splitmix64: a few lines, seedable, good enough to pick random ids and cursors.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed` (the same seed gives the same sequence).
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `low..=high` (`low` when the range is empty).
    pub fn between(&mut self, low: i64, high: i64) -> i64 {
        if high <= low {
            return low;
        }
        let span = (high - low) as u64 + 1;
        low + (self.next_u64() % span) as i64
    }
}

/// The value of an unlabelled sample `name` in Prometheus text (e.g. a histogram's
/// `_sum` or `_count`).
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok()).flatten()
    })
}

/// CPU seconds (user + system) of a `/proc/<pid>/stat` line, with `ticks` clock ticks
/// per second. The command name may hold spaces and parentheses: fields are counted
/// from the last `)`.
pub fn cpu_seconds_of_stat(stat: &str, ticks: f64) -> Option<f64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime) of proc(5); field 3 (state) is the first here.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|&v| Duration::from_millis(v)).collect()
    }

    #[test]
    fn nearest_rank_picks_an_observed_value() {
        let sorted = ms(&(1..=100).collect::<Vec<_>>());
        assert_eq!(nearest_rank(&sorted, 50.0), Duration::from_millis(50));
        assert_eq!(nearest_rank(&sorted, 90.0), Duration::from_millis(90));
        assert_eq!(nearest_rank(&sorted, 99.0), Duration::from_millis(99));
        assert_eq!(nearest_rank(&sorted, 100.0), Duration::from_millis(100));
    }

    #[test]
    fn nearest_rank_rounds_the_rank_up() {
        // 10 samples: p99 needs rank ceil(9.9) = 10, the largest; p50 rank 5.
        let sorted = ms(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(nearest_rank(&sorted, 99.0), Duration::from_millis(10));
        assert_eq!(nearest_rank(&sorted, 50.0), Duration::from_millis(5));
        assert_eq!(nearest_rank(&sorted, 0.0), Duration::from_millis(1));
    }

    #[test]
    fn one_sample_is_every_percentile() {
        let p = Percentiles::of(&mut ms(&[7])).unwrap();
        assert_eq!((p.samples, p.p50, p.p90, p.p99, p.max), (1, 7.0, 7.0, 7.0, 7.0));
    }

    #[test]
    fn percentiles_sort_their_samples_first() {
        let p = Percentiles::of(&mut ms(&[30, 10, 20, 40])).unwrap();
        assert_eq!((p.p50, p.p90, p.p99, p.max), (20.0, 40.0, 40.0, 40.0));
    }

    #[test]
    fn no_samples_give_no_percentiles() {
        assert_eq!(Percentiles::of(&mut []), None);
    }

    #[test]
    fn generated_expressions_are_valid_tasks_the_master_accepts() {
        for n in 0..200 {
            let (expression, variables) = expression(n);
            common::eval::check(&expression, &variables)
                .unwrap_or_else(|error| panic!("expression {n} `{expression}` refused: {error}"));
        }
    }

    #[test]
    fn generated_expressions_vary_from_one_task_to_the_next() {
        let texts: Vec<String> = (0..64).map(|n| expression(n).0).collect();
        let distinct: std::collections::HashSet<&String> = texts.iter().collect();
        assert_eq!(distinct.len(), texts.len());
        assert_eq!(expression(7).1.get("x"), Some(&7.5));
    }

    #[test]
    fn metric_values_are_read_by_exact_name() {
        let text = "# HELP x\nmaster_ledger_batch_writes_sum 1234.0\nmaster_ledger_batch_writes_count 56\n";
        assert_eq!(metric_value(text, "master_ledger_batch_writes_count"), Some(56.0));
        assert_eq!(metric_value(text, "master_ledger_batch_writes_sum"), Some(1234.0));
        assert_eq!(metric_value(text, "master_ledger_batch_writes"), None);
    }

    #[test]
    fn cpu_seconds_count_fields_after_the_command_name() {
        let stat = "4242 (tokio (rt) x) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0 20 0 8 0 100 2000 300";
        assert_eq!(cpu_seconds_of_stat(stat, 100.0), Some(4.0));
        assert_eq!(cpu_seconds_of_stat("garbage", 100.0), None);
    }

    #[test]
    fn rng_is_seeded_and_stays_in_range() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        assert_eq!(a.next_u64(), b.next_u64());
        for _ in 0..1000 {
            let v = a.between(10, 20);
            assert!((10..=20).contains(&v));
        }
        assert_eq!(a.between(5, 5), 5);
        assert_eq!(a.between(9, 3), 9);
    }
}
