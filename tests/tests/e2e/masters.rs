//! Several masters on one PostgreSQL database (SPEC §11, issue 13): every master takes
//! every call, a master's death loses nothing and stops nothing, and a second master on
//! one SQLite file is refused.

use std::{
    collections::HashSet,
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use cluster_tests::{
    Cluster, MasterOptions, Masters, bins, eventually, fast_failure_detection, fast_heartbeats,
};
use serde_json::{Value, json};

fn names_in_order(slaves: &Value) -> Vec<(i64, String)> {
    slaves["slaves"]
        .as_array()
        .expect("slaves")
        .iter()
        .map(|s| (s["position"].as_i64().expect("position"), s["name"].as_str().expect("name").to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_walk_through_runs_across_three_masters() {
    let Some(set) = Masters::start(3, MasterOptions::default(), Vec::new(), &[1, 1]).await else { return };
    let first = set.submit(0, "2+3*4", 3000).await;
    assert_eq!(first.status, 201, "{:?}", first.body);
    assert_eq!(first.body["message"], "Task successfully assigned to slave-1");
    let second = set
        .http
        .post(
            &set.url(1, "/tasks"),
            &json!({"expression": "sqrt(x)*pi", "variables": {"x": 2}, "delay_ms": 3000}),
        )
        .await;
    assert_eq!(second.status, 201, "{:?}", second.body);
    assert_eq!(second.body["message"], "Task successfully assigned to slave-2");
    let third = set.submit(2, "1+1", 0).await;
    assert_eq!(third.status_and_code(), (503, "full_capacity"), "{:?}", third.body);

    let ledger = set.ledger().await;
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tasks").fetch_one(&ledger).await.unwrap();
    assert_eq!(rows, 2, "a refused submission leaves no row");
    for index in 0..3 {
        let listed = set.http.get(&set.url(index, "/get-tasks")).await;
        let statuses: Vec<_> =
            listed.body["tasks"].as_array().unwrap().iter().map(|t| t["status"].clone()).collect();
        assert_eq!(
            statuses,
            [json!("in_progress"), json!("in_progress")],
            "master {index}: {:?}",
            listed.body
        );
    }
    let (a, b) = (first.body["id"].as_i64().unwrap(), second.body["id"].as_i64().unwrap());
    assert_eq!(set.wait_final(2, a).await["result"], json!(14.0));
    assert_eq!(set.wait_final(2, b).await["result"], json!(4.442882938158366));
    for index in 0..3 {
        let listed = set.http.get(&set.url(index, "/get-tasks")).await;
        let results: Vec<_> = listed.body["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["status"].clone(), t["result"].clone()))
            .collect();
        assert_eq!(results, [(json!("done"), json!(14.0)), (json!("done"), json!(4.442882938158366))]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_three_masters_under_sixteen_clients_loses_no_acknowledged_task() {
    let options = MasterOptions {
        args: vec!["--when-full".to_owned(), "queue".to_owned()],
        ..MasterOptions::default()
    };
    let Some(mut set) = Masters::start(3, options, fast_heartbeats(), &[4, 4]).await else { return };
    let acknowledged = Mutex::new(Vec::new());
    let unanswered = AtomicUsize::new(0);
    let urls: Vec<String> = (0..3).map(|index| set.url(index, "/tasks")).collect();
    let client = |n: usize| {
        let (urls, acknowledged, unanswered) = (&urls, &acknowledged, &unanswered);
        async move {
            let http = reqwest::Client::new();
            for round in 0..40 {
                let url = &urls[(n + round) % urls.len()];
                let body = json!({"expression": "n + r", "variables": {"n": n, "r": round}, "delay_ms": 20});
                match http.post(url).json(&body).timeout(Duration::from_secs(10)).send().await {
                    Ok(response) if response.status().is_success() => {
                        let body: Value = response.json().await.expect("a 2xx body");
                        acknowledged.lock().unwrap().push(body["id"].as_i64().expect("id"));
                    }
                    Ok(response) => panic!("client {n} heard {}", response.status()),
                    Err(_) => {
                        unanswered.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }
    };
    let killer = async {
        eventually("some tasks acknowledged", || async {
            (acknowledged.lock().unwrap().len() >= 100).then_some(())
        })
        .await;
        set.masters[1].kill9();
    };
    let clients = futures_util::future::join_all((0..16).map(client));
    tokio::join!(clients, killer);

    let acknowledged = acknowledged.into_inner().unwrap();
    let unanswered = unanswered.into_inner();
    assert!(unanswered > 0, "the killed master left some submissions unanswered");
    let ledger = set.ledger().await;
    for &id in &acknowledged {
        let task = set.wait_final(0, id).await;
        assert_eq!(task["status"], "done", "{task}");
        let ends: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM task_events WHERE task_id = $1 AND kind IN ('done', 'failed')",
        )
        .bind(id)
        .fetch_one(&ledger)
        .await
        .unwrap();
        assert_eq!(ends, 1, "task {id} ended exactly once");
    }
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tasks").fetch_one(&ledger).await.unwrap();
    assert!(rows as usize >= acknowledged.len() && rows as usize <= acknowledged.len() + unanswered);
    let not_up: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM slaves WHERE state <> 'up'")
        .fetch_one(&ledger)
        .await
        .unwrap();
    assert_eq!(not_up, 0, "a master's death marks no slave down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slave_killed_while_three_masters_run_has_its_task_redispatched_exactly_once() {
    let options = MasterOptions { args: fast_failure_detection(), ..MasterOptions::default() };
    let Some(mut set) = Masters::start(3, options, fast_heartbeats(), &[1, 1]).await else { return };
    let submitted = set.submit(0, "6*7", 3000).await;
    assert_eq!(submitted.body["message"], "Task successfully assigned to slave-1", "{:?}", submitted.body);
    let id = submitted.body["id"].as_i64().unwrap();
    set.slaves[0].kill9();
    let task = set.wait_final(1, id).await;
    assert_eq!((task["status"].clone(), task["result"].clone()), (json!("done"), json!(42.0)));
    assert_eq!(task["slave"]["name"], "slave-2");
    assert_eq!(task["attempts"], 2);
    let ledger = set.ledger().await;
    let requeued: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM task_events WHERE task_id = $1 AND kind = 'requeued'")
            .bind(id)
            .fetch_one(&ledger)
            .await
            .unwrap();
    assert_eq!(requeued, 1, "every master's reaper saw slave-1 go silent; one requeue won");
    for index in 0..3 {
        set.wait_for_slave_state(index, "slave-1", "down").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_slaves_registering_at_once_through_three_masters_get_one_order() {
    let Some(mut set) = Masters::start(3, MasterOptions::default(), Vec::new(), &[]).await else { return };
    let spawned: Vec<_> = (1..=20).map(|n| set.spawn_slave(&format!("s{n:02}"), 1, n % 3)).collect();
    set.slaves.extend(spawned);
    let mut orders = Vec::new();
    for index in 0..3 {
        let order = eventually(&format!("master {index} to list 20 slaves up"), || async {
            let slaves = set.http.get(&set.url(index, "/slaves")).await.body;
            let up = slaves["slaves"].as_array()?.iter().filter(|s| s["state"] == "up").count();
            (up == 20).then(|| names_in_order(&slaves))
        })
        .await;
        orders.push(order);
    }
    let positions: Vec<i64> = orders[0].iter().map(|(position, _)| *position).collect();
    let distinct: HashSet<i64> = positions.iter().copied().collect();
    assert_eq!(distinct.len(), 20, "every slave has its own place: {positions:?}");
    assert!(positions.windows(2).all(|pair| pair[0] < pair[1]));
    assert_eq!(orders[0], orders[1]);
    assert_eq!(orders[0], orders[2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_masters_starting_at_once_on_an_empty_database_both_serve() {
    let Some(mut set) = Masters::start(0, MasterOptions::default(), Vec::new(), &[]).await else { return };
    let db = set.db.clone();
    let both = std::thread::scope(|scope| {
        let starting: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| cluster_tests::spawn_master(&db, &MasterOptions::default())))
            .collect();
        starting.into_iter().map(|handle| handle.join().expect("a master started")).collect::<Vec<_>>()
    });
    set.masters = both;
    for index in 0..2 {
        assert_eq!(set.http.get(&set.url(index, "/healthz")).await.status, 200);
    }
    let ledger = set.ledger().await;
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&ledger)
        .await
        .unwrap();
    let files =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations/postgres")).unwrap().count();
    assert_eq!(applied.len(), files, "each migration applied once: {applied:?}");
    let masters = set.http.get(&set.url(0, "/masters")).await.body;
    let up: Vec<_> = masters["masters"].as_array().unwrap().iter().filter(|m| m["up"] == true).collect();
    assert_eq!(up.len(), 2, "{masters}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_on_one_master_hears_a_result_recorded_through_another_within_100_ms() {
    let Some(mut set) = Masters::start(2, MasterOptions::default(), Vec::new(), &[]).await else { return };
    // The slave knows only master 1: every result is recorded through it.
    let only_b = set.masters[1].url.clone();
    let args =
        ["--master", only_b.as_str(), "--name", "slave-1", "--listen", "127.0.0.1:0"].map(String::from);
    set.slaves.push(cluster_tests::Process::spawn("slave-1", &bins().slave, &args, &[]));
    set.wait_for_slave_state(0, "slave-1", "up").await;
    let mut lags = Vec::new();
    for round in 0..5 {
        let submitted = set.submit(1, &format!("{round} + 1"), 300).await;
        assert_eq!(submitted.status, 201, "{:?}", submitted.body);
        let id = submitted.body["id"].as_i64().unwrap();
        let polled = set.http.get(&set.url(0, &format!("/tasks/{id}?wait=10"))).await;
        let heard = chrono::Utc::now();
        assert_eq!(polled.body["status"], "done", "{:?}", polled.body);
        let finished =
            chrono::DateTime::parse_from_rfc3339(polled.body["finished_at"].as_str().unwrap()).unwrap();
        lags.push((heard - finished.with_timezone(&chrono::Utc)).num_milliseconds());
    }
    // Without the announcement the poll would end at its next re-read, up to 1 s later.
    assert!(lags.iter().all(|lag| *lag < 100), "long poll lag behind the result, ms: {lags:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slave_whose_first_master_dies_keeps_its_place_and_runs_the_next_task() {
    let options = MasterOptions { args: fast_failure_detection(), ..MasterOptions::default() };
    let Some(mut set) = Masters::start(2, options, fast_heartbeats(), &[1]).await else { return };
    let before = set.wait_for_slave_state(1, "slave-1", "up").await;
    set.masters[0].kill9();
    let killed = chrono::Utc::now();
    let submitted = set.submit(1, "2^10", 0).await;
    assert_eq!(submitted.body["message"], "Task successfully assigned to slave-1", "{:?}", submitted.body);
    let task = set.wait_final(1, submitted.body["id"].as_i64().unwrap()).await;
    assert_eq!(task["result"], json!(1024.0));
    // Heartbeats through master 1 well past two slave timeouts (1 s each) since master 0
    // died: had they stopped with it, slave-1 would be down by then.
    eventually("a heartbeat two slave timeouts after the kill", || async {
        let slaves = set.http.get(&set.url(1, "/slaves")).await.body;
        let slave = slaves["slaves"].as_array()?.iter().find(|s| s["name"] == "slave-1")?.clone();
        assert_eq!(slave["state"], "up", "slave-1 was marked down: {slave}");
        let seen = chrono::DateTime::parse_from_rfc3339(slave["last_seen_at"].as_str()?).ok()?;
        (seen.with_timezone(&chrono::Utc) - killed > chrono::Duration::seconds(2)).then_some(())
    })
    .await;
    let after = set.wait_for_slave_state(1, "slave-1", "up").await;
    assert_eq!(
        (after["id"].clone(), after["position"].clone()),
        (before["id"].clone(), before["position"].clone())
    );
    let ledger = set.ledger().await;
    let down: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM slaves WHERE state <> 'up'")
        .fetch_one(&ledger)
        .await
        .unwrap();
    assert_eq!(down, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masters_list_every_master_and_a_killed_one_goes_down() {
    let Some(mut set) = Masters::start(3, MasterOptions::default(), Vec::new(), &[]).await else { return };
    let listed = set.http.get(&set.url(0, "/masters")).await.body;
    let urls: Vec<_> =
        listed["masters"].as_array().unwrap().iter().map(|m| (m["url"].clone(), m["up"].clone())).collect();
    let expected: Vec<_> = set.masters.iter().map(|m| (json!(m.url), json!(true))).collect();
    assert_eq!(urls, expected);
    set.masters[2].kill9();
    let gone = set.masters[2].url.clone();
    eventually("the killed master to show down", || async {
        let listed = set.http.get(&set.url(1, "/masters")).await.body;
        listed["masters"]
            .as_array()?
            .iter()
            .any(|m| m["url"] == gone.as_str() && m["up"] == false)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_master_on_one_sqlite_file_is_refused_and_the_first_lists_itself() {
    let cluster = Cluster::start(&[]).await;
    let output = std::process::Command::new(&bins().master)
        .args(["serve", "--listen", "127.0.0.1:0", "--db", &cluster.db])
        .output()
        .expect("run a second master");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("another master is running on this file"), "{stderr}");
    assert_eq!(cluster.http.get(&cluster.url("/healthz")).await.status, 200, "the first one serves on");
    let listed = cluster.http.get(&cluster.url("/masters")).await.body;
    let masters = listed["masters"].as_array().unwrap();
    assert_eq!(masters.len(), 1, "{listed}");
    assert_eq!(
        (masters[0]["url"].clone(), masters[0]["up"].clone()),
        (json!(cluster.master.url), json!(true))
    );
    assert_eq!(listed["this"], masters[0]["id"]);
    let printed = std::process::Command::new(&bins().master)
        .args(["masters", "--json", "--master", &format!("http://127.0.0.1:1,{}", cluster.master.url)])
        .output()
        .expect("run master masters");
    assert!(printed.status.success(), "{}", String::from_utf8_lossy(&printed.stderr));
    let printed: Value = serde_json::from_slice(&printed.stdout).expect("JSON");
    // The CLI moved on past the dead URL and printed the API's answer (read again, so
    // `last_seen_at` may have moved on too).
    assert_eq!(printed["this"], listed["this"]);
    assert_eq!(printed["masters"][0]["url"], masters[0]["url"]);
    assert_eq!(printed["masters"][0]["started_at"], masters[0]["started_at"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_queue_mode_a_new_task_waits_behind_one_another_master_queued() {
    let options = MasterOptions {
        args: ["--when-full", "queue"].map(String::from).to_vec(),
        ..MasterOptions::default()
    };
    let Some(set) = Masters::start(2, options, Vec::new(), &[1]).await else { return };
    // A task queued by a master this one has not heard from: straight into the ledger.
    let ledger = set.ledger().await;
    let waiting: i64 =
        sqlx::query_scalar("INSERT INTO tasks (expression, status) VALUES ('6*7', 'pending') RETURNING id")
            .fetch_one(&ledger)
            .await
            .expect("a pending task");
    // slave-1 has room, but the waiting task comes first.
    let newer = set.submit(1, "1+1", 0).await;
    assert_eq!((newer.status, newer.body["status"].as_str()), (202, Some("pending")), "{:?}", newer.body);
    let newer = newer.body["id"].as_i64().expect("an id");
    let (first, second) = (set.wait_final(0, waiting).await, set.wait_final(1, newer).await);
    assert_eq!((first["result"].as_f64(), second["result"].as_f64()), (Some(42.0), Some(2.0)));
    let (first_at, second_at) =
        (first["assigned_at"].as_str().unwrap(), second["assigned_at"].as_str().unwrap());
    assert!(first_at <= second_at, "the task that waited runs first: {first_at} vs {second_at}");
}
