//! The master's public HTTP API as the bench uses it (SPEC §4): one keep-alive
//! connection pool, typed answers for the fields the workloads read.

use std::time::Duration;

use common::protocol::Variables;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::BenchError;

/// Idle keep-alive connections kept per host: more than any window the bench opens, so
/// a finished request's connection is reused rather than a new one dialled.
const POOL_IDLE_PER_HOST: usize = 4200;

/// A client of one master.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    timeout: Duration,
}

/// What `POST /tasks` answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Submission {
    /// 201 assigned or 202 queued: the task is in the ledger.
    Accepted(i64),
    /// 503 `full_capacity` / `queue_full`: nothing stored, try again later.
    Busy,
}

/// The fields of a task the bench reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Task {
    pub id: i64,
    pub status: String,
    #[serde(default)]
    pub slave: Option<SlaveRef>,
}

/// A task's slave.
#[derive(Debug, Clone, Deserialize)]
pub struct SlaveRef {
    pub name: String,
}

impl Task {
    /// Whether nothing will move the task any more (SPEC §3).
    pub fn is_final(&self) -> bool {
        matches!(self.status.as_str(), "done" | "failed" | "cancelled")
    }
}

/// A page of `GET /tasks`.
#[derive(Debug, Deserialize)]
pub struct Page {
    pub tasks: Vec<Task>,
    pub counts: Counts,
    pub next: Option<i64>,
}

/// `counts` of `GET /tasks` that the bench reads (finished tasks).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct Counts {
    pub done: u64,
    pub failed: u64,
    pub cancelled: u64,
}

#[derive(Deserialize)]
struct SlaveList {
    slaves: Vec<SlaveEntry>,
}

#[derive(Deserialize)]
struct SlaveEntry {
    name: String,
    state: String,
}

impl Api {
    /// A client of the master at `base` (no trailing slash); `timeout` bounds each request.
    pub fn new(base: &str, timeout: Duration) -> Result<Self, BenchError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(timeout)
            .pool_max_idle_per_host(POOL_IDLE_PER_HOST)
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self { http, base: base.to_owned(), timeout })
    }

    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `POST /tasks`.
    pub async fn submit(
        &self,
        expression: &str,
        variables: &Variables,
        delay_ms: u64,
    ) -> Result<Submission, BenchError> {
        let body = json!({ "expression": expression, "variables": variables, "delay_ms": delay_ms });
        let response = self.http.post(format!("{}/tasks", self.base)).json(&body).send().await?;
        let status = response.status();
        let body: Value = response.json().await?;
        match status {
            StatusCode::CREATED | StatusCode::ACCEPTED => body["id"]
                .as_i64()
                .map(Submission::Accepted)
                .ok_or_else(|| unexpected("POST /tasks", status, &body)),
            StatusCode::SERVICE_UNAVAILABLE
                if matches!(body["error"].as_str(), Some("full_capacity" | "queue_full")) =>
            {
                Ok(Submission::Busy)
            }
            _ => Err(unexpected("POST /tasks", status, &body)),
        }
    }

    /// `GET /tasks/{id}`, long-polling up to `wait` for it to finish.
    pub async fn task(&self, id: i64, wait: Duration) -> Result<Task, BenchError> {
        let url = format!("{}/tasks/{id}?wait={}", self.base, wait.as_secs_f64());
        self.get_json(&url, "GET /tasks/{id}").await
    }

    /// `GET /tasks?after=&limit=[&status=]`.
    pub async fn page(&self, status: Option<&str>, after: i64, limit: u32) -> Result<Page, BenchError> {
        let mut url = format!("{}/tasks?after={after}&limit={limit}", self.base);
        if let Some(status) = status {
            url.push_str("&status=");
            url.push_str(status);
        }
        self.get_json(&url, "GET /tasks").await
    }

    /// Names of the slaves `GET /slaves` lists as up, in order.
    pub async fn slave_names_up(&self) -> Result<Vec<String>, BenchError> {
        let list: SlaveList = self.get_json(&format!("{}/slaves", self.base), "GET /slaves").await?;
        Ok(list.slaves.into_iter().filter(|s| s.state == "up").map(|s| s.name).collect())
    }

    /// `GET /metrics` (Prometheus text).
    pub async fn metrics_text(&self) -> Result<String, BenchError> {
        let response = self.http.get(format!("{}/metrics", self.base)).send().await?;
        let status = response.status();
        if !status.is_success() {
            return Err(BenchError::Api {
                call: "GET /metrics",
                status: status.as_u16(),
                body: String::new(),
            });
        }
        Ok(response.text().await?)
    }

    /// `GET /healthz` answered 200.
    pub async fn healthz(&self) -> Result<(), BenchError> {
        let response = self.http.get(format!("{}/healthz", self.base)).send().await?;
        match response.status() {
            StatusCode::OK => Ok(()),
            status => {
                Err(BenchError::Api { call: "GET /healthz", status: status.as_u16(), body: String::new() })
            }
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        call: &'static str,
    ) -> Result<T, BenchError> {
        let response = self.http.get(url).send().await?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(BenchError::Api { call, status: status.as_u16(), body });
        }
        Ok(response.json().await?)
    }
}

fn unexpected(call: &'static str, status: StatusCode, body: &Value) -> BenchError {
    BenchError::Api { call, status: status.as_u16(), body: body.to_string() }
}
