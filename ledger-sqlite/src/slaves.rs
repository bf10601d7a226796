//! Statements about slaves: registration, state, deletion.

use common::protocol::Registration;
use ledger::{LedgerError, SlaveDeletion, SlaveId, SlaveLoad, SlaveRow, SlaveState, Timestamp};

use super::SqliteLedger;

impl SqliteLedger {
    /// Registers a slave, or re-registers a known name keeping its id and position and
    /// updating url and capacity (SPEC §4). The slave is `up` afterwards.
    pub(crate) async fn register_slave(&self, registration: Registration) -> Result<SlaveRow, LedgerError> {
        let now = Timestamp::now();
        self.write(move |conn| {
            Box::pin(async move {
                let capacity = i64::from(registration.capacity);
                Ok(sqlx::query_as!(
                    SlaveRow,
                    r#"INSERT INTO slaves (id, name, url, capacity, position, state, registered_at, last_seen_at,
                                          instance)
                       VALUES ((SELECT last + 1 FROM slave_ids), ?1, ?2, ?3,
                               (SELECT COALESCE(MAX(position), 0) + 1 FROM slaves), 'up', ?4, ?4, ?5)
                       ON CONFLICT (name) DO UPDATE
                          SET url = excluded.url, capacity = excluded.capacity, instance = excluded.instance,
                              state = 'up', last_seen_at = excluded.last_seen_at
                       RETURNING id AS "id!: SlaveId", name, url, capacity, position,
                                 state AS "state: SlaveState",
                                 registered_at AS "registered_at: Timestamp",
                                 last_seen_at AS "last_seen_at: Timestamp", instance"#,
                    registration.name,
                    registration.url,
                    capacity,
                    now,
                    registration.instance,
                )
                .fetch_one(&mut *conn)
                .await?)
            })
        })
        .await
    }

    /// Every slave in registration order.
    pub(crate) async fn slaves(&self) -> Result<Vec<SlaveRow>, LedgerError> {
        Ok(sqlx::query_as!(
            SlaveRow,
            r#"SELECT id AS "id!: SlaveId", name, url, capacity, position,
                      state AS "state: SlaveState",
                      registered_at AS "registered_at: Timestamp",
                      last_seen_at AS "last_seen_at: Timestamp", instance
                 FROM slaves ORDER BY position"#
        )
        .fetch_all(&self.reads)
        .await?)
    }

    /// In-progress tasks per slave.
    pub(crate) async fn slave_loads(&self) -> Result<Vec<SlaveLoad>, LedgerError> {
        Ok(sqlx::query_as!(
            SlaveLoad,
            r#"SELECT slave_id AS "slave_id!: SlaveId", COUNT(*) AS "running!: i64"
                 FROM tasks WHERE status = 'in_progress' AND slave_id IS NOT NULL GROUP BY slave_id"#
        )
        .fetch_all(&self.reads)
        .await?)
    }

    /// The slave was heard from now (this process's clock is the ledger's here).
    pub(crate) async fn slave_seen(
        &self,
        id: SlaveId,
        state: SlaveState,
    ) -> Result<Option<Timestamp>, LedgerError> {
        let now = Timestamp::now();
        self.write(move |conn| {
            Box::pin(async move {
                let updated = sqlx::query!(
                    "UPDATE slaves SET state = ?1, last_seen_at = ?2 WHERE id = ?3",
                    state,
                    now,
                    id
                )
                .execute(&mut *conn)
                .await?;
                Ok((updated.rows_affected() == 1).then_some(now))
            })
        })
        .await
    }

    pub(crate) async fn slave_down(&self, id: SlaveId) -> Result<bool, LedgerError> {
        self.write(move |conn| {
            Box::pin(async move {
                let updated = sqlx::query!("UPDATE slaves SET state = 'down' WHERE id = ?1", id)
                    .execute(&mut *conn)
                    .await?;
                Ok(updated.rows_affected() == 1)
            })
        })
        .await
    }

    /// Forgets a slave, unless a task is in progress on it: an offer made before the
    /// slave left the registry may have been assigned after its tasks were requeued.
    pub(crate) async fn delete_slave(&self, id: SlaveId) -> Result<SlaveDeletion, LedgerError> {
        self.write(move |conn| {
            Box::pin(async move {
                let deleted = sqlx::query!(
                    "DELETE FROM slaves WHERE id = ?1
                        AND NOT EXISTS (SELECT 1 FROM tasks WHERE status = 'in_progress' AND slave_id = ?1)",
                    id
                )
                .execute(&mut *conn)
                .await?;
                if deleted.rows_affected() == 1 {
                    return Ok(SlaveDeletion::Deleted);
                }
                let known = sqlx::query_scalar!("SELECT COUNT(*) FROM slaves WHERE id = ?1", id)
                    .fetch_one(&mut *conn)
                    .await?;
                Ok(if known == 0 { SlaveDeletion::NotFound } else { SlaveDeletion::StillHoldsTasks })
            })
        })
        .await
    }
}
