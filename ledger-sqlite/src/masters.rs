//! Statements about masters: the one master that runs on this file records itself.

use std::time::Duration;

use ledger::{LedgerError, MasterRow, Timestamp};

use super::SqliteLedger;

/// Rows of masters unseen for this long are dropped when a master starts.
const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

impl SqliteLedger {
    pub(crate) async fn start_master(&self, url: &str) -> Result<i64, LedgerError> {
        let url = url.to_owned();
        let now = Timestamp::now();
        let forgotten = Timestamp::in_past(FORGET_AFTER);
        self.write(move |conn| {
            Box::pin(async move {
                sqlx::query!("DELETE FROM masters WHERE last_seen_at < ?1", forgotten)
                    .execute(&mut *conn)
                    .await?;
                // Only one master runs on a file, so an earlier row left unstopped (a
                // crash) is over now.
                sqlx::query!("UPDATE masters SET stopped_at = last_seen_at WHERE stopped_at IS NULL")
                    .execute(&mut *conn)
                    .await?;
                Ok(sqlx::query_scalar!(
                    r#"INSERT INTO masters (url, started_at, last_seen_at) VALUES (?1, ?2, ?2)
                       RETURNING id AS "id!: i64""#,
                    url,
                    now
                )
                .fetch_one(&mut *conn)
                .await?)
            })
        })
        .await
    }

    pub(crate) async fn touch_master(&self, id: i64) -> Result<bool, LedgerError> {
        let now = Timestamp::now();
        self.write(move |conn| {
            Box::pin(async move {
                let touched = sqlx::query!(
                    "UPDATE masters SET last_seen_at = ?1 WHERE id = ?2 AND stopped_at IS NULL",
                    now,
                    id
                )
                .execute(&mut *conn)
                .await?;
                Ok(touched.rows_affected() == 1)
            })
        })
        .await
    }

    pub(crate) async fn stop_master(&self, id: i64) -> Result<(), LedgerError> {
        let now = Timestamp::now();
        self.write(move |conn| {
            Box::pin(async move {
                sqlx::query!("UPDATE masters SET stopped_at = ?1, last_seen_at = ?1 WHERE id = ?2", now, id)
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            })
        })
        .await
    }

    pub(crate) async fn masters(&self, timeout: Duration) -> Result<Vec<MasterRow>, LedgerError> {
        let cutoff = Timestamp::in_past(timeout);
        Ok(sqlx::query_as!(
            MasterRow,
            r#"SELECT id AS "id!: i64", url, started_at AS "started_at: Timestamp",
                      last_seen_at AS "last_seen_at: Timestamp",
                      (stopped_at IS NULL AND last_seen_at >= ?1) AS "up!: bool"
                 FROM masters ORDER BY id"#,
            cutoff
        )
        .fetch_all(&self.reads)
        .await?)
    }
}
