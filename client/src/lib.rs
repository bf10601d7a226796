//! The one typed client of the master's HTTP API (SPEC §4): the CLI's subcommands, the
//! load generator and the slave's reporter use it, so the API's JSON, "is this task
//! final?" and the error shape are read in one place. Its types mirror what the master serializes (the
//! master's handlers own the OpenAPI schema; a test in `tests/` reads live answers
//! through these types).

mod submitter;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use common::{
    auth::Token,
    protocol::{Heartbeat, Registered, Registration, ResultAnswers, ResultReport, ResultsReport, Variables},
};
use reqwest::{RequestBuilder, StatusCode};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

pub use self::submitter::Submitter;

/// Longest single long poll the master allows (`GET /tasks/{id}?wait=`).
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the master: {0}")]
    Http(#[from] reqwest::Error),
    /// The master answered with its error shape (SPEC §4).
    #[error("{call}: {status}: {code}: {message}")]
    Api { call: &'static str, status: u16, code: String, message: String },
    /// A [`Submitter`]'s own connection failed, or its answer could not be read.
    #[error("cannot reach the master: {0}")]
    Connection(String),
}

impl ClientError {
    /// The HTTP status the master answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            Self::Http(_) | Self::Connection(_) => None,
        }
    }

    /// The error code the master answered with, if it answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => Some(code),
            Self::Http(_) | Self::Connection(_) => None,
        }
    }
}

/// A slave as named inside a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlaveRef {
    pub id: i64,
    pub name: String,
}

/// A task as `GET /tasks/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: i64,
    pub expression: String,
    pub variables: Variables,
    pub delay_ms: i64,
    pub status: String,
    pub result: Option<f64>,
    pub error: Option<String>,
    pub slave: Option<SlaveRef>,
    pub attempts: i64,
    pub submitted_at: String,
    pub assigned_at: Option<String>,
    pub finished_at: Option<String>,
}

impl Task {
    /// Whether nothing will move the task any more (SPEC §3).
    pub fn is_final(&self) -> bool {
        matches!(self.status.as_str(), "done" | "failed" | "cancelled")
    }
}

/// Tasks by status, as in `GET /tasks`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub pending: u64,
    pub in_progress: u64,
    pub done: u64,
    pub failed: u64,
    pub cancelled: u64,
}

/// A page of `GET /tasks`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Page {
    pub tasks: Vec<Task>,
    pub counts: Counts,
    /// The `after` of the next page, if there may be one.
    pub next: Option<i64>,
}

/// A page of `GET /tasks` read for the ids and statuses only (the other fields are
/// skipped, not built): what a poller waiting for tasks to end needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct StatusPage {
    pub tasks: Vec<TaskStatusEntry>,
    /// The `after` of the next page, if there may be one.
    pub next: Option<i64>,
}

/// One task of a [`StatusPage`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TaskStatusEntry {
    pub id: i64,
    pub status: String,
}

impl TaskStatusEntry {
    /// Whether nothing will move the task any more (SPEC §3).
    pub fn is_final(&self) -> bool {
        matches!(self.status.as_str(), "done" | "failed" | "cancelled")
    }
}

/// What `POST /tasks` answered with 201 (assigned) or 202 (queued).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submitted {
    pub id: i64,
    pub status: String,
    /// "Task successfully assigned to slave-2", or that it waits for a slave.
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slave: Option<SlaveRef>,
}

/// The body of `POST /tasks`, borrowed from the caller.
#[derive(Serialize)]
struct NewTaskBody<'a> {
    expression: &'a str,
    variables: &'a Variables,
    delay_ms: i64,
}

/// One entry of a task's history (`GET /tasks/{id}/events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: i64,
    pub at: String,
    pub kind: String,
    pub slave: Option<SlaveRef>,
    pub detail: Option<String>,
}

/// A slave as `GET /slaves` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Slave {
    pub id: i64,
    pub name: String,
    pub url: String,
    pub capacity: u64,
    pub running: u64,
    pub state: String,
    pub position: i64,
    pub registered_at: String,
    pub last_seen_at: String,
    pub suspect: bool,
}

#[derive(Deserialize)]
struct SlaveList {
    slaves: Vec<Slave>,
}

#[derive(Deserialize)]
struct EventList {
    events: Vec<Event>,
}

/// The error shape, `{"error": "<code>", "message": "<words>"}`.
#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    message: String,
}

/// A master as `GET /masters` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Master {
    pub id: i64,
    pub url: String,
    pub started_at: String,
    pub last_seen_at: String,
    pub up: bool,
}

/// `GET /masters`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MasterList {
    pub masters: Vec<Master>,
    /// The id of the master that answered.
    pub this: Option<i64>,
}

/// A client of one master, or of several sharing one ledger (SPEC §11); cheap to clone
/// (one keep-alive pool, one idea of which master is live).
///
/// Given several URLs (`http://a:8080,http://b:8080`), each call goes to the master
/// that answered last and moves on to the next in the list when that one cannot be
/// reached — and, for the calls a slave makes (registration, heartbeats, results, which
/// the ledger makes safe to repeat), when it answers 5xx. A submission moves on only
/// when the connection was refused, never after the request may have been taken.
#[derive(Clone)]
pub struct MasterClient {
    http: reqwest::Client,
    bases: Arc<[String]>,
    /// Index into `bases` of the master to try first.
    live: Arc<AtomicUsize>,
    token: Token,
}

/// When a call moves on to the next master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failover {
    /// Only when the request never reached it (connection refused or timed out).
    Unsent,
    /// Also when the master failed (5xx) or the connection broke: the call is safe to
    /// repeat on another master.
    Repeatable,
}

/// The URLs of a comma-separated list, without trailing slashes or blanks.
pub fn parse_bases(list: &str) -> Vec<String> {
    list.split(',')
        .map(|base| base.trim().trim_end_matches('/').to_owned())
        .filter(|b| !b.is_empty())
        .collect()
}

/// How a [`MasterClient`] connects.
#[derive(Debug, Clone)]
pub struct Options {
    /// Bound on each request, long polls included.
    pub timeout: Duration,
    /// Idle keep-alive connections kept per host.
    pub idle_connections: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self { timeout: MAX_WAIT + Duration::from_secs(15), idle_connections: 8 }
    }
}

impl MasterClient {
    /// A client of the master at `base` (`http://host:port`), sending `token` on the
    /// calls that need it. No redirects are followed.
    pub fn new(bases: &str, token: Token, options: &Options) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(options.timeout)
            .pool_max_idle_per_host(options.idle_connections)
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self::with_http(bases, token, http))
    }

    /// Like [`MasterClient::new`] over an HTTP client of the caller's (its timeouts,
    /// pool and proxy settings). `bases` is one URL or a comma-separated list.
    pub fn with_http(bases: &str, token: Token, http: reqwest::Client) -> Self {
        let mut list = parse_bases(bases);
        if list.is_empty() {
            list.push(bases.to_owned());
        }
        Self { http, bases: list.into(), live: Arc::new(AtomicUsize::new(0)), token }
    }

    /// The base URL of the master calls go to first now.
    pub fn base(&self) -> &str {
        &self.bases[self.live.load(Ordering::Relaxed) % self.bases.len()]
    }

    /// Every master this client knows, in the order given.
    pub fn bases(&self) -> &[String] {
        &self.bases
    }

    /// A client of only the `index`-th master of the list (for a caller spreading its
    /// own load over the masters), sharing this one's connection pool.
    pub fn only(&self, index: usize) -> Self {
        let base = self.bases[index % self.bases.len()].clone();
        Self {
            http: self.http.clone(),
            bases: vec![base].into(),
            live: Arc::new(AtomicUsize::new(0)),
            token: self.token.clone(),
        }
    }

    /// `POST /tasks` (`delay_ms` as given: the master checks its range). A refusal (503 `full_capacity`, `queue_full`, ...) is an
    /// [`ClientError::Api`] with its code.
    pub async fn submit(
        &self,
        expression: &str,
        variables: &Variables,
        delay_ms: i64,
    ) -> Result<Submitted, ClientError> {
        // Serialised straight from the borrowed parts: no `Value` tree built per request.
        let body = NewTaskBody { expression, variables, delay_ms };
        self.call("POST /tasks", Failover::Unsent, |http, base| {
            http.post(format!("{base}/tasks")).json(&body)
        })
        .await
    }

    /// A connection of its own to the master calls go to first, for submissions back
    /// to back (the load generator); `timeout` bounds each.
    pub fn submitter(&self, timeout: Duration) -> Result<Submitter, ClientError> {
        Submitter::new(self.base(), &self.token, timeout)
    }

    /// `GET /tasks/{id}`, long-polling up to `wait` (at most [`MAX_WAIT`]) for it to finish.
    pub async fn task(&self, id: i64, wait: Duration) -> Result<Task, ClientError> {
        let wait = wait.min(MAX_WAIT).as_secs_f64();
        self.call("GET /tasks/{id}", Failover::Repeatable, |http, base| {
            http.get(format!("{base}/tasks/{id}?wait={wait}"))
        })
        .await
    }

    /// Long-polls `GET /tasks/{id}` until the task is final.
    pub async fn wait_final(&self, id: i64, step: Duration) -> Result<Task, ClientError> {
        loop {
            let task = self.task(id, step).await?;
            if task.is_final() {
                return Ok(task);
            }
        }
    }

    /// `GET /tasks?after=&limit=[&status=]`.
    pub async fn tasks(
        &self,
        status: Option<&str>,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Page, ClientError> {
        let mut query = vec![("limit", limit.to_string())];
        if let Some(status) = status {
            query.push(("status", status.to_owned()));
        }
        if let Some(after) = after {
            query.push(("after", after.to_string()));
        }
        self.tasks_where(&query).await
    }

    /// `GET /tasks` with any of its parameters (`order`, `before`, `slave`, ...).
    pub async fn tasks_where(&self, query: &[(&str, String)]) -> Result<Page, ClientError> {
        self.call("GET /tasks", Failover::Repeatable, |http, base| {
            http.get(format!("{base}/tasks")).query(query)
        })
        .await
    }

    /// `GET /tasks?after=&limit=`, read for ids and statuses only.
    pub async fn task_statuses(&self, after: i64, limit: i64) -> Result<StatusPage, ClientError> {
        let query = [("limit", limit.to_string()), ("after", after.to_string())];
        self.call("GET /tasks", Failover::Repeatable, |http, base| {
            http.get(format!("{base}/tasks")).query(&query)
        })
        .await
    }

    /// `GET /tasks/{id}/events`: the task's history, oldest first.
    pub async fn task_events(&self, id: i64) -> Result<Vec<Event>, ClientError> {
        let call = "GET /tasks/{id}/events";
        let list: EventList = self
            .call(call, Failover::Repeatable, |http, base| http.get(format!("{base}/tasks/{id}/events")))
            .await?;
        Ok(list.events)
    }

    /// `DELETE /tasks/{id}` (an admin call: carries the token).
    pub async fn cancel(&self, id: i64) -> Result<Task, ClientError> {
        self.call("DELETE /tasks/{id}", Failover::Repeatable, |http, base| {
            http.delete(format!("{base}/tasks/{id}"))
        })
        .await
    }

    /// `GET /slaves`, in registration order.
    pub async fn slaves(&self) -> Result<Vec<Slave>, ClientError> {
        let list: SlaveList = self
            .call("GET /slaves", Failover::Repeatable, |http, base| http.get(format!("{base}/slaves")))
            .await?;
        Ok(list.slaves)
    }

    /// `GET /masters`: the masters sharing the ledger, and which one answered.
    pub async fn masters(&self) -> Result<MasterList, ClientError> {
        self.call("GET /masters", Failover::Repeatable, |http, base| http.get(format!("{base}/masters")))
            .await
    }

    /// `GET /healthz` answered 200.
    pub async fn healthz(&self) -> Result<(), ClientError> {
        self.call::<Value>("GET /healthz", Failover::Unsent, |http, base| http.get(format!("{base}/healthz")))
            .await
            .map(drop)
    }

    /// `GET /metrics` (Prometheus text).
    pub async fn metrics_text(&self) -> Result<String, ClientError> {
        let response = self.http.get(format!("{}/metrics", self.base())).send().await?;
        let status = response.status();
        if !status.is_success() {
            return Err(api_error("GET /metrics", status, &response.text().await.unwrap_or_default()));
        }
        Ok(response.text().await?)
    }

    /// `POST /slaves`: registers (or re-registers) a slave.
    pub async fn register(&self, registration: &Registration) -> Result<Registered, ClientError> {
        self.call("POST /slaves", Failover::Repeatable, |http, base| {
            http.post(format!("{base}/slaves")).json(registration)
        })
        .await
    }

    /// `POST /slaves/{id}/heartbeat`. 404: the master forgot this slave; 409: another
    /// process holds its name now.
    pub async fn heartbeat(&self, slave_id: i64, heartbeat: &Heartbeat) -> Result<(), ClientError> {
        let request = |http: &reqwest::Client, base: &str| {
            http.post(format!("{base}/slaves/{slave_id}/heartbeat")).json(heartbeat)
        };
        self.call::<Value>("POST /slaves/{id}/heartbeat", Failover::Repeatable, request).await.map(drop)
    }

    /// `POST /tasks/{id}/result`. 403, 404 and 409 mean the master no longer wants it.
    pub async fn report_result(&self, task_id: i64, report: &ResultReport) -> Result<(), ClientError> {
        let request = |http: &reqwest::Client, base: &str| {
            http.post(format!("{base}/tasks/{task_id}/result")).json(report)
        };
        self.call::<Value>("POST /tasks/{id}/result", Failover::Repeatable, request).await.map(drop)
    }

    /// `POST /results`: several results at once, answered one by one in the order sent.
    pub async fn report_results(&self, report: &ResultsReport) -> Result<ResultAnswers, ClientError> {
        let request = |http: &reqwest::Client, base: &str| http.post(format!("{base}/results")).json(report);
        self.call("POST /results", Failover::Repeatable, request).await
    }

    /// Sends the request `build` makes for a master's base URL, with the token, to the
    /// live master and then, as `failover` allows, to each next one in the list; a 2xx
    /// body as `T`, anything else as the error shape. The master that answered becomes
    /// the live one.
    async fn call<T: DeserializeOwned>(
        &self,
        call: &'static str,
        failover: Failover,
        build: impl Fn(&reqwest::Client, &str) -> RequestBuilder,
    ) -> Result<T, ClientError> {
        let first = self.live.load(Ordering::Relaxed);
        let mut last_error = None;
        for step in 0..self.bases.len() {
            let index = (first + step) % self.bases.len();
            let outcome = self.call_one(call, build(&self.http, &self.bases[index])).await;
            let moves_on = match &outcome {
                Ok(_) => false,
                Err(ClientError::Http(error)) => {
                    error.is_connect() || failover == Failover::Repeatable && !error.is_decode()
                }
                Err(ClientError::Api { status, .. }) => failover == Failover::Repeatable && *status >= 500,
                Err(ClientError::Connection(_)) => false,
            };
            if !moves_on {
                if step > 0 {
                    self.live.store(index, Ordering::Relaxed);
                }
                return outcome;
            }
            last_error = Some(outcome);
        }
        last_error.unwrap_or_else(|| {
            Err(ClientError::Api {
                call,
                status: 0,
                code: "no_master".to_owned(),
                message: "no master URL given".to_owned(),
            })
        })
    }

    async fn call_one<T: DeserializeOwned>(
        &self,
        call: &'static str,
        request: RequestBuilder,
    ) -> Result<T, ClientError> {
        let response = self.token.authorize(request).send().await?;
        let status = response.status();
        if !status.is_success() {
            return Err(api_error(call, status, &response.text().await.unwrap_or_default()));
        }
        Ok(response.json().await?)
    }
}

fn api_error(call: &'static str, status: StatusCode, body: &str) -> ClientError {
    let (code, message) = match serde_json::from_str::<ErrorBody>(body) {
        Ok(shape) => (shape.error, shape.message),
        Err(_) => ("unexpected".to_owned(), body.chars().take(200).collect()),
    };
    ClientError::Api { call, status: status.as_u16(), code, message }
}
