//! Master restart on the same ledger (SPEC §6, §7): every state and result survives.

use cluster_tests::{Cluster, MasterOptions};
use serde_json::json;

cluster_tests::on_both_engines! {
    async fn a_master_killed_with_tasks_done_running_and_pending_restarts_with_every_state_intact() {
        let options =
            MasterOptions { args: vec!["--when-full".into(), "queue".into()], ..MasterOptions::default() };
        let mut cluster = Cluster::start_with(options, Vec::new(), &[1, 1]).await;

        let done = cluster.submit("6*7", 0).await;
        let done_id = done.body["id"].as_i64().unwrap();
        cluster.wait_final(done_id).await;
        let running: Vec<i64> = {
            let mut ids = Vec::new();
            for expression in ["1+1", "2+2"] {
                let reply = cluster.submit(expression, 1_500).await;
                assert_eq!(reply.status, 201, "{:?}", reply.body);
                ids.push(reply.body["id"].as_i64().unwrap());
            }
            ids
        };
        let queued = cluster.submit("3+3", 0).await;
        assert_eq!(queued.status, 202, "{:?}", queued.body);
        assert_eq!(queued.body["status"], "pending");
        let queued_id = queued.body["id"].as_i64().unwrap();

        cluster.master.kill9();
        {
            let ledger = cluster.ledger().await;
            let states: Vec<(i64, String, Option<f64>)> =
                sqlx::query_as("SELECT id, status, result FROM tasks ORDER BY id")
                    .fetch_all(&ledger)
                    .await
                    .unwrap();
            assert_eq!(
                states,
                vec![
                    (done_id, "done".to_owned(), Some(42.0)),
                    (running[0], "in_progress".to_owned(), None),
                    (running[1], "in_progress".to_owned(), None),
                    (queued_id, "pending".to_owned(), None),
                ]
            );
        }

        cluster.start_master_again().await;
        let kept = cluster.task(done_id).await;
        assert_eq!((&kept["status"], &kept["result"]), (&json!("done"), &json!(42.0)));
        for (id, expected) in running.iter().zip([2.0, 4.0]) {
            let task = cluster.wait_final(*id).await;
            assert_eq!(
                (task["status"].as_str(), task["result"].as_f64()),
                (Some("done"), Some(expected)),
                "{task}"
            );
            assert_eq!(task["attempts"], 1, "the late result of the first attempt was recorded");
        }
        let task = cluster.wait_final(queued_id).await;
        assert_eq!((task["status"].as_str(), task["result"].as_f64()), (Some("done"), Some(6.0)));
        let counts = cluster.http.get(&cluster.url("/tasks")).await.body["counts"].clone();
        assert_eq!(counts, json!({"pending": 0, "in_progress": 0, "done": 4, "failed": 0, "cancelled": 0}));
    }
}

#[tokio::test]
async fn a_master_stopped_with_sigterm_exits_zero_and_keeps_its_ledger() {
    let mut cluster = Cluster::start(&[1]).await;
    let reply = cluster.submit("10/4", 0).await;
    let id = reply.body["id"].as_i64().unwrap();
    cluster.wait_final(id).await;
    let status = cluster.master.terminate(std::time::Duration::from_secs(30));
    assert!(status.success(), "exit status {status:?}");
    let wal = cluster.db_file().with_extension("db-wal");
    assert!(!wal.exists(), "a clean stop checkpoints and removes the WAL");
    cluster.start_master_again().await;
    assert_eq!(cluster.task(id).await["result"], 2.5);
}
