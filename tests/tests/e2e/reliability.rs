//! Crashes, partitions and shutdowns (SPEC §7): an accepted task is never lost and its
//! result is recorded exactly once. Processes are killed for real (`kill -9`).

use std::time::{Duration, Instant};

use cluster_tests::{Cluster, MasterOptions, Reply, eventually, fast_failure_detection, fast_heartbeats};
use serde_json::{Value, json};

async fn crash_test_cluster(capacities: &[u32], extra_master_args: &[&str]) -> Cluster {
    let mut args = fast_failure_detection();
    args.extend(extra_master_args.iter().map(|arg| (*arg).to_owned()));
    let options = MasterOptions { args, ..MasterOptions::default() };
    Cluster::start_with(options, fast_heartbeats(), capacities).await
}

fn id_of(reply: &Reply) -> i64 {
    reply.body["id"].as_i64().unwrap_or_else(|| panic!("no id in {:?}", reply.body))
}

cluster_tests::on_both_engines! {
    async fn a_slave_killed_mid_task_loses_it_to_the_next_slave_and_the_task_finishes_once() {
        let mut cluster = crash_test_cluster(&[1, 1], &[]).await;
        let reply = cluster.submit("6*7", 2_000).await;
        assert_eq!(reply.body["slave"]["name"], "slave-1");
        let id = id_of(&reply);

        cluster.slaves[0].kill9();
        cluster.wait_for_slave_state("slave-1", "down").await;
        let task = cluster.wait_final(id).await;
        assert_eq!((task["status"].as_str(), task["result"].as_f64()), (Some("done"), Some(42.0)), "{task}");
        assert_eq!(task["slave"]["name"], "slave-2");
        assert_eq!(task["attempts"], 2);

        let ledger = cluster.ledger().await;
        let trail: Vec<(String, Option<i64>)> =
            sqlx::query_as("SELECT kind, slave_id FROM task_events WHERE task_id = $1 ORDER BY id")
                .bind(id)
                .fetch_all(&ledger)
                .await
                .unwrap();
        let kinds: Vec<&str> = trail.iter().map(|(kind, _)| kind.as_str()).collect();
        assert_eq!(kinds, vec!["submitted", "requeued", "assigned", "done"]);
        assert_eq!(trail[0].1, Some(1), "assigned to slave-1 at submission");
        assert_eq!(trail[2].1, Some(2), "then to slave-2");
    }
}

cluster_tests::on_both_engines! {
    async fn a_partitioned_slave_whose_result_comes_after_re_dispatch_changes_nothing() {
        let cluster = crash_test_cluster(&[1, 1], &[]).await;
        let reply = cluster.submit("2^10", 1_500).await;
        assert_eq!(reply.body["slave"]["name"], "slave-1");
        let id = id_of(&reply);

        // Frozen, slave-1 goes silent like a host behind a partition, but its work resumes later.
        cluster.slaves[0].signal(libc::SIGSTOP);
        cluster.wait_for_slave_state("slave-1", "down").await;
        let task = cluster.wait_final(id).await;
        assert_eq!((task["slave"]["name"].as_str(), task["attempts"].as_i64()), (Some("slave-2"), Some(2)));
        cluster.slaves[0].signal(libc::SIGCONT);
        cluster.wait_for_slave_state("slave-1", "up").await;

        // What slave-1 will send when its 1.5 s are up: attempt 1 is stale now.
        let late = json!({"slave_id": 1, "attempt": 1, "outcome": {"value": 1024.0}});
        let reply = cluster.http.post(&cluster.url(&format!("/tasks/{id}/result")), &late).await;
        assert_eq!(reply.status_and_code(), (409, "stale_attempt"));
        // Its real late report gets the same answer and gives up: the slave holds nothing after.
        eventually("slave-1 to drop its stale result", || async {
            let availability = cluster.http.get(&format!("{}/availability", cluster.slaves[0].url)).await.body;
            (availability["running"] == 0).then_some(())
        })
        .await;
        assert_eq!(cluster.event_count(id, "done").await, 1);
        let task = cluster.task(id).await;
        assert_eq!((task["result"].as_f64(), task["attempts"].as_i64()), (Some(1024.0), Some(2)));
    }
}

cluster_tests::on_both_engines! {
    async fn result_reports_are_recorded_exactly_once() {
        let cluster = Cluster::start(&[1]).await;
        let id = id_of(&cluster.submit("3*3", 0).await);
        let task = cluster.wait_final(id).await;
        assert_eq!(task["result"], 9.0);
        let url = cluster.url(&format!("/tasks/{id}/result"));

        let duplicate = json!({"slave_id": 1, "attempt": 1, "outcome": {"value": 9.0}});
        let reply = cluster.http.post(&url, &duplicate).await;
        assert_eq!((reply.status, &reply.body["recorded"]), (200, &json!(false)));

        let other_slave = json!({"slave_id": 77, "attempt": 1, "outcome": {"value": 9.0}});
        assert_eq!(cluster.http.post(&url, &other_slave).await.status_and_code(), (403, "forbidden"));
        let stale = json!({"slave_id": 1, "attempt": 2, "outcome": {"value": 9.0}});
        assert_eq!(cluster.http.post(&url, &stale).await.status_and_code(), (409, "stale_attempt"));
        let changed = json!({"slave_id": 1, "attempt": 1, "outcome": {"value": 10.0}});
        assert_eq!(cluster.http.post(&url, &changed).await.status_and_code(), (409, "conflict"));
        let unknown = cluster.url("/tasks/999/result");
        assert_eq!(cluster.http.post(&unknown, &duplicate).await.status_and_code(), (404, "not_found"));

        let task = cluster.task(id).await;
        assert_eq!((task["result"].as_f64(), task["status"].as_str()), (Some(9.0), Some("done")));
        assert_eq!(cluster.event_count(id, "done").await, 1);
    }
}

cluster_tests::on_both_engines! {
    async fn a_report_of_several_results_answers_each_on_its_own_and_records_the_rest() {
        let cluster = Cluster::start(&[3, 1]).await;
        // Three long tasks fill slave-1 (id 1); the fourth goes to slave-2 (id 2).
        let mut ids = Vec::new();
        for expected in ["slave-1", "slave-1", "slave-1", "slave-2"] {
            let reply = cluster.submit("1+1", 60_000).await;
            assert_eq!((reply.status, reply.body["slave"]["name"].as_str()), (201, Some(expected)), "{:?}", reply.body);
            ids.push(id_of(&reply));
        }
        let [won, stale, failing, foreign] = ids[..] else { unreachable!() };
        let report = json!({"slave_id": 1, "results": [
            {"task_id": won, "attempt": 1, "outcome": {"value": 5.0}},
            {"task_id": won, "attempt": 1, "outcome": {"value": 5.0}},
            {"task_id": stale, "attempt": 2, "outcome": {"value": 5.0}},
            {"task_id": foreign, "attempt": 1, "outcome": {"value": 5.0}},
            {"task_id": failing, "attempt": 1, "outcome": {"error": "division by zero gives inf"}},
            {"task_id": 999_999, "attempt": 1, "outcome": {"value": 5.0}},
        ]});
        let reply = cluster.http.post(&cluster.url("/results"), &report).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        let answers = reply.body["results"].as_array().expect("one answer per result");
        let seen: Vec<(i64, i64)> =
            answers.iter().map(|a| (a["task_id"].as_i64().unwrap(), a["status"].as_i64().unwrap())).collect();
        // The same task twice: one is recorded, the other is its duplicate (either order).
        assert_eq!(seen, [(won, 200), (won, 200), (stale, 409), (foreign, 403), (failing, 200), (999_999, 404)]);
        let mut twice = [answers[0]["body"].clone(), answers[1]["body"].clone()];
        twice.sort_by_key(|body| body["recorded"] != true);
        assert_eq!(twice, [json!({"recorded": true, "status": "done"}), json!({"recorded": false, "reason": "duplicate"})]);
        assert_eq!(answers[2]["body"]["error"], "stale_attempt");
        assert_eq!(answers[3]["body"]["error"], "forbidden");
        assert_eq!(answers[4]["body"], json!({"recorded": true, "status": "failed"}));
        assert_eq!(answers[5]["body"]["error"], "not_found");

        let won_task = cluster.task(won).await;
        assert_eq!((won_task["status"].as_str(), won_task["result"].as_f64()), (Some("done"), Some(5.0)));
        let failed = cluster.task(failing).await;
        assert_eq!((failed["status"].as_str(), failed["error"].as_str()), (Some("failed"), Some("division by zero gives inf")));
        for untouched in [stale, foreign] {
            assert_eq!(cluster.task(untouched).await["status"], "in_progress", "task {untouched}");
        }
        assert_eq!(cluster.event_count(won, "done").await, 1);

        let empty = json!({"slave_id": 1, "results": []});
        assert_eq!(cluster.http.post(&cluster.url("/results"), &empty).await.status_and_code(), (400, "invalid_request"));
    }
}

cluster_tests::on_both_engines! {
    async fn a_cancelled_task_is_dropped_by_its_slave_and_its_late_result_is_ignored() {
        let cluster = Cluster::start(&[1]).await;
        let id = id_of(&cluster.submit("1+1", 30_000).await);
        let reply = cluster.http.delete(&cluster.url(&format!("/tasks/{id}"))).await;
        assert_eq!((reply.status, reply.body["status"].as_str()), (200, Some("cancelled")));
        eventually("the slave to drop the cancelled task", || async {
            let availability = cluster.http.get(&format!("{}/availability", cluster.slaves[0].url)).await.body;
            (availability["available"] == true).then_some(())
        })
        .await;
        let late = json!({"slave_id": 1, "attempt": 1, "outcome": {"value": 2.0}});
        let reply = cluster.http.post(&cluster.url(&format!("/tasks/{id}/result")), &late).await;
        assert_eq!((reply.status, &reply.body["recorded"]), (200, &json!(false)));
        assert_eq!(cluster.task(id).await["status"], "cancelled");
        let again = cluster.http.delete(&cluster.url(&format!("/tasks/{id}"))).await;
        assert_eq!(again.status_and_code(), (409, "conflict"));
        // The freed slot takes new work at once.
        assert_eq!(cluster.submit("2+2", 0).await.status, 201);
    }
}

cluster_tests::on_both_engines! {
    async fn a_task_that_loses_every_attempt_ends_failed_with_the_reason() {
        let mut cluster = crash_test_cluster(&[1, 1], &["--max-attempts", "2"]).await;
        let id = id_of(&cluster.submit("1+1", 30_000).await);
        cluster.slaves[0].kill9();
        let moved = eventually("the task to move to slave-2", || async {
            let task = cluster.task(id).await;
            (task["status"] == "in_progress" && task["slave"]["name"] == "slave-2").then_some(task)
        })
        .await;
        assert_eq!(moved["attempts"], 2);
        // The ledger records the assignment before the offer reaches the slave: kill
        // slave-2 only once it holds the task, or the offer finds no slave and the task
        // (rightly) goes back to pending with its attempt not spent.
        let slave_2 = cluster.slaves[1].url.clone();
        eventually("slave-2 to hold the task", || async {
            let availability = cluster.http.get(&format!("{slave_2}/availability")).await;
            (availability.body["running"] == 1).then_some(())
        })
        .await;
        cluster.slaves[1].kill9();
        let task = cluster.wait_final(id).await;
        assert_eq!(task["status"], "failed");
        assert_eq!(task["result"], Value::Null);
        assert_eq!(task["error"], "slave lost 2 times; last: slave-2 went silent");
    }
}

cluster_tests::on_both_engines! {
    async fn a_slave_restarted_under_its_name_hands_its_old_task_back_at_once() {
        // A slave timeout far beyond the test deadline: only the re-registration can recover it.
        let options = MasterOptions {
            args: ["--slave-timeout", "120s", "--heartbeat-interval", "200ms"].map(String::from).to_vec(),
            ..MasterOptions::default()
        };
        let mut cluster = Cluster::start_with(options, fast_heartbeats(), &[1]).await;
        let id = id_of(&cluster.submit("5-3", 30_000).await);
        cluster.slaves[0].kill9();
        cluster.slaves[0] = cluster.spawn_slave("slave-1", 1);
        // Re-registration requeues the lost task; the restarted slave then runs it (delay 30 s),
        // so what we can see promptly is the second attempt in progress.
        let task = eventually("attempt 2 in progress on the restarted slave", || async {
            let task = cluster.task(id).await;
            (task["attempts"] == 2 && task["status"] == "in_progress").then_some(task)
        })
        .await;
        assert_eq!(task["slave"]["name"], "slave-1");
        assert_eq!(cluster.event_count(id, "requeued").await, 1);
    }
}

cluster_tests::on_both_engines! {
    async fn sigterm_lets_a_slave_finish_its_task_and_exit_zero() {
        let mut cluster = Cluster::start(&[1]).await;
        let id = id_of(&cluster.submit("7*6", 1_000).await);
        let status = cluster.slaves[0].terminate(Duration::from_secs(30));
        assert!(status.success(), "slave exit status {status:?}");
        let task = cluster.wait_final(id).await;
        assert_eq!((task["status"].as_str(), task["result"].as_f64()), (Some("done"), Some(42.0)));
        assert_eq!(task["attempts"], 1);
    }
}

cluster_tests::on_both_engines! {
    async fn a_slave_stopping_past_its_grace_hands_the_task_back_for_another_slave() {
        let options = MasterOptions {
            args: ["--slave-timeout", "120s", "--heartbeat-interval", "200ms"].map(String::from).to_vec(),
            ..MasterOptions::default()
        };
        let mut cluster = Cluster::start_with(options, fast_heartbeats(), &[]).await;
        let first = cluster.spawn_slave_with("slave-1", 1, &["--shutdown-grace", "100ms"]);
        cluster.slaves.push(first);
        cluster.wait_for_slave_state("slave-1", "up").await;
        cluster.add_slave("slave-2", 1).await;

        let id = id_of(&cluster.submit("8/2", 2_000).await);
        let status = cluster.slaves[0].terminate(Duration::from_secs(30));
        assert!(status.success(), "slave exit status {status:?}");
        // The final heartbeat lists nothing, so the master requeues without the 120 s timeout.
        let task = cluster.wait_final(id).await;
        assert_eq!((task["status"].as_str(), task["result"].as_f64()), (Some("done"), Some(4.0)));
        assert_eq!((task["slave"]["name"].as_str(), task["attempts"].as_i64()), (Some("slave-2"), Some(2)));
    }
}

cluster_tests::on_both_engines! {
    async fn a_master_killed_under_load_keeps_every_task_it_acknowledged_and_nothing_it_refused() {
        let mut cluster = crash_test_cluster(&[4, 4], &[]).await;
        let acknowledged = std::sync::Mutex::new(Vec::new());
        let unanswered = std::sync::atomic::AtomicUsize::new(0);
        let started = Instant::now();
        let submit_url = cluster.url("/tasks");
        let client = |n: usize| {
            let (submit_url, acknowledged, unanswered) = (&submit_url, &acknowledged, &unanswered);
            async move {
                for round in 0..200 {
                    let body = json!({"expression": "n + r", "variables": {"n": n, "r": round}, "delay_ms": 20});
                    let request = reqwest::Client::new().post(submit_url).json(&body);
                    match request.timeout(Duration::from_secs(5)).send().await {
                        Ok(response) if response.status().is_success() => {
                            let body: Value = response.json().await.unwrap_or_default();
                            acknowledged.lock().unwrap().push(body["id"].as_i64().expect("2xx has an id"));
                        }
                        Ok(response) => assert_eq!(response.status(), 503, "only full capacity may refuse"),
                        Err(_) => {
                            unanswered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            return; // the master is gone
                        }
                    }
                    if started.elapsed() > Duration::from_secs(20) {
                        return;
                    }
                }
            }
        };
        let load = futures_util::future::join_all((0..16).map(client));
        let killer = async {
            eventually("some tasks to be acknowledged", || async {
                (acknowledged.lock().unwrap().len() >= 50).then_some(())
            })
            .await;
            cluster.master.kill9();
        };
        tokio::join!(load, killer);
        let acknowledged = acknowledged.into_inner().unwrap();
        let unanswered = unanswered.into_inner();

        cluster.start_master_again().await;
        for id in &acknowledged {
            let task = cluster.wait_final(*id).await;
            assert_eq!(task["status"], "done", "{task}");
        }
        let ledger = cluster.ledger().await;
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tasks").fetch_one(&ledger).await.unwrap();
        let rows = usize::try_from(rows).unwrap();
        assert!(rows >= acknowledged.len(), "every acknowledged task is stored");
        assert!(rows <= acknowledged.len() + unanswered, "only requests cut by the crash may add rows");
        let recorded_twice: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM (SELECT task_id FROM task_events WHERE kind = 'done' GROUP BY task_id HAVING COUNT(*) > 1) AS twice",
        )
        .fetch_one(&ledger)
        .await
        .unwrap();
        assert_eq!(recorded_twice, 0);
    }
}

cluster_tests::on_both_engines! {
    async fn deregistering_a_slave_re_dispatches_its_task_to_the_next_slave() {
        let options = MasterOptions { token: Some("admin".to_owned()), ..MasterOptions::default() };
        let cluster = Cluster::start_with(options, Vec::new(), &[1, 1]).await;
        let reply = cluster.submit("9-2", 1_500).await;
        assert_eq!(reply.body["slave"]["name"], "slave-1");
        let id = id_of(&reply);
        let slave_id = reply.body["slave"]["id"].as_i64().unwrap();

        let gone = cluster.http.delete(&cluster.url(&format!("/slaves/{slave_id}"))).await;
        assert_eq!(gone.status, 204, "{:?}", gone.body);
        let task = cluster.wait_final(id).await;
        assert_eq!((task["status"].as_str(), task["result"].as_f64()), (Some("done"), Some(7.0)));
        assert_eq!((task["slave"]["name"].as_str(), task["attempts"].as_i64()), (Some("slave-2"), Some(2)));
        let slaves = cluster.http.get(&cluster.url("/slaves")).await.body;
        let names: Vec<&Value> = slaves["slaves"].as_array().unwrap().iter().map(|s| &s["name"]).collect();
        assert_eq!(names, vec!["slave-2"]);
        let again = cluster.http.delete(&cluster.url(&format!("/slaves/{slave_id}"))).await;
        assert_eq!(again.status_and_code(), (404, "not_found"));
    }
}

cluster_tests::on_both_engines! {
    async fn a_task_past_its_deadline_is_taken_from_its_slave_and_run_elsewhere() {
        // The slave stays "up" (120 s timeout) but its task overruns: only the deadline can act.
        let options = MasterOptions {
            // An offer to the frozen slave must give up before the next deadline passes.
            args: ["--slave-timeout", "120s", "--task-timeout", "300ms", "--offer-timeout", "100ms"]
                .map(String::from)
                .to_vec(),
            ..MasterOptions::default()
        };
        let cluster = Cluster::start_with(options, Vec::new(), &[1, 1]).await;
        let reply = cluster.submit("2*21", 200).await;
        assert_eq!(reply.body["slave"]["name"], "slave-1");
        let id = id_of(&reply);
        // Frozen, slave-1 overruns its deadline (300 ms + 200 ms).
        cluster.slaves[0].signal(libc::SIGSTOP);
        let task = cluster.wait_final(id).await;
        assert_eq!((task["status"].as_str(), task["result"].as_f64()), (Some("done"), Some(42.0)));
        assert_eq!((task["slave"]["name"].as_str(), task["attempts"].as_i64()), (Some("slave-2"), Some(2)));
        cluster.slaves[0].signal(libc::SIGCONT);
        assert_eq!(cluster.event_count(id, "done").await, 1);
    }
}
