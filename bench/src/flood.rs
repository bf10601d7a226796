//! The open loop (issue 11 item 6): `clients` keep-alive clients each submit back to
//! back, as fast as the master answers, for `duration`, in queue mode. Then the run
//! waits for the queue to drain and reads the master's resident size again: memory
//! must stay bounded during the flood and come back after it.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::task::JoinSet;

use super::{
    BenchError, Report, Run,
    api::{Submission, Submitter},
    cluster::Cluster,
    stats,
};

/// How often the master's RSS is sampled during the flood.
const RSS_SAMPLE: Duration = Duration::from_millis(250);
/// Pause of a client after 503 `queue_full` before it submits again.
const BUSY_BACKOFF: Duration = Duration::from_millis(10);
/// How long the master gets, once drained, before its settled RSS is read (longer
/// than the master's 5 s period of handing free memory back).
const SETTLE: Duration = Duration::from_secs(6);

/// The flood's shape.
#[derive(Debug, Clone, Copy)]
pub struct Flood {
    pub clients: usize,
    pub duration: Duration,
}

/// Runs the flood on `cluster`.
pub async fn workload(cluster: Cluster, run: &Run, flood: Flood) -> (Cluster, Result<Report, BenchError>) {
    let report = measure(&cluster, run, flood).await;
    (cluster, report)
}

async fn measure(cluster: &Cluster, run: &Run, flood: Flood) -> Result<Report, BenchError> {
    let before = cluster.api.page(None, 0, 1).await?.counts;
    let finished_before = before.done + before.failed + before.cancelled;
    let accepted = Arc::new(AtomicU64::new(0));
    let busy = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let stop_at = (started + flood.duration).min(run.deadline);
    run.phase("flood", flood.duration.as_secs());
    let mut clients = JoinSet::new();
    for client in 0..flood.clients {
        let submitter = cluster.api.submitter()?;
        let (accepted, busy, limit) = (accepted.clone(), busy.clone(), run.tasks);
        clients.spawn(submit_until(submitter, client as u64, stop_at, limit, accepted, busy));
    }
    let mut peak_during = 0.0_f64;
    while Instant::now() < stop_at {
        tokio::time::sleep(RSS_SAMPLE).await;
        peak_during = peak_during.max(cluster.master_rss_mb().unwrap_or(0.0));
        run.progress.set_position(started.elapsed().as_secs());
    }
    let mut errors = Vec::new();
    while let Some(joined) = clients.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(error)) => errors.push(error.to_string()),
            Err(error) => errors.push(error.to_string()),
        }
    }
    let flood_time = started.elapsed();
    let accepted = accepted.load(Ordering::Relaxed);

    // Drain: every accepted task must finish; the queue can hold many.
    run.phase("draining", accepted);
    let mut finished;
    loop {
        let counts = cluster.api.page(None, 0, 1).await?.counts;
        finished = counts.done + counts.failed + counts.cancelled - finished_before;
        run.progress.set_position(finished);
        peak_during = peak_during.max(cluster.master_rss_mb().unwrap_or(0.0));
        if finished >= accepted {
            break;
        }
        run.check_deadline("draining the flood's queue")?;
        tokio::time::sleep(RSS_SAMPLE).await;
    }
    let drained_in = started.elapsed();
    tokio::time::sleep(SETTLE).await;
    let after = cluster.master_rss_mb();

    let mut report = Report::new("flood", &cluster.description, accepted);
    let counts = cluster.api.page(None, 0, 1).await?.counts;
    report.ok = counts.done.saturating_sub(before.done);
    report.failed = (counts.failed + counts.cancelled).saturating_sub(before.failed + before.cancelled);
    report.lost = accepted.saturating_sub(finished);
    report.elapsed_s = drained_in.as_secs_f64();
    report.throughput_per_s = Some(finished as f64 / drained_in.as_secs_f64().max(f64::MIN_POSITIVE));
    report.master_peak_rss_mb = cluster.master_peak_rss_mb();
    report.slave_peak_rss_mb = cluster.slave_peak_rss_mb();
    report.set("clients", flood.clients);
    report.set("flood_s", flood_time.as_secs_f64());
    report.set("accepted_per_s", accepted as f64 / flood_time.as_secs_f64().max(f64::MIN_POSITIVE));
    report.set("queue_full_answers", busy.load(Ordering::Relaxed));
    report.set("master_rss_during_max_mb", peak_during);
    report.set("master_rss_after_mb", after);
    report.problems.extend(errors);
    Ok(report)
}

/// One client: submit, and again at once, until `stop_at` (or `limit` accepted overall).
async fn submit_until(
    mut submitter: Submitter,
    client: u64,
    stop_at: Instant,
    limit: u64,
    accepted: Arc<AtomicU64>,
    busy: Arc<AtomicU64>,
) -> Result<(), BenchError> {
    let mut n = client;
    while Instant::now() < stop_at && accepted.load(Ordering::Relaxed) < limit {
        let (expression, variables) = stats::expression(n);
        n += 1 << 20; // distinct expressions per client
        match submitter.submit(&expression, &variables, 0).await? {
            Submission::Accepted(_) => {
                accepted.fetch_add(1, Ordering::Relaxed);
            }
            Submission::Busy => {
                busy.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(BUSY_BACKOFF).await;
            }
        }
    }
    Ok(())
}
