//! The single writer and its group commit.

use sqlx::{Connection, SqliteConnection};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Deliver, Job};

/// The writer: takes every queued write (up to `max_batch`), runs them in one
/// transaction, commits once, then answers each caller. If any write of a batch fails,
/// the whole batch is rolled back and every caller hears so: no caller is ever told a
/// write committed that did not, and no half-done write is kept. (Per-write savepoints
/// would isolate failures, at two more round trips to SQLite's worker thread per write;
/// writes fail only when the disk or the database does, so that price bought nothing.)
pub(super) async fn write_loop(
    mut conn: SqliteConnection,
    mut jobs: mpsc::Receiver<Job>,
    stats: crate::metrics::BatchStats,
    max_batch: usize,
    closing: CancellationToken,
) {
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
        let started = std::time::Instant::now();
        let size = batch.len();
        let (deliveries, failed) = run_batch(&mut conn, &mut batch).await;
        let committed = if failed {
            let _ = sqlx::query("ROLLBACK").execute(&mut conn).await;
            Err("another write of the same batch failed; the batch was rolled back".to_owned())
        } else {
            match sqlx::query("COMMIT").execute(&mut conn).await {
                Ok(_) => Ok(()),
                Err(error) => {
                    tracing::error!(%error, "ledger commit failed; the batch is lost and its callers told");
                    let _ = sqlx::query("ROLLBACK").execute(&mut conn).await;
                    Err(error.to_string())
                }
            }
        };
        stats.observe(size, started.elapsed());
        for deliver in deliveries {
            deliver(committed.clone());
        }
    }
    // The queue is closed and drained: every write has been answered. Closing the
    // connection lets SQLite checkpoint and remove the WAL.
    let _ = conn.close().await;
}

/// Runs a batch inside `BEGIN IMMEDIATE`; true in the second place if a write failed
/// (the rest of the batch is then dropped, which answers those callers `Closed`).
async fn run_batch(conn: &mut SqliteConnection, batch: &mut Vec<Job>) -> (Vec<Deliver>, bool) {
    let mut deliveries = Vec::with_capacity(batch.len());
    if let Err(error) = sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await {
        tracing::error!(%error, "cannot begin a ledger transaction");
        // Running the jobs now would autocommit them one by one behind their callers'
        // backs; dropping them answers each caller `LedgerError::Closed` instead.
        batch.clear();
        return (deliveries, true);
    }
    for job in batch.drain(..) {
        let (succeeded, deliver) = job(conn).await;
        deliveries.push(deliver);
        if !succeeded {
            return (deliveries, true); // dropping the drain drops the jobs left
        }
    }
    (deliveries, false)
}
