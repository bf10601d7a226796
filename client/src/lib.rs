//! The one typed client of the master's HTTP API (SPEC §4): the CLI's subcommands, the
//! load generator and the slave's reporter use it, so the API's JSON, "is this task
//! final?" and the error shape are read in one place. Its types mirror what the master serializes (the
//! master's handlers own the OpenAPI schema; a test in `tests/` reads live answers
//! through these types).

use std::time::Duration;

use common::{
    auth::Token,
    protocol::{Heartbeat, Registered, Registration, ResultReport, Variables},
};
use reqwest::{RequestBuilder, StatusCode};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

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
}

impl ClientError {
    /// The HTTP status the master answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            Self::Http(_) => None,
        }
    }

    /// The error code the master answered with, if it answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => Some(code),
            Self::Http(_) => None,
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

/// A client of one master; cheap to clone (one keep-alive pool).
#[derive(Clone)]
pub struct MasterClient {
    http: reqwest::Client,
    base: String,
    token: Token,
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
    pub fn new(base: &str, token: Token, options: &Options) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(options.timeout)
            .pool_max_idle_per_host(options.idle_connections)
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self { http, base: base.trim_end_matches('/').to_owned(), token })
    }

    /// Like [`MasterClient::new`] over an HTTP client of the caller's (its timeouts,
    /// pool and proxy settings).
    pub fn with_http(base: &str, token: Token, http: reqwest::Client) -> Self {
        Self { http, base: base.trim_end_matches('/').to_owned(), token }
    }

    /// The master's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `POST /tasks` (`delay_ms` as given: the master checks its range). A refusal (503 `full_capacity`, `queue_full`, ...) is an
    /// [`ClientError::Api`] with its code.
    pub async fn submit(
        &self,
        expression: &str,
        variables: &Variables,
        delay_ms: i64,
    ) -> Result<Submitted, ClientError> {
        let body = json!({ "expression": expression, "variables": variables, "delay_ms": delay_ms });
        self.call("POST /tasks", self.http.post(self.url("/tasks")).json(&body)).await
    }

    /// `GET /tasks/{id}`, long-polling up to `wait` (at most [`MAX_WAIT`]) for it to finish.
    pub async fn task(&self, id: i64, wait: Duration) -> Result<Task, ClientError> {
        let wait = wait.min(MAX_WAIT).as_secs_f64();
        self.call("GET /tasks/{id}", self.http.get(self.url(&format!("/tasks/{id}?wait={wait}")))).await
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
        self.call("GET /tasks", self.http.get(self.url("/tasks")).query(&query)).await
    }

    /// `GET /tasks/{id}/events`: the task's history, oldest first.
    pub async fn task_events(&self, id: i64) -> Result<Vec<Event>, ClientError> {
        let call = "GET /tasks/{id}/events";
        let list: EventList =
            self.call(call, self.http.get(self.url(&format!("/tasks/{id}/events")))).await?;
        Ok(list.events)
    }

    /// `DELETE /tasks/{id}` (an admin call: carries the token).
    pub async fn cancel(&self, id: i64) -> Result<Task, ClientError> {
        self.call("DELETE /tasks/{id}", self.http.delete(self.url(&format!("/tasks/{id}")))).await
    }

    /// `GET /slaves`, in registration order.
    pub async fn slaves(&self) -> Result<Vec<Slave>, ClientError> {
        let list: SlaveList = self.call("GET /slaves", self.http.get(self.url("/slaves"))).await?;
        Ok(list.slaves)
    }

    /// `GET /healthz` answered 200.
    pub async fn healthz(&self) -> Result<(), ClientError> {
        self.call::<Value>("GET /healthz", self.http.get(self.url("/healthz"))).await.map(drop)
    }

    /// `GET /metrics` (Prometheus text).
    pub async fn metrics_text(&self) -> Result<String, ClientError> {
        let response = self.http.get(self.url("/metrics")).send().await?;
        let status = response.status();
        if !status.is_success() {
            return Err(api_error("GET /metrics", status, &response.text().await.unwrap_or_default()));
        }
        Ok(response.text().await?)
    }

    /// `POST /slaves`: registers (or re-registers) a slave.
    pub async fn register(&self, registration: &Registration) -> Result<Registered, ClientError> {
        self.call("POST /slaves", self.http.post(self.url("/slaves")).json(registration)).await
    }

    /// `POST /slaves/{id}/heartbeat`. 404: the master forgot this slave; 409: another
    /// process holds its name now.
    pub async fn heartbeat(&self, slave_id: i64, heartbeat: &Heartbeat) -> Result<(), ClientError> {
        let request = self.http.post(self.url(&format!("/slaves/{slave_id}/heartbeat"))).json(heartbeat);
        self.call::<Value>("POST /slaves/{id}/heartbeat", request).await.map(drop)
    }

    /// `POST /tasks/{id}/result`. 403, 404 and 409 mean the master no longer wants it.
    pub async fn report_result(&self, task_id: i64, report: &ResultReport) -> Result<(), ClientError> {
        let request = self.http.post(self.url(&format!("/tasks/{task_id}/result"))).json(report);
        self.call::<Value>("POST /tasks/{id}/result", request).await.map(drop)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends `request` with the token; a 2xx body as `T`, anything else as the error shape.
    async fn call<T: DeserializeOwned>(
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
