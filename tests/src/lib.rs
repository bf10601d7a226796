//! End-to-end harness: real `master` and `slave` processes on 127.0.0.1 port 0, each
//! cluster in its own temp dir with its own ledger, killed on drop.
//!
//! The scenarios that must hold on both ledger engines are written once inside
//! [`on_both_engines!`], which makes a `sqlite` and a `postgres` test of each; the
//! cluster a test starts uses the engine of the test it runs in ([`Engine::current`]).
//!
//! Waiting is always "poll with a deadline" ([`eventually`]) or the API's own long poll
//! (`GET /tasks/{id}?wait=`), never a fixed sleep. Set `TEST_LOG=1` to see the
//! processes' logs on stderr.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

pub mod postgres;

/// Pacing between probes of [`eventually`]: not a guess at timing, just politeness.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Default deadline of [`eventually`].
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Paths of the built binaries.
pub struct Bins {
    pub master: PathBuf,
    pub slave: PathBuf,
}

/// Builds `master` and `slave` once per test binary (cargo does not build other
/// packages' binaries for a test crate) in the profile the tests were built with.
pub fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/<test> -> target/<profile>
        let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>").to_path_buf();
        let release = profile_dir.file_name().is_some_and(|name| name == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet", "-p", "master", "-p", "slave", "--bins"]);
        if release {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "building master and slave failed");
        Bins { master: profile_dir.join("master"), slave: profile_dir.join("slave") }
    })
}

/// A running `master` or `slave` that printed `listening on http://ADDR` (the shared
/// harness, `cluster-harness`); a test fails at once when it misbehaves.
pub struct Process(cluster_harness::Process);

impl std::ops::Deref for Process {
    type Target = cluster_harness::Process;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Process {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Process {
    /// Spawns `program args...` and waits for its `listening on` line.
    pub fn spawn(name: &str, program: &Path, args: &[String], envs: &[(&str, &str)]) -> Process {
        let mut command = Command::new(program);
        command.args(args);
        command.env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned()));
        if std::env::var_os("TEST_LOG").is_none() {
            command.stderr(Stdio::null());
        }
        for (key, value) in envs {
            command.env(key, value);
        }
        Process(
            cluster_harness::Process::spawn(name, command, DEADLINE)
                .unwrap_or_else(|error| panic!("{error}")),
        )
    }

    /// SIGTERM, then waits (with a deadline) for the exit status.
    pub fn terminate(&mut self, deadline: Duration) -> ExitStatus {
        self.0.terminate(deadline).unwrap_or_else(|error| panic!("{error}"))
    }

    /// Sends `signal` (e.g. `libc::SIGSTOP` to freeze it like a partitioned host).
    pub fn signal(&self, signal: i32) {
        self.0.signal(signal).unwrap_or_else(|error| panic!("{error}"))
    }
}

/// An HTTP answer: status and JSON body (`Null` when the body is not JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Reply {
    /// Status and `error` code, the pair most tests assert on.
    pub fn status_and_code(&self) -> (u16, &str) {
        (self.status, self.body["error"].as_str().unwrap_or(""))
    }
}

/// A test HTTP client: no redirects, timeouts, optional bearer token.
#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
    token: Option<String>,
}

impl Http {
    pub fn new(token: Option<&str>) -> Http {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(90))
            // A fresh connection per request: tests restart masters on the same port,
            // and a pooled connection to the old process would fail the next request.
            .pool_max_idle_per_host(0)
            .build()
            .expect("http client");
        Http { client, token: token.map(str::to_owned) }
    }

    /// Sends a request with the token (if any) and reads the reply.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request.send().await.expect("request reaches the server");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("read body");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply { status, body, headers }
    }

    pub async fn get(&self, url: &str) -> Reply {
        self.send(self.client.get(url)).await
    }

    pub async fn post(&self, url: &str, body: &Value) -> Reply {
        self.send(self.client.post(url).json(body)).await
    }

    pub async fn post_raw(&self, url: &str, body: impl Into<reqwest::Body>) -> Reply {
        self.send(self.client.post(url).header("content-type", "application/json").body(body)).await
    }

    pub async fn delete(&self, url: &str) -> Reply {
        self.send(self.client.delete(url)).await
    }
}

/// Polls `probe` until it yields `Some`, failing the test past `DEADLINE`.
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Master flags for crash tests: a slave is down after 1 s of silence.
pub fn fast_failure_detection() -> Vec<String> {
    ["--slave-timeout", "1s", "--heartbeat-interval", "200ms", "--offer-timeout", "1s"]
        .map(String::from)
        .to_vec()
}

/// Slave flags for crash tests: heartbeat every 200 ms.
pub fn fast_heartbeats() -> Vec<String> {
    ["--heartbeat-interval", "200ms"].map(String::from).to_vec()
}

/// How to start a master.
#[derive(Clone, Debug, Default)]
pub struct MasterOptions {
    pub token: Option<String>,
    /// Extra `master serve` flags.
    pub args: Vec<String>,
    /// Extra environment of the master process (e.g. libfaketime's `LD_PRELOAD`).
    pub envs: Vec<(String, String)>,
}

/// Which ledger engine the clusters of a test use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

tokio::task_local! {
    static ENGINE: Engine;
}

impl Engine {
    /// The engine of the running test: SQLite unless it runs under
    /// [`Engine::scope`] with PostgreSQL.
    pub fn current() -> Engine {
        ENGINE.try_with(|engine| *engine).unwrap_or(Engine::Sqlite)
    }

    /// Runs `test` with clusters on this engine. On PostgreSQL without a server to
    /// start (and not under CI) the test is skipped, saying why.
    pub async fn scope(self, test: impl Future<Output = ()>) {
        if self == Engine::Postgres && postgres::or_skip(postgres::server().await).is_none() {
            return;
        }
        ENGINE.scope(self, test).await
    }

    /// A new, empty ledger for a master: a file in `dir`, or a fresh database.
    pub async fn fresh_ledger(self, dir: &Path) -> String {
        match self {
            Engine::Sqlite => dir.join("master.db").display().to_string(),
            Engine::Postgres => postgres::fresh_database().await.expect("a fresh PostgreSQL database"),
        }
    }
}

/// Writes each `async fn name() { ... }` given as two tests, `name::sqlite` and
/// `name::postgres`, that run the same body with clusters on each ledger engine.
#[macro_export]
macro_rules! on_both_engines {
    ($($(#[$meta:meta])* async fn $name:ident() $body:block)*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;

                $(#[$meta])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    $crate::Engine::Sqlite.scope(async $body).await
                }

                $(#[$meta])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    $crate::Engine::Postgres.scope(async $body).await
                }
            }
        )*
    };
}

/// A master, its slaves, and the temp dir holding the ledger.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    /// The master's `--db`: a SQLite file in `dir`, or a PostgreSQL URL.
    pub db: String,
    pub master: Process,
    pub slaves: Vec<Process>,
    pub http: Http,
    pub options: MasterOptions,
    /// Extra flags each slave gets (fast heartbeats in crash tests).
    pub slave_args: Vec<String>,
}

impl Cluster {
    /// A master and one slave per capacity in `capacities`, named slave-1, slave-2, ...
    /// and registered in that order.
    pub async fn start(capacities: &[u32]) -> Cluster {
        Self::start_with(MasterOptions::default(), Vec::new(), capacities).await
    }

    /// Like [`Cluster::start`] with master options and extra slave flags.
    pub async fn start_with(options: MasterOptions, slave_args: Vec<String>, capacities: &[u32]) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Engine::current().fresh_ledger(dir.path()).await;
        Self::start_on(dir, db, options, slave_args, capacities).await
    }

    /// Like [`Cluster::start_with`] on a ledger of the caller's (`--db`).
    pub async fn start_on(
        dir: tempfile::TempDir,
        db: String,
        options: MasterOptions,
        slave_args: Vec<String>,
        capacities: &[u32],
    ) -> Cluster {
        let master = spawn_master(&db, &options);
        let http = Http::new(options.token.as_deref());
        let mut cluster = Cluster { dir, db, master, slaves: Vec::new(), http, options, slave_args };
        for (index, capacity) in capacities.iter().enumerate() {
            cluster.add_slave(&format!("slave-{}", index + 1), *capacity).await;
        }
        cluster
    }

    /// The master's URL joined with `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.master.url)
    }

    /// Starts a slave process and waits until the master lists it as up.
    pub async fn add_slave(&mut self, name: &str, capacity: u32) -> usize {
        let process = self.spawn_slave(name, capacity);
        self.slaves.push(process);
        self.wait_for_slave_state(name, "up").await;
        self.slaves.len() - 1
    }

    /// Starts a slave process without waiting for it to register.
    pub fn spawn_slave(&self, name: &str, capacity: u32) -> Process {
        self.spawn_slave_with(name, capacity, &[])
    }

    /// Like [`Cluster::spawn_slave`] with flags for this slave only.
    pub fn spawn_slave_with(&self, name: &str, capacity: u32, extra: &[&str]) -> Process {
        let mut flags = self.slave_args.clone();
        flags.extend(extra.iter().map(|arg| (*arg).to_owned()));
        spawn_slave(&self.master.url, name, capacity, &flags, self.options.token.as_deref())
    }

    /// Waits until `GET /slaves` shows `name` in `state`.
    pub async fn wait_for_slave_state(&self, name: &str, state: &str) -> Value {
        let what = format!("{name} to be {state}");
        eventually(&what, || async {
            let slaves = self.http.get(&self.url("/slaves")).await.body;
            slaves["slaves"].as_array()?.iter().find(|s| s["name"] == name && s["state"] == state).cloned()
        })
        .await
    }

    /// `POST /tasks` with this expression and delay.
    pub async fn submit(&self, expression: &str, delay_ms: u64) -> Reply {
        self.http.post(&self.url("/tasks"), &json!({"expression": expression, "delay_ms": delay_ms})).await
    }

    /// `POST /tasks` with a raw JSON body.
    pub async fn submit_json(&self, body: &Value) -> Reply {
        self.http.post(&self.url("/tasks"), body).await
    }

    /// Index of the slave process named `name`.
    pub fn slave_index(&self, name: &str) -> usize {
        self.slaves.iter().position(|slave| slave.name == name).unwrap_or_else(|| panic!("no slave {name}"))
    }

    /// Counts of `task_events` rows of `kind` for task `id`, read from the ledger.
    pub async fn event_count(&self, id: i64, kind: &str) -> i64 {
        let ledger = self.ledger().await;
        sqlx::query_scalar("SELECT COUNT(*) FROM task_events WHERE task_id = $1 AND kind = $2")
            .bind(id)
            .bind(kind)
            .fetch_one(&ledger)
            .await
            .expect("count events")
    }

    /// `GET /tasks/{id}`.
    pub async fn task(&self, id: i64) -> Value {
        let reply = self.http.get(&self.url(&format!("/tasks/{id}"))).await;
        assert_eq!(reply.status, 200, "GET /tasks/{id}: {:?}", reply.body);
        reply.body
    }

    /// Long-polls until task `id` is final; fails the test past the deadline.
    pub async fn wait_final(&self, id: i64) -> Value {
        eventually(&format!("task {id} to finish"), || async {
            let reply = self.http.get(&self.url(&format!("/tasks/{id}?wait=5"))).await;
            // "Final" as the typed client defines it; the test gets the raw JSON.
            let task: master_client::Task = serde_json::from_value(reply.body.clone()).ok()?;
            task.is_final().then_some(reply.body)
        })
        .await
    }

    /// Waits until task `id` has `status`.
    pub async fn wait_status(&self, id: i64, status: &str) -> Value {
        eventually(&format!("task {id} to be {status}"), || async {
            let task = self.task(id).await;
            (task["status"] == status).then_some(task)
        })
        .await
    }

    /// Kills the master with SIGKILL and starts a new one on the same ledger and port.
    pub async fn restart_master_after_kill9(&mut self) {
        self.master.kill9();
        self.start_master_again().await;
    }

    /// Starts a master on the same ledger and the same address as before.
    pub async fn start_master_again(&mut self) {
        let mut options = self.options.clone();
        let addr = self.master.url.trim_start_matches("http://").to_owned();
        options.args.extend(["--listen".to_owned(), addr]);
        self.master = spawn_master(&self.db, &options);
    }

    /// Opens the ledger for assertions beside the running master (read-only on SQLite).
    /// Queries use `$1` placeholders, which both engines read.
    pub async fn ledger(&self) -> sqlx::AnyPool {
        open_ledger(&self.db).await
    }

    /// The SQLite ledger file (the test is about the file itself).
    pub fn db_file(&self) -> &Path {
        assert!(!self.db.starts_with("postgres"), "this check is about a SQLite file");
        Path::new(&self.db)
    }
}

/// Starts a master on `db` with `options` (port 0 unless `--listen` is among the args).
pub fn spawn_master(db: &str, options: &MasterOptions) -> Process {
    let mut args = vec!["serve".to_owned(), "--db".to_owned(), db.to_owned()];
    if !options.args.iter().any(|arg| arg == "--listen") {
        args.extend(["--listen".to_owned(), "127.0.0.1:0".to_owned()]);
    }
    args.extend(options.args.iter().cloned());
    let mut envs: Vec<(&str, &str)> =
        options.envs.iter().map(|(key, value)| (key.as_str(), value.as_str())).collect();
    if let Some(token) = &options.token {
        envs.push(("CLUSTER_TOKEN", token.as_str()));
    }
    Process::spawn("master", &bins().master, &args, &envs)
}

/// Starts slave `name` of `capacity` on port 0, given `masters` (one URL or a list), with
/// extra `flags` and the cluster token, without waiting for it to register.
fn spawn_slave(masters: &str, name: &str, capacity: u32, flags: &[String], token: Option<&str>) -> Process {
    let mut args: Vec<String> =
        ["--master", masters, "--name", name, "--listen", "127.0.0.1:0", "--capacity"]
            .map(String::from)
            .to_vec();
    args.push(capacity.to_string());
    args.extend(flags.iter().cloned());
    let envs: Vec<(&str, &str)> = token.map(|token| ("CLUSTER_TOKEN", token)).into_iter().collect();
    Process::spawn(name, &bins().slave, &args, &envs)
}

/// Whether this run must not skip a test whose tool or privilege is missing (CI).
pub fn required() -> bool {
    std::env::var_os("CI").is_some_and(|value| !value.is_empty() && value != "false")
}

/// Opens a master's ledger: a PostgreSQL URL, or a SQLite file read-only (WAL allows
/// it beside a running master).
pub async fn open_ledger(db: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    let url = if db.starts_with("postgres") { db.to_owned() } else { format!("sqlite://{db}?mode=ro") };
    sqlx::any::AnyPoolOptions::new().max_connections(1).connect(&url).await.expect("open ledger")
}

/// Several masters on one PostgreSQL database (SPEC §11), and slaves given all of them
/// as `--master A,B,C`.
pub struct Masters {
    pub db: String,
    pub masters: Vec<Process>,
    pub slaves: Vec<Process>,
    pub http: Http,
    pub options: MasterOptions,
    /// Extra flags each slave gets.
    pub slave_args: Vec<String>,
}

impl Masters {
    /// `count` masters on a fresh database (started one after the other), then one
    /// slave per capacity, registered in order, each up on every master. `None` when
    /// no PostgreSQL server is available here (outside CI).
    pub async fn start(
        count: usize,
        options: MasterOptions,
        slave_args: Vec<String>,
        capacities: &[u32],
    ) -> Option<Masters> {
        postgres::or_skip(postgres::server().await)?;
        let db = postgres::fresh_database().await.expect("a fresh PostgreSQL database");
        let masters = (0..count).map(|_| spawn_master(&db, &options)).collect();
        let http = Http::new(options.token.as_deref());
        let mut set = Masters { db, masters, slaves: Vec::new(), http, options, slave_args };
        for (index, capacity) in capacities.iter().enumerate() {
            set.add_slave(&format!("slave-{}", index + 1), *capacity).await;
        }
        Some(set)
    }

    /// Master `index`'s URL joined with `path`.
    pub fn url(&self, index: usize, path: &str) -> String {
        format!("{}{path}", self.masters[index].url)
    }

    /// Every master's URL, comma-separated, starting from master `first`.
    pub fn list_from(&self, first: usize) -> String {
        let count = self.masters.len();
        (0..count).map(|step| self.masters[(first + step) % count].url.clone()).collect::<Vec<_>>().join(",")
    }

    /// Starts a slave given every master (master 0 first) and waits until each master
    /// that is running lists it as up.
    pub async fn add_slave(&mut self, name: &str, capacity: u32) {
        let process = self.spawn_slave(name, capacity, 0);
        self.slaves.push(process);
        for index in 0..self.masters.len() {
            self.wait_for_slave_state(index, name, "up").await;
        }
    }

    /// Starts a slave whose master list begins at master `first`, without waiting.
    pub fn spawn_slave(&self, name: &str, capacity: u32, first: usize) -> Process {
        spawn_slave(&self.list_from(first), name, capacity, &self.slave_args, self.options.token.as_deref())
    }

    /// Waits until master `index`'s `GET /slaves` shows `name` in `state`.
    pub async fn wait_for_slave_state(&self, index: usize, name: &str, state: &str) -> Value {
        let what = format!("master {index} to list {name} as {state}");
        eventually(&what, || async {
            let slaves = self.http.get(&self.url(index, "/slaves")).await.body;
            slaves["slaves"].as_array()?.iter().find(|s| s["name"] == name && s["state"] == state).cloned()
        })
        .await
    }

    /// `POST /tasks` to master `index`.
    pub async fn submit(&self, index: usize, expression: &str, delay_ms: u64) -> Reply {
        let body = json!({"expression": expression, "delay_ms": delay_ms});
        self.http.post(&self.url(index, "/tasks"), &body).await
    }

    /// Long-polls master `index` until task `id` is final.
    pub async fn wait_final(&self, index: usize, id: i64) -> Value {
        eventually(&format!("task {id} to finish (through master {index})"), || async {
            let reply = self.http.get(&self.url(index, &format!("/tasks/{id}?wait=5"))).await;
            let task: master_client::Task = serde_json::from_value(reply.body.clone()).ok()?;
            task.is_final().then_some(reply.body)
        })
        .await
    }

    /// Opens the shared ledger for assertions.
    pub async fn ledger(&self) -> sqlx::AnyPool {
        open_ledger(&self.db).await
    }
}
