//! Every call the slave makes to the master (SPEC §7): registration (retried until the
//! master answers), heartbeats listing held tasks, and result reports retried with
//! backoff until the master takes them or says the task is no longer this slave's.

use std::{sync::Arc, time::Duration};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use common::protocol::{Heartbeat, Outcome, Registration, ResultAnswer, ResultsReport, TaskResult};
use master_client::{ClientError, MasterClient};

use crate::{SlaveConfig, metrics::SlaveMetrics, slots::Slots};

/// First wait after a failed call to the master; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait between two tries, so a master that comes back is noticed quickly.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Connect timeout of every call to the master (SPEC §8).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Total timeout of every call to the master (SPEC §8).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle keep-alive connections kept per peer: enough for steady traffic, few enough
/// that a burst's connections do not stay open (and resident) after it.
const IDLE_CONNECTIONS_PER_PEER: usize = 32;
/// An idle connection older than this is closed.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Handle for talking to the master; cheap to clone.
#[derive(Clone)]
pub struct Reporter {
    inner: Arc<Inner>,
}

struct Inner {
    master: MasterClient,
    registration: Registration,
    /// The id the master gave this slave; `None` until the first registration succeeds.
    slave_id: watch::Sender<Option<i64>>,
    slots: Arc<Slots>,
    /// Results on their way to the master (see [`report_results`]).
    results: mpsc::UnboundedSender<ReadyResult>,
}

/// An HTTP client with the timeouts of SPEC §8 and no redirects.
pub fn http_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        // Cluster traffic goes straight to its peer, whatever HTTP_PROXY says.
        .no_proxy()
        // A burst of offers opens one connection each; keeping them all idle afterwards
        // (reqwest keeps any number by default) holds their buffers for nothing.
        .pool_max_idle_per_host(IDLE_CONNECTIONS_PER_PEER)
        .pool_idle_timeout(IDLE_CONNECTION_TIMEOUT)
        .tcp_nodelay(true)
        .build()
}

impl Reporter {
    /// A reporter for the slave described by `config`, reachable at `advertised_url`.
    pub fn new(
        config: &SlaveConfig,
        advertised_url: String,
        instance: String,
        slots: Arc<Slots>,
        metrics: SlaveMetrics,
    ) -> anyhow::Result<Self> {
        let registration = Registration {
            name: config.name.clone(),
            url: advertised_url,
            capacity: u32::try_from(config.capacity).unwrap_or(u32::MAX),
            instance: Some(instance),
        };
        let master = MasterClient::with_http(&config.master_url, config.token.clone(), http_client()?);
        let slave_id = watch::Sender::new(None);
        let (results, queue) = mpsc::unbounded_channel();
        tokio::spawn(report_results(queue, master.clone(), slave_id.subscribe(), metrics));
        Ok(Self { inner: Arc::new(Inner { master, registration, slave_id, slots, results }) })
    }

    /// The id the master gave this slave, once registered.
    pub fn slave_id(&self) -> Option<i64> {
        *self.inner.slave_id.borrow()
    }

    /// Registers, then heartbeats every `interval`; registers again when the master
    /// answers a heartbeat with 404 (it forgot this slave). Returns when `stop` fires.
    pub async fn keep_registered(self, interval: Duration, stop: CancellationToken) {
        loop {
            let Some(id) = self.register_until_accepted(&stop).await else { return };
            loop {
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    () = stop.cancelled() => return,
                }
                match self.heartbeat(id).await {
                    Ok(()) => {}
                    Err(error) if error.status() == Some(404) => {
                        tracing::warn!(slave_id = id, "master does not know this slave; registering again");
                        break;
                    }
                    Err(error) if error.status() == Some(409) => {
                        // Another process registered under this name while this one was
                        // taken for down: it owns the name now (SPEC §8).
                        tracing::error!(slave_id = id, name = %self.inner.registration.name,
                            "another process took over this slave name; registering again");
                        break;
                    }
                    Err(error) => tracing::warn!(%error, "heartbeat failed"),
                }
            }
        }
    }

    async fn register_until_accepted(&self, stop: &CancellationToken) -> Option<i64> {
        let mut backoff = FIRST_BACKOFF;
        loop {
            match self.inner.master.register(&self.inner.registration).await {
                Ok(registered) => {
                    tracing::info!(slave_id = registered.id, position = registered.position, master = %self.inner.master.base(), "registered");
                    self.inner.slave_id.send_replace(Some(registered.id));
                    self.inner.slots.start_accepting();
                    return Some(registered.id);
                }
                Err(error) => {
                    tracing::warn!(%error, master = %self.inner.master.base(), "registration failed; retrying")
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = stop.cancelled() => return None,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn heartbeat(&self, id: i64) -> Result<(), ClientError> {
        let slots = &self.inner.slots;
        let body = Heartbeat {
            running: slots.held_ids(),
            draining: slots.is_stopping(),
            instance: self.inner.registration.instance.clone(),
        };
        self.inner.master.heartbeat(id, &body).await
    }

    /// A heartbeat now, out of turn: at shutdown, so the master learns at once that this
    /// slave is draining, and again at the end so it re-dispatches what this slave no
    /// longer holds without waiting for the slave timeout.
    pub async fn send_heartbeat_now(&self) {
        if let Some(id) = self.slave_id()
            && let Err(error) = self.heartbeat(id).await
        {
            tracing::warn!(%error, "final heartbeat failed; the master will notice by timeout");
        }
    }

    /// Reports a task's outcome and returns once the master has recorded it or said the
    /// task is not this slave's any more (403, 404, 409). Results ready at the same
    /// time travel together in one `POST /results` (see [`report_results`]).
    pub async fn deliver_result(&self, task_id: i64, attempt: i64, outcome: Outcome) {
        let (settled, answer) = oneshot::channel();
        let result = TaskResult { task_id, attempt, outcome };
        if self.inner.results.send(ReadyResult { result, settled }).is_err() {
            return; // the reporter is gone: the slave is shutting down
        }
        let _ = answer.await;
    }
}

/// A result waiting to reach the master, and the run waiting for it to get there.
struct ReadyResult {
    result: TaskResult,
    settled: oneshot::Sender<()>,
}

impl ReadyResult {
    /// Roughly its share of a request body, to keep reports under the master's limit.
    fn size(&self) -> usize {
        let words = match &self.result.outcome {
            Outcome::Error(error) => error.len(),
            Outcome::Value(_) => 0,
        };
        RESULT_OVERHEAD_BYTES + words
    }
}

/// Most results in one report: enough that a busy slave sends a few requests where
/// it would send hundreds, small enough that one report is answered in milliseconds.
const MAX_RESULTS_PER_REPORT: usize = 256;
/// Most bytes of results in one report, well under the master's 64 KiB body limit
/// (an error message can be long).
const MAX_REPORT_BYTES: usize = 32 * 1024;
/// A result's JSON without its error words, and then some.
const RESULT_OVERHEAD_BYTES: usize = 96;

/// Sends every ready result in one `POST /results`, one report at a time: while one
/// is in flight, the results finished meanwhile gather for the next. Each result is
/// settled on its own answer; the others (503, or the whole request failing) are sent
/// again with backoff. Returns once every [`Reporter`] is gone and the queue is empty.
async fn report_results(
    mut queue: mpsc::UnboundedReceiver<ReadyResult>,
    master: MasterClient,
    mut registered: watch::Receiver<Option<i64>>,
    metrics: SlaveMetrics,
) {
    let mut batch: Vec<ReadyResult> = Vec::new();
    let mut backoff = FIRST_BACKOFF;
    loop {
        if batch.is_empty() && queue.recv_many(&mut batch, MAX_RESULTS_PER_REPORT).await == 0 {
            return;
        }
        while batch.len() < MAX_RESULTS_PER_REPORT {
            let Ok(ready) = queue.try_recv() else { break };
            batch.push(ready);
        }
        // A run that stopped waiting (its task was dropped, or handed back at shutdown)
        // no longer needs its result delivered.
        batch.retain(|ready| !ready.settled.is_closed());
        if batch.is_empty() {
            continue;
        }
        // Past the byte budget: the rest waits for the next report.
        let mut sent = 0;
        let mut budget = 0;
        for ready in &batch {
            budget += ready.size();
            if sent > 0 && budget > MAX_REPORT_BYTES {
                break;
            }
            sent += 1;
        }
        let later = batch.split_off(sent);
        let slave_id = match registered.wait_for(Option::is_some).await {
            Ok(id) => id.unwrap_or_default(),
            Err(_) => return, // the reporter is gone: the slave is shutting down
        };
        let report =
            ResultsReport { slave_id, results: batch.iter().map(|ready| ready.result.clone()).collect() };
        let unsettled = match master.report_results(&report).await {
            Ok(answers) => settle(std::mem::take(&mut batch), answers.results),
            Err(error) => {
                tracing::warn!(%error, results = batch.len(), "results not delivered; retrying");
                std::mem::take(&mut batch)
            }
        };
        let failed = !unsettled.is_empty();
        metrics.result_retries.inc_by(unsettled.len() as u64);
        batch = unsettled;
        batch.extend(later);
        if failed {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        } else {
            backoff = FIRST_BACKOFF;
        }
    }
}

/// Settles each result its answer settles (answers come in the order sent); returns
/// those to send again.
fn settle(batch: Vec<ReadyResult>, answers: Vec<ResultAnswer>) -> Vec<ReadyResult> {
    let mut answers = answers.into_iter();
    let mut again = Vec::new();
    for ready in batch {
        let task_id = ready.result.task_id;
        match answers.next() {
            Some(answer) if answer.task_id == task_id && answer.is_settled() => {
                if answer.status >= 300 {
                    tracing::info!(task_id, attempt = ready.result.attempt, status = answer.status, body = %answer.body,
                        "master no longer wants this result");
                }
                let _ = ready.settled.send(());
            }
            Some(answer) => {
                tracing::warn!(task_id, status = answer.status, body = %answer.body, "result not recorded; retrying");
                again.push(ready);
            }
            None => again.push(ready),
        }
    }
    again
}
