//! The ledger conformance suite on PostgreSQL: a fresh database per check, on a
//! throwaway server (or `TEST_DATABASE_URL`). Under `CI=true` a missing server fails.

use ledger_postgres::PgLedger;

async fn fresh_ledger() -> Option<(PgLedger, ())> {
    let url = match cluster_tests::postgres::fresh_database().await {
        Ok(url) => url,
        Err(reason) if !cluster_tests::required() => {
            eprintln!("skipped: no PostgreSQL ({reason})");
            return None;
        }
        Err(reason) => panic!("PostgreSQL is required under CI: {reason}"),
    };
    Some((PgLedger::open(&url).await.expect("open a fresh ledger"), ()))
}

ledger::conformance_suite!(fresh_ledger());
