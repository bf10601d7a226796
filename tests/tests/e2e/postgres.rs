//! What only the PostgreSQL engine has to face: the database going away under a running
//! master (SPEC §11, issue 12 item 4). Each test has a server of its own to stop.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use cluster_tests::{
    Cluster, MasterOptions, eventually, fast_heartbeats,
    postgres::{self, PrivateServer},
};
use serde_json::{Value, json};

/// What the clients heard while the database went away and came back.
#[derive(Default)]
struct Heard {
    acknowledged: Mutex<Vec<i64>>,
    ledger_unavailable: AtomicUsize,
    /// Any answer other than 2xx, 503 `queue_full` or 503 `ledger_unavailable`.
    unexpected: Mutex<Vec<String>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_and_started_under_sixteen_clients_answers_503_then_resumes_and_loses_nothing() {
    let Some(server) = postgres::or_skip(PrivateServer::start().await) else { return };
    let db = server.fresh_database().await.expect("a database");
    // Queue mode: a submission meeting busy slaves is stored as pending, so every one
    // of them needs the ledger (in reject mode, with every slot held by a task whose
    // result cannot be recorded yet, they would all hear full capacity instead).
    let options = MasterOptions {
        args: vec!["--when-full".to_owned(), "queue".to_owned()],
        ..MasterOptions::default()
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = Cluster::start_on(dir, db, options, fast_heartbeats(), &[4, 4]).await;
    let heard = Heard::default();
    let stop_clients = AtomicBool::new(false);
    let submit_url = cluster.url("/tasks");
    let client = |n: usize| {
        let (submit_url, heard, stop_clients) = (&submit_url, &heard, &stop_clients);
        async move {
            let http = reqwest::Client::new();
            for round in 0..2_000 {
                if stop_clients.load(Ordering::SeqCst) {
                    return;
                }
                let body = json!({"expression": "n + r", "variables": {"n": n, "r": round}, "delay_ms": 10});
                let sent = http.post(submit_url).json(&body).timeout(Duration::from_secs(10)).send().await;
                let response = match sent {
                    Ok(response) => response,
                    Err(error) => {
                        heard.unexpected.lock().unwrap().push(format!("no answer: {error}"));
                        continue;
                    }
                };
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or_default();
                match (status, body["error"].as_str()) {
                    (200..=299, _) => {
                        heard.acknowledged.lock().unwrap().push(body["id"].as_i64().expect("an id"))
                    }
                    (503, Some("queue_full")) => {}
                    (503, Some("ledger_unavailable")) => {
                        heard.ledger_unavailable.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => heard.unexpected.lock().unwrap().push(format!("{status} {body}")),
                }
            }
        }
    };
    let outage = async {
        eventually("some tasks to be acknowledged", || async {
            (heard.acknowledged.lock().unwrap().len() >= 50).then_some(())
        })
        .await;
        server.pg_ctl(&["stop", "-m", "fast"]).await.expect("stop PostgreSQL");
        let health = eventually("healthz to answer 503", || async {
            let reply = cluster.http.get(&cluster.url("/healthz")).await;
            (reply.status == 503).then_some(reply.body)
        })
        .await;
        assert_eq!(health["error"], "ledger_unavailable", "{health}");
        let submitted = cluster.submit("1+1", 0).await;
        assert_eq!(submitted.status_and_code(), (503, "ledger_unavailable"), "{:?}", submitted.body);
        let during = cluster.http.get(&cluster.url("/tasks")).await;
        assert_eq!(during.status_and_code(), (503, "ledger_unavailable"), "{:?}", during.body);
        server.pg_ctl(&["start"]).await.expect("start PostgreSQL again");
        eventually("healthz to answer 200 again, without a restart of the master", || async {
            (cluster.http.get(&cluster.url("/healthz")).await.status == 200).then_some(())
        })
        .await;
        let resumed = heard.acknowledged.lock().unwrap().len();
        eventually("submissions to be acknowledged again", || async {
            (heard.acknowledged.lock().unwrap().len() >= resumed + 50).then_some(())
        })
        .await;
        stop_clients.store(true, Ordering::SeqCst);
    };
    tokio::join!(futures_util::future::join_all((0..16).map(client)), outage);

    assert!(heard.unexpected.lock().unwrap().is_empty(), "unexpected answers: {:?}", heard.unexpected.lock());
    assert!(heard.ledger_unavailable.load(Ordering::SeqCst) > 0, "the clients met the outage");
    let acknowledged = heard.acknowledged.into_inner().unwrap();
    for id in &acknowledged {
        let task = cluster.wait_final(*id).await;
        assert_eq!(task["status"], "done", "{task}");
    }
    let ledger = cluster.ledger().await;
    let recorded_twice: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT task_id FROM task_events WHERE kind = 'done' GROUP BY task_id
                                 HAVING COUNT(*) > 1) AS twice",
    )
    .fetch_one(&ledger)
    .await
    .unwrap();
    assert_eq!(recorded_twice, 0, "no result is recorded twice");
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tasks").fetch_one(&ledger).await.unwrap();
    assert!(usize::try_from(stored).unwrap() >= acknowledged.len(), "every acknowledged task is stored");
}
