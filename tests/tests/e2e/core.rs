//! The product's main path (SPEC §1, §4, §5): the seed walk-through, registration
//! order, many concurrent submissions.

use std::collections::HashSet;

use cluster_tests::{Cluster, eventually};
use futures_util::future::join_all;
use serde_json::{Value, json};

cluster_tests::on_both_engines! {
    async fn seed_walkthrough_assigns_in_order_then_answers_full_capacity_and_both_tasks_finish() {
        let cluster = Cluster::start(&[1, 1]).await;

        let first = cluster.submit("2+3*4", 2_000).await;
        assert_eq!(first.status, 201, "{:?}", first.body);
        assert_eq!(first.body["message"], "Task successfully assigned to slave-1");
        assert_eq!(first.body["status"], "in_progress");
        assert_eq!(first.body["slave"]["name"], "slave-1");

        let second = cluster
            .submit_json(&json!({"expression": "sqrt(x)*pi", "variables": {"x": 2}, "delay_ms": 2_000}))
            .await;
        assert_eq!(second.status, 201, "{:?}", second.body);
        assert_eq!(second.body["message"], "Task successfully assigned to slave-2");

        let third = cluster.submit("1+1", 0).await;
        assert_eq!(third.status_and_code(), (503, "full_capacity"));
        assert_eq!(third.body["message"], "All slaves are busy: full capacity");
        assert!(third.headers.contains_key("retry-after"), "503 carries Retry-After");

        let listed = cluster.http.get(&cluster.url("/get-tasks")).await;
        assert_eq!(listed.status, 200);
        let statuses: Vec<&Value> =
            listed.body["tasks"].as_array().unwrap().iter().map(|t| &t["status"]).collect();
        assert_eq!(statuses, vec!["in_progress", "in_progress"], "the refused task left no row");
        assert_eq!(listed.body["counts"]["in_progress"], 2);

        let first_id = first.body["id"].as_i64().unwrap();
        let second_id = second.body["id"].as_i64().unwrap();
        let done = cluster.wait_final(first_id).await;
        assert_eq!((done["status"].as_str(), done["result"].as_f64()), (Some("done"), Some(14.0)));
        let done = cluster.wait_final(second_id).await;
        assert_eq!(done["status"], "done");
        let expected = 2f64.sqrt() * std::f64::consts::PI;
        assert!((done["result"].as_f64().unwrap() - expected).abs() < 1e-12, "{done}");
        assert_eq!(done["slave"]["name"], "slave-2");
        assert_eq!(done["attempts"], 1);

        let listed = cluster.http.get(&cluster.url("/tasks")).await.body;
        assert_eq!(
            listed["counts"],
            json!({"pending": 0, "in_progress": 0, "done": 2, "failed": 0, "cancelled": 0})
        );

        let ledger = cluster.ledger().await;
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tasks").fetch_one(&ledger).await.unwrap();
        assert_eq!(rows, 2, "full capacity stored nothing");
        let trail: Vec<String> =
            sqlx::query_scalar("SELECT kind FROM task_events WHERE task_id = $1 ORDER BY id")
                .bind(first_id)
                .fetch_all(&ledger)
                .await
                .unwrap();
        assert_eq!(trail, vec!["submitted", "done"]);
    }
}

cluster_tests::on_both_engines! {
    async fn a_free_slave_takes_work_again_once_its_task_is_done() {
        let cluster = Cluster::start(&[1]).await;
        let first = cluster.submit("1+1", 300).await;
        assert_eq!(first.status, 201);
        assert_eq!(cluster.submit("1+1", 0).await.status_and_code(), (503, "full_capacity"));
        cluster.wait_final(first.body["id"].as_i64().unwrap()).await;
        let again = cluster.submit("2+2", 0).await;
        assert_eq!(again.status, 201, "{:?}", again.body);
        let done = cluster.wait_final(again.body["id"].as_i64().unwrap()).await;
        assert_eq!(done["result"], 4.0);
    }
}

cluster_tests::on_both_engines! {
    async fn the_slave_registered_first_is_asked_first_also_after_it_registers_again() {
        let mut cluster = Cluster::start(&[]).await;
        // Names that sort the other way round: order is registration, not name.
        cluster.add_slave("zeta", 1).await;
        cluster.add_slave("alpha", 1).await;

        let taken = cluster.submit("1+2", 0).await;
        assert_eq!(taken.body["slave"]["name"], "zeta");
        cluster.wait_final(taken.body["id"].as_i64().unwrap()).await;

        let before = cluster.wait_for_slave_state("zeta", "up").await;
        cluster.slaves[0].kill9();
        cluster.slaves[0] = cluster.spawn_slave("zeta", 1);
        let after = eventually("zeta to register again from a new address", || async {
            let slaves = cluster.http.get(&cluster.url("/slaves")).await.body;
            let zeta = slaves["slaves"].as_array()?.iter().find(|s| s["name"] == "zeta")?.clone();
            (zeta["url"] != before["url"] && zeta["state"] == "up").then_some(zeta)
        })
        .await;
        assert_eq!((&after["id"], &after["position"]), (&before["id"], &before["position"]));

        let slaves = cluster.http.get(&cluster.url("/slaves")).await.body;
        let order: Vec<&Value> = slaves["slaves"].as_array().unwrap().iter().map(|s| &s["name"]).collect();
        assert_eq!(order, vec!["zeta", "alpha"]);
        let taken = cluster.submit("3+4", 0).await;
        assert_eq!(taken.body["message"], "Task successfully assigned to zeta");
    }
}

cluster_tests::on_both_engines! {
    async fn two_hundred_concurrent_submissions_all_finish_with_unique_ids_and_no_busy_errors() {
        let cluster = Cluster::start(&[100, 100]).await;
        let submissions = (0..200).map(|n| {
            let cluster = &cluster;
            async move { cluster.submit_json(&json!({"expression": "n * 2 + 1", "variables": {"n": n}})).await }
        });
        let replies = join_all(submissions).await;
        let mut ids = HashSet::new();
        for reply in &replies {
            assert_eq!(reply.status, 201, "{:?}", reply.body);
            assert!(ids.insert(reply.body["id"].as_i64().unwrap()), "duplicate id {}", reply.body["id"]);
        }
        for (n, reply) in replies.iter().enumerate() {
            let task = cluster.wait_final(reply.body["id"].as_i64().unwrap()).await;
            assert_eq!(task["status"], "done", "{task}");
            assert_eq!(task["result"].as_f64(), Some(n as f64 * 2.0 + 1.0));
        }
        let counts = cluster.http.get(&cluster.url("/tasks?limit=1")).await.body["counts"].clone();
        assert_eq!(counts["done"], 200);
    }
}

cluster_tests::on_both_engines! {
    async fn queue_mode_answers_202_pending_runs_tasks_in_order_and_refuses_past_the_queue_limit() {
        let options = cluster_tests::MasterOptions {
            args: ["--when-full", "queue", "--queue-limit", "2"].map(String::from).to_vec(),
            ..cluster_tests::MasterOptions::default()
        };
        let cluster = Cluster::start_with(options, Vec::new(), &[1]).await;
        let running = cluster.submit("1+1", 1_000).await;
        assert_eq!(running.status, 201, "{:?}", running.body);
        let mut queued = Vec::new();
        for expression in ["2+2", "3+3"] {
            let reply = cluster.submit(expression, 0).await;
            assert_eq!((reply.status, reply.body["status"].as_str()), (202, Some("pending")), "{:?}", reply.body);
            queued.push(reply.body["id"].as_i64().unwrap());
        }
        let refused = cluster.submit("4+4", 0).await;
        assert_eq!(refused.status_and_code(), (503, "queue_full"));
        assert!(refused.headers.contains_key("retry-after"));

        let first = cluster.wait_final(queued[0]).await;
        let second = cluster.wait_final(queued[1]).await;
        assert_eq!((first["result"].as_f64(), second["result"].as_f64()), (Some(4.0), Some(6.0)));
        let (first_at, second_at) =
            (first["assigned_at"].as_str().unwrap(), second["assigned_at"].as_str().unwrap());
        assert!(first_at <= second_at, "oldest pending first: {first_at} vs {second_at}");
        let counts = cluster.http.get(&cluster.url("/tasks")).await.body["counts"].clone();
        assert_eq!(counts, json!({"pending": 0, "in_progress": 0, "done": 3, "failed": 0, "cancelled": 0}));
    }
}

cluster_tests::on_both_engines! {
    async fn a_slave_the_master_forgot_registers_again_on_its_next_heartbeat() {
        let options = cluster_tests::MasterOptions {
            args: ["--heartbeat-interval", "200ms", "--slave-timeout", "1s"].map(String::from).to_vec(),
            ..cluster_tests::MasterOptions::default()
        };
        let cluster = Cluster::start_with(options, cluster_tests::fast_heartbeats(), &[1]).await;
        let before = cluster.wait_for_slave_state("slave-1", "up").await;
        let gone = cluster.http.delete(&cluster.url(&format!("/slaves/{}", before["id"]))).await;
        assert_eq!(gone.status, 204);
        // The next heartbeat gets 404 and the slave registers again: a new registration.
        eventually("slave-1 to register again", || async {
            let slaves = cluster.http.get(&cluster.url("/slaves")).await.body;
            let slave = slaves["slaves"].as_array()?.iter().find(|s| s["name"] == "slave-1")?.clone();
            (slave["registered_at"] != before["registered_at"]).then_some(slave)
        })
        .await;
        let reply = cluster.submit("5*5", 0).await;
        assert_eq!(reply.body["message"], "Task successfully assigned to slave-1");
    }
}

cluster_tests::on_both_engines! {
    async fn a_tasks_events_tell_its_story_in_order_and_an_unknown_task_is_404() {
        let cluster = Cluster::start(&[1]).await;
        let reply = cluster.submit("6*7", 0).await;
        assert_eq!(reply.status, 201, "{:?}", reply.body);
        let id = reply.body["id"].as_i64().expect("an id");
        cluster.wait_final(id).await;

        let reply = cluster.http.get(&cluster.url(&format!("/tasks/{id}/events"))).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        assert_eq!(reply.body["task_id"], id);
        let events = reply.body["events"].as_array().expect("events");
        let kinds: Vec<_> = events.iter().map(|e| e["kind"].as_str().unwrap_or("?")).collect();
        assert_eq!(kinds, ["submitted", "done"]);
        assert!(events.iter().all(|e| e["slave"]["name"] == "slave-1"), "{events:?}");
        let times: Vec<_> = events
            .iter()
            .map(|e| chrono::DateTime::parse_from_rfc3339(e["at"].as_str().expect("at")).expect("RFC 3339"))
            .collect();
        assert!(times.windows(2).all(|pair| pair[0] <= pair[1]), "{times:?}");
        assert!(events.windows(2).all(|pair| pair[0]["id"].as_i64() < pair[1]["id"].as_i64()));

        let unknown = cluster.http.get(&cluster.url(&format!("/tasks/{}/events", id + 1000))).await;
        assert_eq!(unknown.status_and_code(), (404, "not_found"), "{:?}", unknown.body);
        let bad = cluster.http.get(&cluster.url("/tasks/x/events")).await;
        assert_eq!(bad.status_and_code(), (400, "invalid_request"), "{:?}", bad.body);
    }
}

/// The API's typed client, of this cluster's master, without a token.
fn typed_client(cluster: &Cluster) -> master_client::MasterClient {
    let options = master_client::Options::default();
    master_client::MasterClient::new(&cluster.master.url, common::auth::Token::default(), &options)
        .expect("a client")
}

cluster_tests::on_both_engines! {
    async fn the_typed_client_reads_every_answer_exactly_as_the_master_writes_it() {
        let cluster = Cluster::start(&[1]).await;
        let client = typed_client(&cluster);
        let mut variables = common::protocol::Variables::new();
        variables.insert("x".to_owned(), 2.0);
        let submitted = client.submit("sqrt(x)*pi", &variables, 0).await.expect("submitted");
        assert_eq!(submitted.message, "Task successfully assigned to slave-1");
        let task = client.wait_final(submitted.id, std::time::Duration::from_secs(5)).await.expect("final");
        assert!(task.is_final() && task.status == "done", "{task:?}");
        // What the client read, written back, is the master's JSON to the letter.
        let raw = cluster.task(submitted.id).await;
        assert_eq!(serde_json::to_value(&task).unwrap(), raw);
        let page = client.tasks(None, None, 10).await.expect("a page");
        let raw = cluster.http.get(&cluster.url("/tasks?limit=10")).await.body;
        assert_eq!(serde_json::to_value(&page).unwrap(), raw);
        let slaves = client.slaves().await.expect("slaves");
        let raw = cluster.http.get(&cluster.url("/slaves")).await.body;
        assert_eq!(serde_json::to_value(&slaves).unwrap(), raw["slaves"]);
        let events = client.task_events(submitted.id).await.expect("events");
        let raw = cluster.http.get(&cluster.url(&format!("/tasks/{}/events", submitted.id))).await.body;
        assert_eq!(serde_json::to_value(&events).unwrap(), raw["events"]);
        let refused = client.task(submitted.id + 1000, std::time::Duration::ZERO).await.unwrap_err();
        assert_eq!((refused.status(), refused.code()), (Some(404), Some("not_found")));
    }
}

cluster_tests::on_both_engines! {
    async fn a_submit_connection_answers_back_to_back_submissions_as_the_typed_client_does() {
        let cluster = Cluster::start(&[1]).await;
        let client = typed_client(&cluster);
        let mut submitter = client.submitter(std::time::Duration::from_secs(10)).expect("a submitter");
        let no_variables = common::protocol::Variables::new();
        let mut variables = common::protocol::Variables::new();
        variables.insert("x".to_owned(), 2.0);

        let first = submitter.submit("sqrt(x)*pi", &variables, 0).await.expect("submitted");
        assert_eq!((first.status.as_str(), first.message.as_str()), ("in_progress", "Task successfully assigned to slave-1"));
        let done = client.wait_final(first.id, std::time::Duration::from_secs(5)).await.expect("final");
        assert_eq!((done.status.as_str(), done.expression.as_str()), ("done", "sqrt(x)*pi"));
        assert_eq!(done.result, Some(2.0_f64.sqrt() * std::f64::consts::PI));

        // The same connection carries on after an error answer, with the error shape read.
        let busy = submitter.submit("1+1", &no_variables, 60_000).await.expect("the slot taken");
        let refused = submitter.submit("2+2", &no_variables, 0).await.unwrap_err();
        assert_eq!((refused.status(), refused.code()), (Some(503), Some("full_capacity")), "{refused}");
        let invalid = submitter.submit("2+*3", &no_variables, 0).await.unwrap_err();
        assert_eq!((invalid.status(), invalid.code()), (Some(400), Some("invalid_expression")), "{invalid}");
        let cancelled = cluster.http.delete(&cluster.url(&format!("/tasks/{}", busy.id))).await;
        assert_eq!(cancelled.status, 200, "{:?}", cancelled.body);
        eventually("slave-1 to drop the cancelled task", || async {
            let slaves = cluster.http.get(&cluster.url("/slaves")).await.body;
            (slaves["slaves"][0]["running"] == 0).then_some(())
        })
        .await;
        let next = submitter.submit("3*3", &no_variables, 0).await.expect("submitted after the errors");
        assert_eq!(next.id, busy.id + 1, "refused submissions store nothing");
        assert_eq!(cluster.wait_final(next.id).await["result"], 9.0);

        // What it read is the answer the master wrote, as the typed client reads it.
        let page = client.tasks(None, None, 10).await.expect("a page");
        assert_eq!(page.counts.done + page.counts.cancelled, 3, "{:?}", page.counts);
        let https = cluster.master.url.replace("http://", "https://");
        let not_http = master_client::Submitter::new(&https, &common::auth::Token::default(), std::time::Duration::from_secs(1));
        assert!(not_http.is_err(), "a submitter speaks plain HTTP to host:port only");
    }
}

cluster_tests::on_both_engines! {
    async fn activity_counts_the_tasks_finished_in_the_last_minutes_with_their_round_trips() {
        let cluster = Cluster::start(&[2]).await;
        let empty = cluster.http.get(&cluster.url("/activity")).await;
        assert_eq!(empty.status, 200);
        assert_eq!((empty.body["window_s"].as_u64(), empty.body["seconds"].as_array().map(Vec::len)), (Some(300), Some(0)));
        for n in 0..3 {
            let id = cluster.submit(&format!("{n}*2"), 0).await.body["id"].as_i64().expect("an id");
            cluster.wait_final(id).await;
        }
        let activity = cluster.http.get(&cluster.url("/activity")).await.body;
        let seconds = activity["seconds"].as_array().expect("seconds");
        let finished: u64 = seconds.iter().filter_map(|second| second["finished"].as_u64()).sum();
        assert_eq!(finished, 3, "{activity}");
        for second in seconds {
            let (p50, p99) = (second["p50_ms"].as_f64().expect("p50"), second["p99_ms"].as_f64().expect("p99"));
            assert!(0.0 < p50 && p50 <= p99, "{second}");
            assert!(second["ago_s"].as_u64().is_some_and(|ago| ago < 300), "{second}");
        }
        assert!(activity["uptime_s"].as_f64().is_some_and(|uptime| uptime > 0.0));
    }
}

cluster_tests::on_both_engines! {
    async fn the_history_lists_newest_first_by_status_and_by_slave_with_a_cursor_each_way() {
        let cluster = Cluster::start(&[1, 1]).await;
        // Two at a time: each pair holds both slaves, so slave-1 and slave-2 alternate.
        let mut ids = Vec::new();
        for pair in 0..3 {
            let first = cluster.submit(&format!("{pair}*2"), 300).await;
            let second = cluster.submit("1/0", 300).await;
            for reply in [&first, &second] {
                assert_eq!(reply.status, 201, "{:?}", reply.body);
                ids.push(reply.body["id"].as_i64().unwrap());
            }
            for &id in &ids[ids.len() - 2..] {
                cluster.wait_final(id).await;
            }
        }
        let newest: Vec<i64> = ids.iter().rev().copied().collect();
        assert_eq!(listed(&cluster, "order=newest&limit=4").await, (newest[..4].to_vec(), Some(newest[3])));
        assert_eq!(listed(&cluster, &format!("before={}&limit=4", newest[3])).await, (newest[4..].to_vec(), None));
        let failed: Vec<i64> = newest.iter().copied().step_by(2).collect();
        assert_eq!(listed(&cluster, "order=newest&status=failed").await.0, failed, "1/0 fails on slave-2");
        let slave_two = cluster.http.get(&cluster.url("/slaves")).await.body["slaves"][1]["id"].as_i64().unwrap();
        assert_eq!(listed(&cluster, &format!("slave={slave_two}&order=newest")).await.0, failed);
        assert_eq!(listed(&cluster, &format!("slave={slave_two}&status=done")).await.0, Vec::<i64>::new());
        assert_eq!(listed(&cluster, "order=oldest&limit=2").await, (ids[..2].to_vec(), Some(ids[1])));
        for bad in ["after=1&before=5", "order=sideways", "order=oldest&before=3", "order=newest&after=2", "slave=x"] {
            let reply = cluster.http.get(&cluster.url(&format!("/tasks?{bad}"))).await;
            assert_eq!(reply.status_and_code(), (400, "invalid_request"), "{bad}: {:?}", reply.body);
        }
    }

    /// Issue 14: a long poll woken by the result answers from the end the master just
    /// recorded rather than reading the task again; what it answers is the stored row.
    async fn a_long_poll_woken_by_the_result_answers_the_task_exactly_as_stored() {
        let cluster = Cluster::start(&[2]).await;
        let done = cluster.submit("2+3*4", 400).await;
        let failing = cluster.submit("1/0", 400).await;
        assert_eq!((done.status, failing.status), (201, 201), "{:?} {:?}", done.body, failing.body);
        for (id, status) in [(done.body["id"].as_i64().unwrap(), "done"), (failing.body["id"].as_i64().unwrap(), "failed")] {
            // Sent while the slave still works (400 ms), so the result is what wakes it.
            let polled = cluster.http.get(&cluster.url(&format!("/tasks/{id}?wait=10"))).await;
            assert_eq!(polled.status, 200, "{:?}", polled.body);
            assert_eq!(polled.body["status"], status, "{:?}", polled.body);
            assert!(polled.body["finished_at"].is_string(), "{:?}", polled.body);
            assert_eq!(polled.body, cluster.task(id).await, "the long poll's answer is the stored task");
        }
        let polled_done = cluster.task(done.body["id"].as_i64().unwrap()).await;
        assert_eq!(polled_done["result"], 14.0);
    }
}

/// The ids `GET /tasks?{query}` lists, and its `next` cursor.
async fn listed(cluster: &Cluster, query: &str) -> (Vec<i64>, Option<i64>) {
    let reply = cluster.http.get(&cluster.url(&format!("/tasks?{query}"))).await;
    assert_eq!(reply.status, 200, "{query}: {:?}", reply.body);
    let found = reply.body["tasks"].as_array().unwrap().iter().map(|t| t["id"].as_i64().unwrap()).collect();
    (found, reply.body["next"].as_i64())
}

cluster_tests::on_both_engines! {
    /// Issue 14: the pending tasks bound for one slave go to it in one request; it takes
    /// what fits, and the rest stay pending and go to the next slave in order.
    async fn a_multi_task_offer_fills_the_slave_and_the_rest_go_to_the_next_slave_in_order() {
        let options = cluster_tests::MasterOptions {
            args: ["--when-full", "queue"].map(String::from).to_vec(),
            ..cluster_tests::MasterOptions::default()
        };
        // A slave refused stays skipped until it heartbeats or a slot of it frees (the
        // master frees its count of a slot when it records a result, a moment before
        // the slave hears so and frees the slot itself): fast heartbeats keep that short.
        let cluster = Cluster::start_with(options, cluster_tests::fast_heartbeats(), &[2, 2]).await;
        // The master counts room for 5 on slave-1 (as a stale or wrong registration
        // would have it); the slave has 2 slots, and its own answer decides (SPEC §5).
        let slave_1 = &cluster.slaves[0].url;
        let instance = cluster.http.get(&format!("{slave_1}/availability")).await.body["instance"].clone();
        let registration = json!({"name": "slave-1", "url": slave_1, "capacity": 5, "instance": instance});
        let again = cluster.http.post(&cluster.url("/slaves"), &registration).await;
        assert_eq!(again.status, 201, "{:?}", again.body);

        // Slave-1 busy for 1 s, slave-2 for 4 s; then five tasks of 6 s wait.
        for (expression, delay_ms, slave) in
            [("0", 1_000, "slave-1"), ("0", 1_000, "slave-1"), ("0", 4_000, "slave-2"), ("0", 4_000, "slave-2")]
        {
            let reply = cluster.submit(expression, delay_ms).await;
            assert_eq!((reply.status, reply.body["slave"]["name"].as_str()), (201, Some(slave)), "{:?}", reply.body);
        }
        let mut waiting = Vec::new();
        for n in 1..=5 {
            let reply = cluster.submit(&format!("{n}*10"), 6_000).await;
            assert_eq!((reply.status, reply.body["status"].as_str()), (202, Some("pending")), "{:?}", reply.body);
            waiting.push(reply.body["id"].as_i64().unwrap());
        }

        // When slave-1 frees, the master offers it the oldest pending tasks in one
        // request; it takes what its two slots hold. The rest stay pending until slave-2 frees,
        // which takes the next two; the last waits for the first slave with room.
        let mut ran_on = Vec::new();
        for (n, id) in waiting.iter().enumerate() {
            let task = cluster.wait_final(*id).await;
            assert_eq!((task["status"].as_str(), task["result"].as_f64()), (Some("done"), Some((n + 1) as f64 * 10.0)));
            ran_on.push(task["slave"]["name"].as_str().unwrap().to_owned());
        }
        let ledger = cluster.ledger().await;
        let history: Vec<(i64, String, Option<i64>)> =
            sqlx::query_as("SELECT task_id, kind, slave_id FROM task_events ORDER BY id").fetch_all(&ledger).await.unwrap();
        assert_eq!(ran_on, ["slave-1", "slave-1", "slave-2", "slave-2", "slave-1"], "{history:?}");
        for id in &waiting[2..4] {
            assert!(cluster.event_count(*id, "unassigned").await >= 1, "task {id} went back to pending");
        }
        // One request per offer would make these equal: the first offer of the pending
        // tasks carried at least four of them.
        let text = reqwest::get(format!("{slave_1}/metrics")).await.unwrap().text().await.unwrap();
        let count = |series: &str| -> f64 {
            text.lines().find_map(|line| line.strip_prefix(series)?.trim().parse().ok()).unwrap_or(0.0)
        };
        let offers = count("slave_offers_total{outcome=\"accepted\"}") + count("slave_offers_total{outcome=\"refused\"}");
        assert!(offers - count("slave_offer_requests_total") >= 3.0, "{text}");
    }
}

/// A slave's `POST /offers`: the offers taken in the order sent while it has room, each
/// answered as `POST /tasks` would be; an empty or oversized list is a 400.
#[tokio::test]
async fn a_slave_takes_the_offers_of_one_request_in_order_while_it_has_room() {
    let cluster = Cluster::start(&[2]).await;
    let slave = &cluster.slaves[0].url;
    let offer =
        |task_id: i64| json!({"task_id": task_id, "attempt": 1, "expression": "1", "delay_ms": 30_000});
    let reply = cluster
        .http
        .post(&format!("{slave}/offers"), &json!({"offers": [offer(901), offer(902), offer(903)]}))
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let answers: Vec<_> = reply.body["answers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|answer| (answer["available"].clone(), answer["message"].clone(), answer["running"].clone()))
        .collect();
    assert_eq!(
        answers,
        [
            (json!(true), json!("I am available"), json!(1)),
            (json!(true), json!("I am available"), json!(2)),
            (json!(false), json!("I am not available"), json!(2)),
        ]
    );
    // The same offer again is the slot already held: accepted, nothing new runs.
    let again =
        cluster.http.post(&format!("{slave}/offers"), &json!({"offers": [offer(902), offer(904)]})).await;
    assert_eq!(again.body["answers"][0]["available"], true, "{:?}", again.body);
    assert_eq!(again.body["answers"][1]["available"], false, "{:?}", again.body);

    let too_many: Vec<Value> = (0..257).map(offer).collect();
    for body in [json!({"offers": []}), json!({"offers": too_many}), json!({"offers": "x"})] {
        let refused = cluster.http.post(&format!("{slave}/offers"), &body).await;
        assert_eq!(
            refused.status_and_code().0,
            if body["offers"].is_array() { 400 } else { 422 },
            "{:?}",
            refused.body
        );
        assert_eq!(refused.body["error"], "invalid_request", "{:?}", refused.body);
    }
    let availability = cluster.http.get(&format!("{slave}/availability")).await;
    assert_eq!(
        (availability.body["running"].as_u64(), availability.body["available"].as_bool()),
        (Some(2), Some(false))
    );
}
