//! Where the time went during a measured phase: CPU seconds of the master, the slave
//! processes and the bench itself (from `/proc`), and the ledger writer's group-commit
//! figures (from `GET /metrics`). Read before and after; the report shows the difference.

use std::time::Instant;

use serde_json::{Value, json};

use super::{cluster::Cluster, stats};

/// One reading.
pub struct Probe {
    at: Instant,
    master_cpu_s: Option<f64>,
    slaves_cpu_s: Option<f64>,
    bench_cpu_s: Option<f64>,
    batches: Option<f64>,
    batch_writes: Option<f64>,
    commit_s: Option<f64>,
}

impl Probe {
    /// Reads the counters now.
    pub async fn read(cluster: &Cluster) -> Self {
        let metrics = cluster.api.metrics_text().await.unwrap_or_default();
        Self {
            at: Instant::now(),
            master_cpu_s: cluster.master_cpu_seconds(),
            slaves_cpu_s: cluster.slaves_cpu_seconds(),
            bench_cpu_s: cpu_seconds("self"),
            batches: stats::metric_value(&metrics, "master_ledger_batch_writes_count"),
            batch_writes: stats::metric_value(&metrics, "master_ledger_batch_writes_sum"),
            commit_s: stats::metric_value(&metrics, "master_ledger_commit_duration_seconds_sum"),
        }
    }

    /// What happened between `self` and `later`, per task where it helps (`tasks` finished).
    pub fn since(&self, later: &Probe, tasks: u64) -> Value {
        let wall = later.at.duration_since(self.at).as_secs_f64().max(f64::MIN_POSITIVE);
        let delta = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| b - a);
        let cores = |cpu: Option<f64>| cpu.map(|cpu| cpu / wall);
        let per_task_ms = |cpu: Option<f64>| cpu.map(|cpu| cpu * 1000.0 / tasks.max(1) as f64);
        let master = delta(self.master_cpu_s, later.master_cpu_s);
        let slaves = delta(self.slaves_cpu_s, later.slaves_cpu_s);
        let bench = delta(self.bench_cpu_s, later.bench_cpu_s);
        let batches = delta(self.batches, later.batches);
        let writes = delta(self.batch_writes, later.batch_writes);
        let commit = delta(self.commit_s, later.commit_s);
        let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).filter(|(_, b)| *b > 0.0).map(|(a, b)| a / b);
        json!({
            "wall_s": wall,
            "master_cpu_cores": cores(master),
            "master_cpu_ms_per_task": per_task_ms(master),
            "slaves_cpu_cores": cores(slaves),
            "bench_cpu_cores": cores(bench),
            "ledger_batches": batches,
            "ledger_writes_per_batch": ratio(writes, batches),
            "ledger_batch_ms": ratio(commit.map(|c| c * 1000.0), batches),
            // Share of the wall time the single writer spent running and committing
            // batches: near 1 means the writer (and its fsync) bounds the rate.
            "ledger_writer_busy": commit.map(|c| c / wall),
        })
    }
}

/// CPU seconds used so far by `/proc/<pid>` (`self` for the bench).
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    stats::cpu_seconds_of_stat(&stat, if ticks > 0 { ticks as f64 } else { 100.0 })
}
