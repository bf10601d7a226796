//! One task at a time (`latency`) and a batch of slow tasks on two 1-slot slaves
//! (`sleepy`): how long a task takes from submit to a finished ledger row.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use super::{
    BenchError, LONG_POLL, Percentiles, Report, Run,
    api::{Api, Submission, Task},
    cluster::Cluster,
    plot::Timeline,
    probe::Probe,
    stats,
};

/// Round trips run before the timed ones (connection set-up, first-touch allocations).
const WARM_UP_ROUNDS: u64 = 20;
/// `delay_ms` of each sleepy task: 1 s of simulated work.
const SLEEPY_DELAY_MS: u64 = 1000;
/// Long poll of the latency rounds (SPEC: `GET /tasks/{id}?wait=10`).
const ROUND_WAIT: Duration = Duration::from_secs(10);

/// The `latency` workload: `run.tasks` sequential rounds of `POST /tasks` then
/// `GET /tasks/{id}?wait=10` until the task is final.
pub async fn latency(cluster: Cluster, run: &Run) -> (Cluster, Result<Report, BenchError>) {
    let report = measure_latency(&cluster, run).await;
    (cluster, report)
}

async fn measure_latency(cluster: &Cluster, run: &Run) -> Result<Report, BenchError> {
    let api = &cluster.api;
    for n in 0..WARM_UP_ROUNDS {
        round(api, run, n).await?;
    }
    run.phase("latency", run.tasks);
    let mut report = Report::new("latency", &cluster.description, run.tasks);
    let (mut rounds, mut submits) = (Vec::new(), Vec::new());
    let before = Probe::read(cluster).await;
    let started = Instant::now();
    for n in 0..run.tasks {
        run.check_deadline("running latency rounds")?;
        let (task, round_trip, submit) = round(api, run, WARM_UP_ROUNDS + n).await?;
        if task.status == "done" {
            report.ok += 1;
        } else {
            report.failed += 1;
        }
        rounds.push(round_trip);
        submits.push(submit);
        report.timeline.finished.push(started.elapsed());
        run.progress.inc(1);
    }
    report.elapsed_s = started.elapsed().as_secs_f64();
    report.set("where_time_went", before.since(&Probe::read(cluster).await, run.tasks));
    report.throughput_per_s = Some(run.tasks as f64 / report.elapsed_s.max(f64::MIN_POSITIVE));
    report.timeline.latencies.clone_from(&rounds);
    report.latency_ms = Percentiles::of(&mut rounds);
    report.set("latency_is", "POST /tasks + GET /tasks/{id}?wait=10 until final, one at a time");
    report.set("submit_latency_ms", Percentiles::of(&mut submits));
    report.set("warm_up_rounds", WARM_UP_ROUNDS);
    report.master_peak_rss_mb = cluster.master_peak_rss_mb();
    report.slave_peak_rss_mb = cluster.slave_peak_rss_mb();
    Ok(report)
}

/// One round: the final task, the full round trip, and the submit part of it.
async fn round(api: &Api, run: &Run, n: u64) -> Result<(Task, Duration, Duration), BenchError> {
    let (expression, variables) = stats::expression(n);
    let started = Instant::now();
    let id = submit_until_accepted(api, run, &expression, &variables, 0).await?;
    let submitted = started.elapsed();
    let task = wait_final(api, run.deadline, id, ROUND_WAIT).await?;
    Ok((task, started.elapsed(), submitted))
}

async fn submit_until_accepted(
    api: &Api,
    run: &Run,
    expression: &str,
    variables: &common::protocol::Variables,
    delay_ms: u64,
) -> Result<i64, BenchError> {
    loop {
        match api.submit(expression, variables, delay_ms).await? {
            Submission::Accepted(id) => return Ok(id),
            Submission::Busy => {
                run.check_deadline("waiting for room on the slaves")?;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Long-polls task `id` (steps of at most `step`) until it is final or `deadline` passes.
async fn wait_final(api: &Api, deadline: Instant, id: i64, step: Duration) -> Result<Task, BenchError> {
    loop {
        let wait = step.min(deadline.saturating_duration_since(Instant::now()));
        let task = api.task(id, wait).await?;
        if task.is_final() {
            return Ok(task);
        }
        if Instant::now() >= deadline {
            return Err(BenchError::Incomplete(format!("the --deadline passed while waiting for task {id}")));
        }
    }
}

/// The `sleepy` workload: `run.tasks` tasks of 1 s each submitted at once to two slaves
/// of capacity 1 in queue mode; the makespan and how the tasks spread over the slaves.
pub async fn sleepy(cluster: Cluster, run: &Run) -> (Cluster, Result<Report, BenchError>) {
    let report = measure_sleepy(&cluster, run).await;
    (cluster, report)
}

async fn measure_sleepy(cluster: &Cluster, run: &Run) -> Result<Report, BenchError> {
    let api = &cluster.api;
    run.phase("sleepy", run.tasks);
    let started = Instant::now();
    let mut ids = Vec::new();
    let mut submits = Vec::new();
    for n in 0..run.tasks {
        let (expression, variables) = stats::expression(n);
        let sent = Instant::now();
        ids.push(submit_until_accepted(api, run, &expression, &variables, SLEEPY_DELAY_MS).await?);
        submits.push(sent.elapsed());
    }
    let mut waits = tokio::task::JoinSet::new();
    for &id in &ids {
        let (api, deadline, progress) = (api.clone(), run.deadline, run.progress.clone());
        waits.spawn(async move {
            let task = wait_final(&api, deadline, id, LONG_POLL).await;
            progress.inc(1);
            task.map(|task| (task, started.elapsed()))
        });
    }
    let mut report = Report::new("sleepy", &cluster.description, run.tasks);
    let mut per_task = Vec::new();
    while let Some(joined) = waits.join_next().await {
        let (task, finished) = joined.map_err(|error| BenchError::Incomplete(error.to_string()))??;
        if task.status == "done" {
            report.ok += 1;
        } else {
            report.failed += 1;
        }
        per_task.push(finished);
    }
    let makespan = per_task.iter().max().copied().unwrap_or_default();
    report.elapsed_s = makespan.as_secs_f64();
    report.throughput_per_s = Some(run.tasks as f64 / report.elapsed_s.max(f64::MIN_POSITIVE));
    report.timeline = Timeline { latencies: per_task.clone(), finished: per_task.clone() };
    report.latency_ms = Percentiles::of(&mut per_task);
    report.set("latency_is", "first submit to each task seen final");
    report.set("makespan_s", makespan.as_secs_f64());
    report.set("submit_latency_ms", Percentiles::of(&mut submits));
    report.set("tasks_per_slave", tasks_per_slave(api, &ids).await?);
    report.master_peak_rss_mb = cluster.master_peak_rss_mb();
    report.slave_peak_rss_mb = cluster.slave_peak_rss_mb();
    Ok(report)
}

/// How many of `ids` each slave ran, from `GET /tasks` (`slave.name`).
async fn tasks_per_slave(api: &Api, ids: &[i64]) -> Result<BTreeMap<String, u64>, BenchError> {
    let (Some(&low), Some(&high)) = (ids.iter().min(), ids.iter().max()) else { return Ok(BTreeMap::new()) };
    let mut counts = BTreeMap::new();
    let mut after = low - 1;
    while after < high {
        let page = api.page(None, after, 1000).await?;
        for task in page.tasks.iter().filter(|task| ids.contains(&task.id)) {
            let name = task.slave.as_ref().map_or("(none)", |slave| slave.name.as_str());
            *counts.entry(name.to_owned()).or_insert(0) += 1;
        }
        match page.next {
            Some(next) if next > after => after = next,
            _ => break,
        }
    }
    Ok(counts)
}
