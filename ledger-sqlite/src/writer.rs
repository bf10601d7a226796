//! The single writer and its group commit.

use sqlx::{Connection, SqliteConnection};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    Job,
    batched::{self, Deliver},
    file::{Fault, Identity},
};

/// The writer's parts.
pub(super) struct Writer {
    pub conn: SqliteConnection,
    pub jobs: mpsc::Receiver<Job>,
    pub on_batch: super::OnBatch,
    pub max_batch: usize,
    pub closing: CancellationToken,
    /// The files opened; checked before each batch (one `stat` each, microseconds).
    pub identity: Identity,
    pub fault: Fault,
}

/// The writer: takes every queued write (up to `max_batch`), runs them in one
/// transaction, commits once, then answers each caller. If any write of a batch fails,
/// the whole batch is rolled back and every caller hears so: no caller is ever told a
/// write committed that did not, and no half-done write is kept. (Per-write savepoints
/// would isolate failures, at two more round trips to SQLite's worker thread per write;
/// writes fail only when the disk or the database does, so that price bought nothing.)
///
/// Before each batch it checks that the ledger's path still names the file it opened:
/// if not (deleted, replaced), the batch is dropped unrun and its callers hear
/// `Unavailable` with the reason, since writing on would acknowledge what the next start
/// can never read.
pub(super) async fn write_loop(writer: Writer) {
    let Writer { mut conn, mut jobs, on_batch, max_batch, closing, identity, fault } = writer;
    let mut batch = Vec::with_capacity(max_batch);
    let mut closing_seen = false;
    loop {
        let received = tokio::select! {
            received = jobs.recv_many(&mut batch, max_batch) => received,
            () = closing.cancelled(), if !closing_seen => {
                // No new writes from now on; those already queued still run below.
                closing_seen = true;
                jobs.close();
                continue;
            }
        };
        if received == 0 {
            break;
        }
        if let Err(reason) = identity.check() {
            fault.set(Some(reason));
            batch.clear(); // each caller's answer channel drops: it reads `fault`
            continue;
        }
        let started = std::time::Instant::now();
        let size = batch.len();
        let one_statement = is_one_statement(&batch);
        let (deliveries, failed) = run_batch(&mut conn, &mut batch, &fault, one_statement).await;
        let committed = if one_statement {
            // The statement committed on its own (synchronous=FULL: on disk) before it
            // returned, or failed and its callers heard why from it. A result read
            // back after it that then failed was answered on its own too: every
            // answer still to give is for a write on disk.
            if !failed {
                fault.set(None);
            }
            Ok(())
        } else if failed {
            let _ = sqlx::query("ROLLBACK").execute(&mut conn).await;
            Err("another write of the same batch failed; the batch was rolled back".to_owned())
        } else {
            match sqlx::query("COMMIT").execute(&mut conn).await {
                Ok(_) => {
                    fault.set(None);
                    Ok(())
                }
                Err(error) => {
                    tracing::error!(%error, "ledger commit failed; the batch is lost and its callers told");
                    let _ = sqlx::query("ROLLBACK").execute(&mut conn).await;
                    fault.set(Some(format!("commit failed: {error}")));
                    Err(format!("commit failed: {error}"))
                }
            }
        };
        on_batch(size, started.elapsed());
        for deliver in deliveries {
            deliver(committed.clone());
        }
    }
    // The queue is closed and drained: every write has been answered. Closing the
    // connection lets SQLite checkpoint and remove the WAL.
    let _ = conn.close().await;
}

/// Whether the batch is one statement: only submissions, or only results (each kind
/// is one statement, its events written by triggers). A statement is atomic and
/// commits on its own, so such a batch needs no `BEGIN` and `COMMIT`: two round trips
/// to SQLite's worker thread fewer, a good part of a lone write's time. (The results
/// that did not win are read back after that commit; only this writer writes, so they
/// read what the statement left.)
fn is_one_statement(batch: &[Job]) -> bool {
    batch.iter().all(|job| matches!(job, Job::InsertTask(..)))
        || batch.iter().all(|job| matches!(job, Job::RecordResult(..)))
}

/// Runs a batch inside `BEGIN IMMEDIATE` (unless it is `one_statement`); true in the
/// second place if a write failed (the rest of the batch is then dropped, which
/// answers those callers `Closed`).
///
/// Submissions first (one statement for all), then results (one statement for all),
/// then every other write in arrival order. Every write of a batch was queued
/// concurrently by callers still waiting for their answer, so any order is one they
/// could have happened in.
async fn run_batch(
    conn: &mut SqliteConnection,
    batch: &mut Vec<Job>,
    fault: &Fault,
    one_statement: bool,
) -> (Vec<Deliver>, bool) {
    let mut deliveries = Vec::with_capacity(batch.len());
    if one_statement {
        // No transaction to open.
    } else if let Err(error) = sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await {
        tracing::error!(%error, "cannot begin a ledger transaction");
        fault.set(Some(format!("cannot begin a transaction: {error}")));
        // Running the jobs now would autocommit them one by one behind their callers'
        // backs; dropping them answers each caller `LedgerError::Closed` instead.
        batch.clear();
        return (deliveries, true);
    }
    let mut inserts = Vec::new();
    let mut results = Vec::new();
    let mut others = Vec::new();
    for job in batch.drain(..) {
        match job {
            Job::InsertTask(row, reply) => inserts.push((row, reply)),
            Job::RecordResult(row, reply) => results.push((row, reply)),
            Job::Statements(job) => others.push(job),
        }
    }
    if !inserts.is_empty() && batched::insert_tasks(conn, inserts, &mut deliveries).await.is_err() {
        return (deliveries, true);
    }
    if !results.is_empty() && batched::record_results(conn, results, &mut deliveries).await.is_err() {
        return (deliveries, true);
    }
    for job in others {
        let (succeeded, deliver) = job(conn).await;
        deliveries.push(deliver);
        if !succeeded {
            return (deliveries, true); // the jobs left are dropped with the iterator
        }
    }
    (deliveries, false)
}
