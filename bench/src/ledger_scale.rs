//! The `ledger` workload: a ledger of many finished tasks, built through the API
//! (never SQL: only the master's ledger module touches the file), then timed reads of
//! one task and of a page, the master's start-up on that file, and the file's size.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use super::{
    BenchError, Percentiles, Report, Run, api::Api, cluster::Cluster, probe::Probe, stats::Rng, throughput,
};

/// Reads sent before the timed ones.
const WARM_UP_READS: u64 = 50;
/// Page size of the timed list reads (`GET /tasks?status=done&limit=100`).
const LIST_LIMIT: u32 = 100;
/// Rows of one page of the dashboard's history.
const DASHBOARD_PAGE: u32 = 50;
/// Times the master is restarted on the built ledger to time its start-up.
const RESTARTS: usize = 3;

/// The `ledger` workload.
pub async fn workload(cluster: Cluster, run: &Run) -> (Cluster, Result<Report, BenchError>) {
    let mut report = Report::new("ledger", &cluster.description, run.tasks);
    let cluster = match build(&cluster, run, &mut report).await {
        Ok(()) => cluster,
        Err(error) => return (cluster, Err(error)),
    };
    report.set("build_master_peak_rss_mb", cluster.master_peak_rss_mb());
    report.slave_peak_rss_mb = cluster.slave_peak_rss_mb();
    let mut cluster = cluster;
    if cluster.db().is_some() {
        let mut starts = Vec::new();
        for _ in 0..RESTARTS {
            match cluster.restart_master().await {
                Ok(times) => starts.push(times),
                Err(error) => return (cluster, Err(error)),
            }
        }
        record_starts(&mut report, &starts);
    }
    let measured = reads(&cluster, run, &mut report).await;
    report.master_peak_rss_mb = cluster.master_peak_rss_mb();
    if let Some(db) = cluster.db() {
        // Measured while the restarted master runs: the WAL is part of the ledger.
        let (main, wal) = (file_mb(db), file_mb(&with_suffix(db, "-wal")));
        report.set("db_file_mb", main);
        report.set("db_wal_mb", wal);
        report.set("db_total_mb", main.unwrap_or(0.0) + wal.unwrap_or(0.0));
    }
    (cluster, measured.map(|()| report))
}

/// Brings the ledger up to `run.tasks` finished tasks through the closed-loop engine;
/// a `--db` that already holds them is reused as it is.
async fn build(cluster: &Cluster, run: &Run, report: &mut Report) -> Result<(), BenchError> {
    let counts = cluster.api.page(None, 0, 1).await?.counts;
    let finished = counts.done + counts.failed + counts.cancelled;
    let missing = run.tasks.saturating_sub(finished);
    report.set("tasks_already_in_ledger", finished);
    report.set("tasks_built", missing);
    if missing == 0 {
        report.ok = counts.done;
        report.failed = counts.failed + counts.cancelled;
        return Ok(());
    }
    run.phase("build", missing);
    let before = Probe::read(cluster).await;
    let outcome = throughput::drive(&cluster.api, run, finished, missing).await?;
    report.set("build_where_time_went", before.since(&Probe::read(cluster).await, missing));
    report.set("build_s", outcome.elapsed.as_secs_f64());
    report.set("build_tasks_per_s", outcome.throughput());
    report.set("build_concurrency", run.concurrency);
    throughput::fill(report, outcome);
    report.ok += counts.done;
    report.failed += counts.failed + counts.cancelled;
    report.latency_ms = None; // the headline latency of this workload is a read, below
    report.verdict()
}

fn record_starts(report: &mut Report, starts: &[(Duration, Duration)]) {
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    let listening: Vec<f64> = starts.iter().map(|(listening, _)| ms(listening)).collect();
    let healthy: Vec<f64> = starts.iter().map(|(_, healthy)| ms(healthy)).collect();
    report.set("start_to_listening_ms", &listening);
    report.set("start_to_healthy_ms", &healthy);
    report.set("start_ms_worst", healthy.iter().copied().fold(0.0, f64::max));
}

/// Times `GET /tasks/{id}` at random ids and `GET /tasks?status=done&limit=100` at
/// random cursors, one request at a time.
async fn reads(cluster: &Cluster, run: &Run, report: &mut Report) -> Result<(), BenchError> {
    let api = &cluster.api;
    let first = api.page(None, 0, 1).await?.tasks.first().map(|task| task.id).unwrap_or(1);
    let last = last_id(api, first).await?;
    report.set("task_ids", format!("{first}..={last}"));
    let mut rng = Rng::new(0x5EED ^ last as u64);
    run.phase("reads", 2 * (WARM_UP_READS + run.samples));
    let mut one = Vec::new();
    for n in 0..WARM_UP_READS + run.samples {
        run.check_deadline("timing GET /tasks/{id}")?;
        let id = rng.between(first, last);
        let sent = Instant::now();
        api.task(id, Duration::ZERO).await?;
        if n >= WARM_UP_READS {
            one.push(sent.elapsed());
        }
        run.progress.inc(1);
    }
    let mut pages = Vec::new();
    for n in 0..WARM_UP_READS + run.samples {
        run.check_deadline("timing GET /tasks?status=done")?;
        let after = rng.between(0, last);
        let sent = Instant::now();
        api.page(Some("done"), after, LIST_LIMIT).await?;
        if n >= WARM_UP_READS {
            pages.push(sent.elapsed());
        }
        run.progress.inc(1);
    }
    // The dashboard's history: newest first from a random page, by status, by slave.
    let slave =
        api.page(None, 0, 1).await?.tasks.first().and_then(|task| task.slave.as_ref()).map_or(1, |s| s.id);
    let (mut by_status, mut by_slave) = (Vec::new(), Vec::new());
    for n in 0..WARM_UP_READS + run.samples {
        run.check_deadline("timing GET /tasks?order=newest")?;
        let before = rng.between(first, last + 1);
        let sent = Instant::now();
        api.page_newest(("status", "done".to_owned()), before, DASHBOARD_PAGE).await?;
        let by_status_took = sent.elapsed();
        let sent = Instant::now();
        api.page_newest(("slave", slave.to_string()), before, DASHBOARD_PAGE).await?;
        if n >= WARM_UP_READS {
            by_status.push(by_status_took);
            by_slave.push(sent.elapsed());
        }
    }
    report.latency_ms = Percentiles::of(&mut one);
    report.set("latency_is", "GET /tasks/{id} at random ids, one at a time");
    report.set("list_latency_ms", Percentiles::of(&mut pages));
    report.set("newest_by_status_latency_ms", Percentiles::of(&mut by_status));
    report.set("newest_by_slave_latency_ms", Percentiles::of(&mut by_slave));
    Ok(())
}

/// The highest task id: a binary search on "some task has an id at or above `c`",
/// which holds for every `c` up to the last id whatever gaps the ids have.
async fn last_id(api: &Api, first: i64) -> Result<i64, BenchError> {
    let exists_from =
        |c: i64| async move { Ok::<_, BenchError>(!api.page(None, c - 1, 1).await?.tasks.is_empty()) };
    let (mut low, mut high) = (first, first.max(1));
    // Bounded: 62 doublings reach i64's range.
    for _ in 0..62 {
        if !exists_from(high).await? {
            break;
        }
        low = high;
        high = high.saturating_mul(2);
    }
    // Invariant: a task exists at or above `low`, none at or above `high`.
    while high - low > 1 {
        let mid = low + (high - low) / 2;
        if exists_from(mid).await? {
            low = mid;
        } else {
            high = mid;
        }
    }
    Ok(low)
}

fn file_mb(path: &Path) -> Option<f64> {
    std::fs::metadata(path).ok().map(|meta| meta.len() as f64 / (1024.0 * 1024.0))
}

fn with_suffix(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_path_sits_beside_the_ledger() {
        assert_eq!(with_suffix(Path::new("/tmp/x/master.db"), "-wal"), Path::new("/tmp/x/master.db-wal"));
    }
}
