//! The ledger conformance suite on PostgreSQL: a fresh database per check, on a
//! throwaway server (or `TEST_DATABASE_URL`). Under `CI=true` a missing server fails.

use ledger_postgres::PgLedger;

async fn fresh_ledger() -> Option<(PgLedger, ())> {
    let url = cluster_tests::postgres::or_skip(cluster_tests::postgres::fresh_database().await)?;
    Some((PgLedger::open(&url).await.expect("open a fresh ledger"), ()))
}

ledger::conformance_suite!(fresh_ledger());
