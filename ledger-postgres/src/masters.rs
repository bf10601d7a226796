//! Statements about masters: each master on the database records itself and keeps its
//! row fresh; `up` is judged by the database's clock.

use std::time::Duration;

use ledger::{LedgerError, MasterRow, Timestamp};

use super::{PgLedger, unavailable};

impl PgLedger {
    pub(crate) async fn start_master(&self, url: &str) -> Result<i64, LedgerError> {
        sqlx::query!("DELETE FROM masters WHERE last_seen_at < now() - interval '1 day'")
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        sqlx::query_scalar!("INSERT INTO masters (url) VALUES ($1) RETURNING id", url)
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)
    }

    pub(crate) async fn touch_master(&self, id: i64) -> Result<bool, LedgerError> {
        let touched =
            sqlx::query!("UPDATE masters SET last_seen_at = now() WHERE id = $1 AND stopped_at IS NULL", id)
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
        Ok(touched.rows_affected() == 1)
    }

    pub(crate) async fn stop_master(&self, id: i64) -> Result<(), LedgerError> {
        sqlx::query!("UPDATE masters SET stopped_at = now(), last_seen_at = now() WHERE id = $1", id)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    pub(crate) async fn masters(&self, timeout: Duration) -> Result<Vec<MasterRow>, LedgerError> {
        sqlx::query_as!(
            MasterRow,
            r#"SELECT id, url, rfc3339(started_at) AS "started_at!: Timestamp",
                      rfc3339(last_seen_at) AS "last_seen_at!: Timestamp",
                      (stopped_at IS NULL AND last_seen_at >= now() - make_interval(secs => $1))
                          AS "up!"
                 FROM masters ORDER BY id"#,
            timeout.as_secs_f64()
        )
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)
    }
}
