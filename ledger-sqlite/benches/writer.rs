//! The ledger writer on its own, without HTTP (BENCHMARKS.md "ledger writer"): many
//! concurrent callers each store a task already assigned to a slave, then record its
//! result — the two writes every task makes — into a file ledger with
//! `synchronous=FULL`. Prints one JSON line: writes/s, writes per batch, commits (one
//! fsync of the WAL each) per second, and the share of time the writer was busy.
//!
//! `TASKS` (default 100 000) and `CALLERS` (default 512) change the load; `BENCH_DIR`
//! the folder of the temporary ledger (default: the temp folder).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use common::protocol::{Outcome, Registration, Variables};
use ledger::{Engine, ResultRecording, Submission};
use ledger_sqlite::SqliteLedger;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

#[derive(Default)]
struct Batches {
    count: AtomicU64,
    writes: AtomicU64,
    busy_ns: AtomicU64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let tasks = setting("TASKS", 100_000);
    let callers = setting("CALLERS", 512).max(1);
    let dir = match std::env::var_os("BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .expect("a temp dir for the ledger");
    let batches = Arc::new(Batches::default());
    let seen = batches.clone();
    let on_batch = Box::new(move |size: usize, took: Duration| {
        seen.count.fetch_add(1, Ordering::Relaxed);
        seen.writes.fetch_add(size as u64, Ordering::Relaxed);
        seen.busy_ns.fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    });
    let path = dir.path().join("master.db");
    let ledger = SqliteLedger::open(&path, on_batch, ledger_sqlite::DEFAULT_MAX_BATCH).await.expect("open");
    let registration = Registration {
        name: "slave-1".to_owned(),
        url: "http://127.0.0.1:9001".to_owned(),
        capacity: 1,
        instance: None,
    };
    let slave = ledger.register_slave(registration).await.expect("register").id;
    let before = (batches.count.load(Ordering::Relaxed), batches.writes.load(Ordering::Relaxed));
    let busy_before = batches.busy_ns.load(Ordering::Relaxed);

    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..callers {
        let (ledger, next) = (ledger.clone(), next.clone());
        workers.spawn(async move {
            let variables = Variables::new();
            while next.fetch_add(1, Ordering::Relaxed) < tasks {
                let task = Submission { expression: "2+3*4", variables: &variables, delay_ms: 0 };
                let id =
                    ledger.insert_task(task, Some((slave, Duration::from_secs(60)))).await.expect("insert");
                let recorded =
                    ledger.record_result(id, slave, 1, Outcome::Value(14.0)).await.expect("result");
                assert!(matches!(recorded, ResultRecording::Recorded { .. }), "task {id}: {recorded:?}");
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.expect("a caller failed");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let commits = batches.count.load(Ordering::Relaxed) - before.0;
    let writes = batches.writes.load(Ordering::Relaxed) - before.1;
    let busy = (batches.busy_ns.load(Ordering::Relaxed) - busy_before) as f64 / 1e9;
    let counts = ledger.counts().await.expect("counts");
    assert_eq!(counts.done, i64::try_from(tasks).unwrap_or(i64::MAX), "every task done once");
    ledger.close().await;
    let report = serde_json::json!({
        "tasks": tasks,
        "callers": callers,
        "writes": writes,
        "seconds": elapsed,
        "writes_per_s": writes as f64 / elapsed,
        "writes_per_batch": writes as f64 / commits.max(1) as f64,
        "commits_per_s": commits as f64 / elapsed,
        "writer_busy": busy / elapsed,
        "synchronous": "FULL",
    });
    println!("{report}");
}
