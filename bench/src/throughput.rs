//! The closed-loop engine: `concurrency` workers, each submitting a task and waiting
//! until the ledger says it is finished before submitting the next, so at most
//! `concurrency` tasks are ever unfinished (a bounded window; nothing piles up in the
//! queue that the end of the run would then have to drain).
//!
//! Completion is read back from the ledger by one tracker that pages `GET /tasks?after=`
//! from the oldest unfinished task of the window, every [`TRACK_INTERVAL`]: one request
//! answers for the whole window, so tracking costs the master ~1/window of a request per
//! task instead of a long poll per task, and a task counts only once the master's
//! ledger has it final (nothing is inferred from the submit answer).

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{sync::oneshot, task::JoinSet};
use tokio_util::sync::CancellationToken;

use super::{
    BenchError, Percentiles, Report, Run,
    api::{Api, Submission, Submitter},
    cluster::Cluster,
    probe::Probe,
    stats,
};

/// Pause between two pages of the tracker: short next to a task's round trip, long
/// enough that tracking stays a small share of the master's work.
const TRACK_INTERVAL: Duration = Duration::from_millis(4);
/// Page size of the tracker (the API's largest).
const TRACK_PAGE: u32 = 1000;
/// Pause before re-submitting after 503 `queue_full` / `full_capacity`.
const BUSY_BACKOFF: Duration = Duration::from_millis(10);

/// What a closed-loop run did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub accepted: u64,
    pub ok: u64,
    pub failed: u64,
    pub lost: u64,
    /// 503 answers that were retried.
    pub busy: u64,
    pub errors: Vec<String>,
    /// `POST /tasks` round trips of accepted submissions.
    pub submit_latencies: Vec<Duration>,
    /// First submit to last finish seen.
    pub elapsed: Duration,
    /// Highest task id accepted.
    pub last_id: i64,
    /// When each task was seen finished, from the first submit (for `--plot`).
    pub finished_at: Vec<Duration>,
}

impl Outcome {
    /// Finished tasks per second over `elapsed`.
    pub fn throughput(&self) -> Option<f64> {
        let secs = self.elapsed.as_secs_f64();
        (secs > 0.0).then(|| (self.ok + self.failed) as f64 / secs)
    }
}

/// Unfinished tasks of the window, by id, each with the worker waiting for it.
type Window = Arc<Mutex<BTreeMap<i64, oneshot::Sender<String>>>>;

/// The `throughput` workload.
pub async fn workload(cluster: Cluster, run: &Run) -> (Cluster, Result<Report, BenchError>) {
    let report = measure(&cluster, run).await;
    (cluster, report)
}

async fn measure(cluster: &Cluster, run: &Run) -> Result<Report, BenchError> {
    run.phase("throughput", run.tasks);
    let before = Probe::read(cluster).await;
    let outcome = drive(&cluster.api, run, 0, run.tasks).await?;
    let after = Probe::read(cluster).await;
    let mut report = Report::new("throughput", &cluster.description, run.tasks);
    report.set("where_time_went", before.since(&after, outcome.ok + outcome.failed));
    fill(&mut report, outcome);
    report.set("concurrency", run.concurrency);
    report.set("latency_is", "POST /tasks round trip (submit latency)");
    report.master_peak_rss_mb = cluster.master_peak_rss_mb();
    report.slave_peak_rss_mb = cluster.slave_peak_rss_mb();
    Ok(report)
}

/// Puts a closed-loop outcome in a report.
pub fn fill(report: &mut Report, mut outcome: Outcome) {
    report.ok = outcome.ok;
    report.failed = outcome.failed;
    report.lost = outcome.lost;
    report.elapsed_s = outcome.elapsed.as_secs_f64();
    report.throughput_per_s = outcome.throughput();
    report.timeline.latencies.clone_from(&outcome.submit_latencies);
    report.timeline.finished = std::mem::take(&mut outcome.finished_at);
    report.latency_ms = Percentiles::of(&mut outcome.submit_latencies);
    report.set("busy_retries", outcome.busy);
    report.set("errors", outcome.errors.len());
    if outcome.lost > 0 {
        report.problems.push(format!("{} accepted tasks never finished", outcome.lost));
    }
    let unfinished = report.tasks.saturating_sub(outcome.accepted);
    if unfinished > 0 {
        report.problems.push(format!("{unfinished} tasks were never accepted before the deadline"));
    }
    if let Some(first) = outcome.errors.first() {
        report.problems.push(format!("{} requests failed, the first: {first}", outcome.errors.len()));
    }
}

/// Runs tasks `first..first+count` of the expression sequence through a window of
/// `run.concurrency` unfinished tasks until all are finished or the deadline passes.
pub async fn drive(api: &Api, run: &Run, first: u64, count: u64) -> Result<Outcome, BenchError> {
    let next = Arc::new(AtomicU64::new(first));
    let end = first + count;
    let window: Window = Arc::default();
    let started = Instant::now();
    // Cancelled when the workers are done, or by the tracker itself when it fails, so
    // no worker waits out the deadline for an answer that cannot come.
    let stop_tracking = CancellationToken::new();
    let submitters = (0..run.concurrency).map(|_| api.submitter()).collect::<Result<Vec<_>, _>>()?;
    let tracker = tokio::spawn(track(api.clone(), window.clone(), stop_tracking.clone(), run.deadline));
    let mut workers = JoinSet::new();
    for mut submitter in submitters {
        let (next, window, stopped) = (next.clone(), window.clone(), stop_tracking.clone());
        let (deadline, progress) = (run.deadline, run.progress.clone());
        workers.spawn(async move {
            let mut mine = Outcome::default();
            let mut last_finish = None;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= end || Instant::now() >= deadline || stopped.is_cancelled() {
                    break;
                }
                match one_task(&mut submitter, &window, &stopped, n, deadline, &mut mine).await {
                    Ok(true) => {
                        last_finish = Some(Instant::now());
                        mine.finished_at.push(started.elapsed());
                        progress.inc(1);
                    }
                    Ok(false) => {}
                    Err(error) => mine.errors.push(error.to_string()),
                }
            }
            (mine, last_finish)
        });
    }
    let mut total = Outcome::default();
    let mut last_finish = started;
    while let Some(joined) = workers.join_next().await {
        let (mine, finished) =
            joined.map_err(|error| BenchError::Incomplete(format!("a worker died: {error}")))?;
        last_finish = last_finish.max(finished.unwrap_or(started));
        merge(&mut total, mine);
    }
    stop_tracking.cancel();
    if let Ok(Err(error)) = tracker.await {
        total.errors.push(error.to_string());
    }
    total.elapsed = last_finish - started;
    Ok(total)
}

fn merge(total: &mut Outcome, mine: Outcome) {
    total.accepted += mine.accepted;
    total.ok += mine.ok;
    total.failed += mine.failed;
    total.lost += mine.lost;
    total.busy += mine.busy;
    total.errors.extend(mine.errors);
    total.submit_latencies.extend(mine.submit_latencies);
    total.finished_at.extend(mine.finished_at);
    total.last_id = total.last_id.max(mine.last_id);
}

/// Submits task `n` (again while the master is busy) and waits for the tracker to see
/// it final. `Ok(true)` once finished; `Ok(false)` if the deadline came first.
async fn one_task(
    submitter: &mut Submitter,
    window: &Window,
    stopped: &CancellationToken,
    n: u64,
    deadline: Instant,
    mine: &mut Outcome,
) -> Result<bool, BenchError> {
    let (expression, variables) = stats::expression(n);
    let id = loop {
        let sent = Instant::now();
        match submitter.submit(&expression, &variables, 0).await? {
            Submission::Accepted(id) => {
                mine.submit_latencies.push(sent.elapsed());
                break id;
            }
            Submission::Busy => {
                mine.busy += 1;
                if Instant::now() + BUSY_BACKOFF >= deadline {
                    return Ok(false);
                }
                tokio::time::sleep(BUSY_BACKOFF).await;
            }
        }
    };
    mine.accepted += 1;
    mine.last_id = mine.last_id.max(id);
    let (finished, status) = oneshot::channel();
    lock(window).insert(id, finished);
    let wait = deadline.saturating_duration_since(Instant::now());
    let seen = tokio::select! {
        seen = tokio::time::timeout(wait, status) => seen.ok().and_then(Result::ok),
        () = stopped.cancelled() => None,
    };
    match seen {
        Some(status) if status == "done" => mine.ok += 1,
        Some(_) => mine.failed += 1,
        // The tracker stopped (its error is reported) or the deadline passed.
        None => {
            lock(window).remove(&id);
            mine.lost += 1;
            return Ok(false);
        }
    }
    Ok(true)
}

fn lock(window: &Window) -> std::sync::MutexGuard<'_, BTreeMap<i64, oneshot::Sender<String>>> {
    // Sections are map operations that cannot panic half-way; a poisoned map is intact.
    window.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The tracker: pages the ledger from the oldest unfinished task of the window and
/// tells each worker whose task it finds final. On failure it stops the run: the
/// waiting workers count their tasks lost and submit no more.
async fn track(
    api: Api,
    window: Window,
    stop: CancellationToken,
    deadline: Instant,
) -> Result<(), BenchError> {
    let tracked = track_until(&api, &window, &stop, deadline).await;
    if tracked.is_err() {
        stop.cancel();
        lock(&window).clear(); // dropping the senders wakes every waiting worker
    }
    tracked
}

async fn track_until(
    api: &Api,
    window: &Window,
    stop: &CancellationToken,
    deadline: Instant,
) -> Result<(), BenchError> {
    while !stop.is_cancelled() && Instant::now() < deadline {
        let range = {
            let window = lock(window);
            window.first_key_value().map(|(&low, _)| low).zip(window.last_key_value().map(|(&high, _)| high))
        };
        if let Some((low, high)) = range {
            let mut after = low - 1;
            // Bounded: each page moves `after` forward, and the loop ends past `high`.
            while after < high {
                let page = api.statuses(after, TRACK_PAGE).await?;
                let mut window = lock(window);
                for task in page.tasks.iter().filter(|task| task.is_final()) {
                    if let Some(worker) = window.remove(&task.id) {
                        let _ = worker.send(task.status.clone());
                    }
                }
                match page.next {
                    Some(next) if next > after => after = next,
                    _ => break,
                }
            }
        }
        tokio::time::sleep(TRACK_INTERVAL).await;
    }
    Ok(())
}
