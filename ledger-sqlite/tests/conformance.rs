//! The ledger conformance suite on SQLite: a fresh file in a temp dir per check.

use ledger_sqlite::SqliteLedger;

async fn fresh_ledger() -> Option<(SqliteLedger, tempfile::TempDir)> {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = SqliteLedger::open(&dir.path().join("master.db"), Box::new(|_, _| {}), 512)
        .await
        .expect("open a fresh ledger");
    Some((ledger, dir))
}

ledger::conformance_suite!(fresh_ledger());
