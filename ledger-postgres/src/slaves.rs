//! Statements about slaves: registration, state, deletion.

use ledger::{LedgerError, Registration, SlaveDeletion, SlaveId, SlaveLoad, SlaveRow, SlaveState, Timestamp};

use super::{PgLedger, unavailable};

impl PgLedger {
    /// Re-registering a known name keeps its id and position; a new name takes the next
    /// id and position from their sequences. The update comes first, so a restart does
    /// not spend a position; the insert's `ON CONFLICT` covers a name registered by
    /// another writer between the two statements.
    pub(crate) async fn register_slave(&self, registration: Registration) -> Result<SlaveRow, LedgerError> {
        let capacity = i64::from(registration.capacity);
        let known = sqlx::query_as!(
            SlaveRow,
            r#"UPDATE slaves SET url = $2, capacity = $3, instance = $4, state = 'up', last_seen_at = now()
                WHERE name = $1
               RETURNING id AS "id!: SlaveId", name, url, capacity, position,
                         state AS "state!: SlaveState",
                         rfc3339(registered_at) AS "registered_at!: Timestamp",
                         rfc3339(last_seen_at) AS "last_seen_at!: Timestamp", instance"#,
            registration.name,
            registration.url,
            capacity,
            registration.instance,
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        if let Some(row) = known {
            return Ok(row);
        }
        sqlx::query_as!(
            SlaveRow,
            r#"INSERT INTO slaves (name, url, capacity, position, state, instance)
               VALUES ($1, $2, $3, nextval('slave_positions'), 'up', $4)
               ON CONFLICT (name) DO UPDATE
                  SET url = excluded.url, capacity = excluded.capacity, instance = excluded.instance,
                      state = 'up', last_seen_at = now()
               RETURNING id AS "id!: SlaveId", name, url, capacity, position,
                         state AS "state!: SlaveState",
                         rfc3339(registered_at) AS "registered_at!: Timestamp",
                         rfc3339(last_seen_at) AS "last_seen_at!: Timestamp", instance"#,
            registration.name,
            registration.url,
            capacity,
            registration.instance,
        )
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)
    }

    pub(crate) async fn slaves(&self) -> Result<Vec<SlaveRow>, LedgerError> {
        sqlx::query_as!(
            SlaveRow,
            r#"SELECT id AS "id!: SlaveId", name, url, capacity, position,
                      state AS "state!: SlaveState",
                      rfc3339(registered_at) AS "registered_at!: Timestamp",
                      rfc3339(last_seen_at) AS "last_seen_at!: Timestamp", instance
                 FROM slaves ORDER BY position"#
        )
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)
    }

    /// In-progress tasks per slave (on the partial index of in-progress tasks).
    pub(crate) async fn slave_loads(&self) -> Result<Vec<SlaveLoad>, LedgerError> {
        sqlx::query_as!(
            SlaveLoad,
            r#"SELECT slave_id AS "slave_id!: SlaveId", count(*) AS "running!"
                 FROM tasks WHERE status = 'in_progress' AND slave_id IS NOT NULL GROUP BY slave_id"#
        )
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)
    }

    /// Seen now by the database's clock, the one every master shares, so masters whose
    /// clocks disagree still agree on which news of a slave is newer.
    pub(crate) async fn slave_seen(
        &self,
        id: SlaveId,
        state: SlaveState,
    ) -> Result<Option<Timestamp>, LedgerError> {
        sqlx::query_scalar!(
            r#"UPDATE slaves SET state = $1, last_seen_at = now() WHERE id = $2
               RETURNING rfc3339(last_seen_at) AS "last_seen_at!: Timestamp""#,
            state.as_str(),
            id.0,
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)
    }

    pub(crate) async fn slave_down(&self, id: SlaveId) -> Result<bool, LedgerError> {
        let updated = sqlx::query!("UPDATE slaves SET state = 'down' WHERE id = $1", id.0)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(updated.rows_affected() == 1)
    }

    pub(crate) async fn delete_slave(&self, id: SlaveId) -> Result<SlaveDeletion, LedgerError> {
        let deleted = sqlx::query!(
            "DELETE FROM slaves WHERE id = $1
                AND NOT EXISTS (SELECT 1 FROM tasks WHERE status = 'in_progress' AND slave_id = $1)",
            id.0
        )
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        if deleted.rows_affected() == 1 {
            return Ok(SlaveDeletion::Deleted);
        }
        let known =
            sqlx::query_scalar!(r#"SELECT EXISTS (SELECT 1 FROM slaves WHERE id = $1) AS "known!""#, id.0)
                .fetch_one(&self.pool)
                .await
                .map_err(unavailable)?;
        Ok(if known { SlaveDeletion::StillHoldsTasks } else { SlaveDeletion::NotFound })
    }
}
