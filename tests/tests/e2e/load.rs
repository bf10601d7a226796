//! Sustained load (issue 5 item 7): 100 concurrent clients for 30 s (`LOAD_TEST_SECONDS`
//! to change it) against two slaves. No 5xx but full_capacity, no database-busy error,
//! every accepted task finishes, and the ledger's counts equal the clients' tally.

use std::{
    collections::BTreeSet,
    sync::Mutex,
    time::{Duration, Instant},
};

use cluster_tests::{Cluster, eventually};
use futures_util::future::join_all;
use serde_json::{Value, json};

const CLIENTS: usize = 100;
/// Upper bound on one client's submissions, so the loop is bounded by count as well as time.
const MAX_SUBMISSIONS_PER_CLIENT: usize = 20_000;

cluster_tests::on_both_engines! {
    async fn a_hundred_clients_for_thirty_seconds_meet_only_full_capacity_and_every_accepted_task_finishes() {
        let seconds: u64 = std::env::var("LOAD_TEST_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
        let cluster = Cluster::start(&[2, 2]).await;
        let accepted = Mutex::new(BTreeSet::new());
        let full_capacity = Mutex::new(0usize);
        let until = Instant::now() + Duration::from_secs(seconds);
        let http = reqwest::Client::new();
        let submit_url = cluster.url("/tasks");

        let client = |n: usize| {
            let (http, submit_url, accepted, full_capacity) = (&http, &submit_url, &accepted, &full_capacity);
            async move {
                for round in 0..MAX_SUBMISSIONS_PER_CLIENT {
                    if Instant::now() >= until {
                        return;
                    }
                    let body = json!({"expression": "n * 1000 + r", "variables": {"n": n, "r": round}});
                    let response = http.post(submit_url).json(&body).send().await.expect("master answers");
                    let status = response.status().as_u16();
                    let body: Value = response.json().await.expect("JSON body");
                    match status {
                        201 => {
                            let id = body["id"].as_i64().expect("id");
                            assert!(accepted.lock().unwrap().insert(id), "id {id} handed out twice");
                        }
                        503 if body["error"] == "full_capacity" => *full_capacity.lock().unwrap() += 1,
                        _ => panic!("unexpected answer {status}: {body}"),
                    }
                }
            }
        };
        join_all((0..CLIENTS).map(client)).await;
        let accepted = accepted.into_inner().unwrap();
        let full_capacity = full_capacity.into_inner().unwrap();
        assert!(!accepted.is_empty(), "some tasks were accepted");
        eprintln!("{} accepted, {full_capacity} full_capacity in {seconds} s", accepted.len());

        let counts = eventually("every accepted task to finish", || async {
            let counts = cluster.http.get(&cluster.url("/tasks?limit=1")).await.body["counts"].clone();
            (counts["pending"] == 0 && counts["in_progress"] == 0).then_some(counts)
        })
        .await;
        let total = i64::try_from(accepted.len()).unwrap();
        assert_eq!(counts, json!({"pending": 0, "in_progress": 0, "done": total, "failed": 0, "cancelled": 0}));

        let mut stored = BTreeSet::new();
        let mut after = 0;
        loop {
            let page =
                cluster.http.get(&cluster.url(&format!("/tasks?status=done&limit=1000&after={after}"))).await;
            assert_eq!(page.status, 200);
            for task in page.body["tasks"].as_array().unwrap() {
                stored.insert(task["id"].as_i64().unwrap());
            }
            match page.body["next"].as_i64() {
                Some(next) => after = next,
                None => break,
            }
        }
        assert_eq!(stored, accepted, "the ledger holds exactly the accepted tasks");
    }
}
