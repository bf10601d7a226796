//! The master's public API as the bench uses it: the typed client (`master-client`)
//! over one keep-alive pool sized for the bench's windows, a submit connection of its
//! own for each worker that submits back to back (`throughput`, `flood`), plus the two
//! readings the workloads need (a refusal as "busy", the slaves that are up).

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use common::{auth::Token, protocol::Variables};
use master_client::{ClientError, MasterClient, Options, Submitted};
pub use master_client::{Page, StatusPage, Task};

use super::BenchError;

/// Idle keep-alive connections kept per host: more than any window the bench opens, so
/// a finished request's connection is reused rather than a new one dialled.
const POOL_IDLE_PER_HOST: usize = 4200;

/// A client of one master, or of several sharing a ledger: submissions and long polls
/// go to each in turn (the generator spreads its load over them), other reads to the
/// first.
#[derive(Clone)]
pub struct Api {
    client: MasterClient,
    /// One client per master (sharing `client`'s pool), taken in turn.
    each: Arc<[MasterClient]>,
    turn: Arc<AtomicUsize>,
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

impl Api {
    /// A client of the master at `base` (no trailing slash); `timeout` bounds each request.
    /// `base` may be a comma-separated list of masters.
    pub fn new(base: &str, timeout: Duration) -> Result<Self, BenchError> {
        let options = Options { timeout, idle_connections: POOL_IDLE_PER_HOST };
        let client = MasterClient::new(base, Token::default(), &options)?;
        let each = (0..client.bases().len()).map(|index| client.only(index)).collect();
        Ok(Self { client, each, turn: Arc::new(AtomicUsize::new(0)), timeout })
    }

    /// The next master in turn.
    fn next(&self) -> &MasterClient {
        &self.each[self.turn.fetch_add(1, Ordering::Relaxed) % self.each.len()]
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
        submission(self.next().submit(expression, variables, delay_ms_of(delay_ms)).await)
    }

    /// A connection of its own to the next master in turn, for one worker's
    /// submissions back to back (see [`Submitter`]).
    pub fn submitter(&self) -> Result<Submitter, BenchError> {
        Ok(Submitter(self.next().submitter(self.timeout)?))
    }

    /// `GET /tasks/{id}`, long-polling up to `wait` for it to finish.
    pub async fn task(&self, id: i64, wait: Duration) -> Result<Task, BenchError> {
        Ok(self.next().task(id, wait).await?)
    }

    /// `GET /tasks?after=&limit=[&status=]`.
    pub async fn page(&self, status: Option<&str>, after: i64, limit: u32) -> Result<Page, BenchError> {
        Ok(self.client.tasks(status, Some(after), i64::from(limit)).await?)
    }

    /// `GET /tasks?after=&limit=`, ids and statuses only (the throughput tracker).
    pub async fn statuses(&self, after: i64, limit: u32) -> Result<StatusPage, BenchError> {
        Ok(self.client.task_statuses(after, i64::from(limit)).await?)
    }

    /// `GET /tasks?order=newest&before=&limit=` with a status or a slave filter: the
    /// dashboard's pages.
    pub async fn page_newest(
        &self,
        filter: (&str, String),
        before: i64,
        limit: u32,
    ) -> Result<Page, BenchError> {
        let query = [
            ("order", "newest".to_owned()),
            ("before", before.to_string()),
            ("limit", limit.to_string()),
            filter,
        ];
        Ok(self.client.tasks_where(&query).await?)
    }

    /// Names of the slaves `GET /slaves` lists as up, in order.
    pub async fn slave_names_up(&self) -> Result<Vec<String>, BenchError> {
        let slaves = self.client.slaves().await?;
        Ok(slaves.into_iter().filter(|s| s.state == "up").map(|s| s.name).collect())
    }

    /// The fewest slaves any one master lists as up (with several masters, each learns
    /// of a slave registered through another within a fraction of a second).
    pub async fn fewest_slaves_up(&self) -> Result<usize, BenchError> {
        let mut fewest = usize::MAX;
        for master in self.each.iter() {
            let slaves = master.slaves().await?;
            fewest = fewest.min(slaves.iter().filter(|s| s.state == "up").count());
        }
        Ok(fewest)
    }

    /// `GET /metrics` (Prometheus text).
    pub async fn metrics_text(&self) -> Result<String, BenchError> {
        Ok(self.client.metrics_text().await?)
    }

    /// `GET /healthz` answered 200.
    pub async fn healthz(&self) -> Result<(), BenchError> {
        Ok(self.client.healthz().await?)
    }
}

/// One worker's submit connection (`master_client::Submitter`), answering as
/// [`Api::submit`] does.
pub struct Submitter(master_client::Submitter);

impl Submitter {
    /// `POST /tasks` on this worker's connection.
    pub async fn submit(
        &mut self,
        expression: &str,
        variables: &Variables,
        delay_ms: u64,
    ) -> Result<Submission, BenchError> {
        submission(self.0.submit(expression, variables, delay_ms_of(delay_ms)).await)
    }
}

fn delay_ms_of(delay_ms: u64) -> i64 {
    i64::try_from(delay_ms).unwrap_or(i64::MAX)
}

/// A submission's answer as the workloads count it.
fn submission(answer: Result<Submitted, ClientError>) -> Result<Submission, BenchError> {
    match answer {
        Ok(submitted) => Ok(Submission::Accepted(submitted.id)),
        Err(error) if matches!(error.code(), Some("full_capacity" | "queue_full")) => Ok(Submission::Busy),
        Err(error) => Err(error.into()),
    }
}

impl From<ClientError> for BenchError {
    fn from(error: ClientError) -> Self {
        match error {
            ClientError::Http(error) => Self::Http(error),
            ClientError::Connection(reason) => Self::Connection(reason),
            ClientError::Api { call, status, code, message } => {
                Self::Api { call, status, body: format!("{code}: {message}") }
            }
        }
    }
}
