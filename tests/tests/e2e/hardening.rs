//! What a hostile test found (issue 11), one test per finding, each failing before its
//! fix: honest health (SPEC §4), no self-loops, monotonic timers, one process per name,
//! slow bodies on the slave, secrets out of `ps` (§8), and the small ones.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use cluster_tests::{Cluster, Http, MasterOptions, Reply, bins, eventually, fast_heartbeats, required};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn id_of(reply: &Reply) -> i64 {
    reply.body["id"].as_i64().unwrap_or_else(|| panic!("no id in {:?}", reply.body))
}

async fn tasks_stored(cluster: &Cluster) -> i64 {
    let ledger = cluster.ledger().await;
    sqlx::query_scalar("SELECT COUNT(*) FROM tasks").fetch_one(&ledger).await.expect("count tasks")
}

// ----------------------------------------------------------------- §4 honest health

#[tokio::test]
async fn a_deleted_ledger_file_makes_healthz_and_writes_answer_503_and_reads_keep_serving() {
    let cluster = Cluster::start(&[1]).await;
    let done = cluster.submit("1+1", 0).await;
    cluster.wait_final(id_of(&done)).await;
    assert_eq!(cluster.http.get(&cluster.url("/healthz")).await.status, 200);

    // `rm master.db*` while the master runs.
    for entry in std::fs::read_dir(cluster.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_string_lossy().starts_with("master.db") {
            std::fs::remove_file(&path).unwrap();
        }
    }
    let health = cluster.http.get(&cluster.url("/healthz")).await;
    assert_eq!(health.status_and_code(), (503, "ledger_unavailable"), "{:?}", health.body);
    let message = health.body["message"].as_str().unwrap();
    assert!(message.contains("master.db") && message.contains("gone"), "{message}");
    assert_eq!(health.headers["retry-after"], "1");

    let refused = cluster.submit("2+2", 0).await;
    assert_eq!(refused.status_and_code(), (503, "ledger_unavailable"), "{:?}", refused.body);
    let registration = json!({"name": "late", "url": cluster.slaves[0].url, "capacity": 1});
    let refused = cluster.http.post(&cluster.url("/slaves"), &registration).await;
    assert_eq!(refused.status_and_code(), (503, "ledger_unavailable"), "{:?}", refused.body);
    // Reads still come from the open file, so people can see what the master knew.
    assert_eq!(cluster.http.get(&cluster.url("/tasks")).await.status, 200);
    assert_eq!(cluster.http.get(&cluster.url("/slaves")).await.status, 200);
}

/// A small tmpfs mounted for one test and unmounted after.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// `None` when this process may not mount (not root): the test is skipped, except
    /// under CI, where it must run.
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().expect("temp dir");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|status| status.success());
        if !mounted {
            assert!(!required(), "CI runs as root and must be able to mount a tmpfs for the disk-full test");
            eprintln!("skipped: cannot mount a tmpfs (not root)");
            return None;
        }
        Some(SmallDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Writes `path` until the disk is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("create filler");
    let chunk = vec![0u8; 64 * 1024];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
}

#[tokio::test]
async fn a_full_disk_makes_healthz_answer_503_and_it_recovers_when_space_comes_back() {
    let Some(disk) = SmallDisk::mount("4m") else { return };
    let db = disk.path().join("master.db");
    let options = MasterOptions::default();
    let master = cluster_tests::spawn_master(&db.display().to_string(), &options);
    let http = Http::new(None);
    let url = |path: &str| format!("{}{path}", master.url);
    assert_eq!(http.get(&url("/healthz")).await.status, 200);

    let filler = disk.path().join("filler");
    fill(&filler);
    let health = eventually("healthz to notice the full disk", || async {
        let reply = http.get(&url("/healthz")).await;
        (reply.status != 200).then_some(reply)
    })
    .await;
    assert_eq!(health.status_and_code(), (503, "ledger_unavailable"), "{:?}", health.body);
    let registration = json!({"name": "s", "url": "http://127.0.0.1:9", "capacity": 1});
    let reply = http.post(&url("/slaves"), &registration).await;
    assert_ne!(reply.status, 201, "nothing registers on a full disk: {:?}", reply.body);

    std::fs::remove_file(&filler).unwrap();
    eventually("healthz to recover once there is space", || async {
        (http.get(&url("/healthz")).await.status == 200).then_some(())
    })
    .await;
    drop(master);
}

// ---------------------------------------------------------------- §8 no self-loops

#[tokio::test]
async fn a_master_is_refused_as_a_slave_and_an_offer_to_a_master_stores_nothing() {
    let cluster = Cluster::start(&[]).await;
    let own = json!({"name": "loop", "url": cluster.master.url, "capacity": 100_000});
    let reply = cluster.http.post(&cluster.url("/slaves"), &own).await;
    assert_eq!(reply.status_and_code(), (400, "invalid_request"), "{:?}", reply.body);
    assert!(
        reply.body["message"].as_str().unwrap().contains("does not answer as a slave"),
        "{:?}",
        reply.body
    );
    assert_eq!(cluster.http.get(&cluster.url("/slaves")).await.body["slaves"], json!([]));

    // What the master's own offer would look like if it ever reached a master.
    let offer = json!({"task_id": 7, "attempt": 1, "expression": "1+1", "variables": {}, "delay_ms": 0});
    let reply = cluster.submit_json(&offer).await;
    assert_eq!(reply.status_and_code(), (400, "invalid_request"), "{:?}", reply.body);
    assert_eq!(cluster.submit("1+1", 0).await.status_and_code(), (503, "no_slaves"));
    assert_eq!(tasks_stored(&cluster).await, 0, "nothing stored");
}

// ------------------------------------------------------------- §8 monotonic timers

// The variant for multi-threaded programs (the master runs tokio's worker threads).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// A master whose wall clock is offset by what `clock` holds (libfaketime re-reads the
/// file on every call), monotonic time untouched. `None` (skip) where libfaketime is
/// missing, except under CI.
fn faketime(clock: &Path) -> Option<Vec<(String, String)>> {
    if !Path::new(LIBFAKETIME).exists() {
        assert!(!required(), "CI installs libfaketime (.ci/run) for the wall-clock tests");
        eprintln!("skipped: {LIBFAKETIME} is missing (apt-get install libfaketime)");
        return None;
    }
    std::fs::write(clock, "+0").unwrap();
    let env = [
        ("LD_PRELOAD", LIBFAKETIME),
        ("FAKETIME_TIMESTAMP_FILE", clock.to_str().unwrap()),
        ("FAKETIME_NO_CACHE", "1"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ];
    Some(env.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect())
}

/// Moves the master's wall clock by `offset` (libfaketime syntax: `+360`, `-3600`)
/// and waits until the master's own timestamps show it.
async fn jump_wall_clock(cluster: &Cluster, clock: &Path, offset: &str, moved: impl Fn(i64) -> bool) {
    std::fs::write(clock, offset).unwrap();
    eventually("the master's wall clock to jump", || async {
        let probe = cluster.submit("0", 0).await;
        let submitted = cluster.wait_final(id_of(&probe)).await["submitted_at"].as_str()?.to_owned();
        let at = chrono_seconds(&submitted);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64;
        moved(at - now).then_some(())
    })
    .await;
}

/// Seconds since the epoch of an RFC 3339 UTC timestamp as the ledger writes it.
fn chrono_seconds(rfc3339: &str) -> i64 {
    let output = Command::new("date").args(["-u", "-d", rfc3339, "+%s"]).output().expect("date");
    String::from_utf8_lossy(&output.stdout).trim().parse().expect("date prints seconds")
}

#[tokio::test]
async fn a_wall_clock_jump_forward_does_not_fail_a_running_task() {
    let dir = tempfile::tempdir().unwrap();
    let clock = dir.path().join("clock");
    let Some(envs) = faketime(&clock) else { return };
    let options =
        MasterOptions { args: vec!["--task-timeout".into(), "3s".into()], envs, ..Default::default() };
    let cluster = Cluster::start_with(options, Vec::new(), &[1, 1]).await;
    let reply = cluster.submit("6*7", 4_000).await; // deadline: 3 s + 4 s of monotonic time
    let id = id_of(&reply);

    jump_wall_clock(&cluster, &clock, "+360", |skew| skew > 300).await;
    let task = cluster.wait_final(id).await;
    assert_eq!((task["status"].as_str(), task["result"].as_f64()), (Some("done"), Some(42.0)), "{task}");
    assert_eq!(task["attempts"], 1, "{task}");
    assert_eq!(cluster.event_count(id, "requeued").await, 0);
}

#[tokio::test]
async fn a_wall_clock_jump_back_does_not_delay_a_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let clock = dir.path().join("clock");
    let Some(envs) = faketime(&clock) else { return };
    let args = [
        "--task-timeout",
        "1s",
        "--slave-timeout",
        "60s",
        "--heartbeat-interval",
        "200ms",
        "--offer-timeout",
        "500ms",
    ];
    let options = MasterOptions { args: args.map(String::from).to_vec(), envs, ..Default::default() };
    let cluster = Cluster::start_with(options, fast_heartbeats(), &[1, 1]).await;
    jump_wall_clock(&cluster, &clock, "-3600", |skew| skew < -3000).await;

    let reply = cluster.submit("6*7", 2_000).await; // deadline: 1 s + 2 s
    assert_eq!(reply.body["slave"]["name"], "slave-1");
    let id = id_of(&reply);
    // slave-1 holds it and never answers; it stays up (60 s slave timeout), so only
    // the deadline can take the task back.
    cluster.slaves[0].signal(libc::SIGSTOP);
    let task = cluster.wait_final(id).await;
    cluster.slaves[0].signal(libc::SIGCONT);
    assert_eq!((task["status"].as_str(), task["result"].as_f64()), (Some("done"), Some(42.0)), "{task}");
    assert_eq!((task["slave"]["name"].as_str(), task["attempts"].as_i64()), (Some("slave-2"), Some(2)));
    assert_eq!(cluster.event_count(id, "requeued").await, 1);
}

// ---------------------------------------------------------- §8 one process per name

#[tokio::test]
async fn a_second_live_process_with_a_name_in_use_is_refused_and_changes_nothing() {
    let mut cluster = Cluster::start_with(MasterOptions::default(), fast_heartbeats(), &[1]).await;
    let first = cluster.wait_for_slave_state("slave-1", "up").await;
    let reply = cluster.submit("6*7", 1_500).await;
    let id = id_of(&reply);

    let duplicate = cluster.spawn_slave("slave-1", 1);
    let claim = json!({"name": "slave-1", "url": duplicate.url, "capacity": 1, "instance": "someone-else"});
    let reply = cluster.http.post(&cluster.url("/slaves"), &claim).await;
    assert_eq!(reply.status_and_code(), (409, "name_in_use"), "{:?}", reply.body);
    let stale = json!({"running": [], "instance": "someone-else"});
    let reply = cluster.http.post(&cluster.url(&format!("/slaves/{}/heartbeat", first["id"])), &stale).await;
    assert_eq!(reply.status_and_code(), (409, "name_in_use"), "{:?}", reply.body);

    let task = cluster.wait_final(id).await;
    assert_eq!((task["status"].as_str(), task["attempts"].as_i64()), (Some("done"), Some(1)), "{task}");
    for kind in ["requeued", "unassigned"] {
        assert_eq!(cluster.event_count(id, kind).await, 0, "no {kind} event");
    }
    let slaves = cluster.http.get(&cluster.url("/slaves")).await.body;
    assert_eq!(slaves["slaves"][0]["url"], first["url"], "the live process keeps the name");
    assert_eq!(slaves["slaves"].as_array().unwrap().len(), 1);

    // Once the first process is gone, the name is free for the next one at once.
    cluster.slaves[0].kill9();
    drop(duplicate);
    cluster.slaves[0] = cluster.spawn_slave("slave-1", 1);
    let restarted = cluster.slaves[0].url.clone();
    eventually("the restarted slave-1 to hold the name", || async {
        let slaves = cluster.http.get(&cluster.url("/slaves")).await.body;
        (slaves["slaves"][0]["url"] == restarted.as_str() && slaves["slaves"][0]["state"] == "up")
            .then_some(())
    })
    .await;
}

// ------------------------------------------------------------- slave request timeout

#[tokio::test]
async fn a_slave_cuts_off_a_request_whose_body_trickles() {
    let cluster = Cluster::start(&[]).await;
    let slave = cluster.spawn_slave_with("slave-1", 1, &["--request-timeout", "2s"]);
    let addr = slave.url.trim_start_matches("http://").to_owned();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head =
        "POST /tasks HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{";
    slow.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();

    let http = Http::new(None);
    assert_eq!(http.get(&format!("{}/availability", slave.url)).await.status, 200, "others are served");
    // One body byte every 250 ms, bounded to 80 bytes (20 s): the slave must answer first.
    let mut answer = Vec::new();
    for _ in 0..80 {
        let mut buffer = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(250), slow.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                answer.extend_from_slice(&buffer[..n]);
                break;
            }
            Err(_) => {}
        }
        if slow.write_all(b" ").await.is_err() {
            break;
        }
    }
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(10), "cut off after {elapsed:?}");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "answered: {answer:?}");
    drop(slave);
}

// ------------------------------------------------------------ §8 secrets out of ps

fn write_token_file(dir: &Path, secret: &str) -> PathBuf {
    let path = dir.join("cluster-token");
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    path
}

fn process_shows(pid: u32, secret: &str) -> bool {
    ["cmdline", "environ"].iter().any(|file| {
        std::fs::read(format!("/proc/{pid}/{file}"))
            .is_ok_and(|bytes| String::from_utf8_lossy(&bytes).contains(secret))
    })
}

#[tokio::test]
async fn a_token_file_keeps_the_secret_out_of_ps_and_still_guards_every_call() {
    let secret = "file-secret-7d1c";
    let dir = tempfile::tempdir().unwrap();
    let file = write_token_file(dir.path(), secret);
    let file = file.to_str().unwrap().to_owned();
    let options = MasterOptions { args: vec!["--token-file".into(), file.clone()], ..Default::default() };
    let cluster = Cluster::start_with(options, vec!["--token-file".into(), file], &[1]).await;

    for process in [&cluster.master, &cluster.slaves[0]] {
        assert!(!process_shows(process.pid(), secret), "{} shows the token", process.name);
    }
    let anonymous = cluster.submit("1+1", 0).await; // submissions are public
    assert_eq!(anonymous.status, 201, "slave-1 registered with the file's token: {:?}", anonymous.body);
    let intruder = json!({"name": "x", "url": "http://127.0.0.1:9", "capacity": 1});
    let reply = cluster.http.post(&cluster.url("/slaves"), &intruder).await;
    assert_eq!(reply.status_and_code(), (401, "unauthorized"));
    let reply = Http::new(Some(secret)).delete(&cluster.url(&format!("/tasks/{}", id_of(&anonymous)))).await;
    assert!(matches!(reply.status, 200 | 409), "the file's token is the admin token: {:?}", reply.body);
}

#[test]
fn a_token_flag_and_a_token_file_together_are_refused() {
    let output = Command::new(&bins().master)
        .args(["serve", "--listen", "127.0.0.1:0", "--token", "a", "--token-file", "/dev/null"])
        .output()
        .expect("run master");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot be used with"));
}

// ------------------------------------------------------------------ the small ones

#[tokio::test]
async fn a_different_outcome_for_a_recorded_attempt_is_a_conflict_that_says_so() {
    let cluster = Cluster::start(&[1]).await;
    let id = id_of(&cluster.submit("6*7", 0).await);
    cluster.wait_final(id).await;
    let other = json!({"slave_id": 1, "attempt": 1, "outcome": {"value": 1.0}});
    let reply = cluster.http.post(&cluster.url(&format!("/tasks/{id}/result")), &other).await;
    assert_eq!(reply.status_and_code(), (409, "conflict"), "{:?}", reply.body);
    let message = reply.body["message"].as_str().unwrap();
    assert!(message.contains("different outcome") && !message.contains("stale"), "{message}");
    assert_eq!(cluster.task(id).await["result"], 42.0);
}

#[tokio::test]
async fn a_huge_variable_name_is_not_echoed_whole() {
    let cluster = Cluster::start(&[1]).await;
    let name = "a-".repeat(5_000);
    let reply = cluster.submit_json(&json!({"expression": "1", "variables": {name: 1.0}})).await;
    assert_eq!(reply.status_and_code(), (400, "invalid_request"));
    let message = reply.body["message"].as_str().unwrap();
    assert!(message.len() < 300 && message.contains("10000 characters"), "{message}");
}

#[tokio::test]
async fn slave_urls_without_a_real_port_are_refused() {
    let cluster = Cluster::start(&[]).await;
    for url in ["http://127.0.0.1", "http://127.0.0.1:0", "https://slave.invalid/"] {
        let reply = cluster
            .http
            .post(&cluster.url("/slaves"), &json!({"name": "s", "url": url, "capacity": 1}))
            .await;
        assert_eq!(reply.status_and_code(), (400, "invalid_request"), "{url}: {:?}", reply.body);
        assert!(reply.body["message"].as_str().unwrap().contains("port"), "{url}: {:?}", reply.body);
    }
}

#[tokio::test]
async fn when_every_slave_is_unreachable_the_client_hears_no_slaves_not_full_capacity() {
    let mut cluster = Cluster::start(&[1]).await;
    // Dead, but still up in the master's view for its 10 s slave timeout: the offer
    // finds nobody there.
    cluster.slaves[0].kill9();
    let reply = cluster.submit("1+1", 0).await;
    assert_eq!(reply.status_and_code(), (503, "no_slaves"), "{:?}", reply.body);
    let message = reply.body["message"].as_str().unwrap();
    assert!(message.contains("no slave could be reached: slave-1"), "{message}");
    // Now known unanswering (suspect): said at once, without another offer.
    let reply = cluster.submit("1+1", 0).await;
    assert_eq!(reply.status_and_code(), (503, "no_slaves"), "{:?}", reply.body);
    assert_eq!(tasks_stored(&cluster).await, 0, "nothing stored");
}
