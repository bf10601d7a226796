//! The master's calls to slaves (SPEC §5): the offer ("are you available?" and the
//! assignment in one request), the drop of a task it should stop, and the availability
//! probe that registration uses to tell a slave from anything else.
//!
//! Offers to one slave travel one request at a time: the offers made while a request
//! is out go together in the next one (`POST /offers`), each still answered on its
//! own. Under load that is one request for many tasks instead of one each; a lone
//! offer goes at once, as `POST /tasks`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use common::{
    auth::Token,
    protocol::{Availability, MAX_OFFERS_PER_REQUEST, Offer, OfferAnswers},
};
use reqwest::StatusCode;
use tokio::sync::oneshot;

use crate::model::TaskId;

/// A slave's answer to one offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 202 "I am available": the slot is reserved and the task is the slave's.
    Accepted,
    /// 409 "I am not available".
    Refused,
    /// No answer within the offer timeout, or not a slave's answer: why.
    Unreachable(String),
}

/// Body bytes of the offers in one `POST /offers`: half the slave's body limit, so a
/// request never nears it (a single offer of any size goes alone, as `POST /tasks`).
const OFFERS_BODY_BUDGET: usize = 32 * 1024;

/// The HTTP client for slaves, with the cluster token and the offer timeout.
pub struct SlaveCalls {
    sender: OfferSender,
    /// Offers waiting for the request out to each slave URL to end.
    lines: Mutex<HashMap<String, Arc<OfferLine>>>,
}

/// What sends offers: no redirects, connect and total timeouts
/// (`slave::reporter::http_client`).
#[derive(Clone)]
struct OfferSender {
    http: reqwest::Client,
    token: Token,
    offer_timeout: Duration,
}

/// The offers to one slave URL not sent yet, and whether a request is out.
#[derive(Default)]
struct OfferLine(Mutex<LineState>);

#[derive(Default)]
struct LineState {
    queued: Vec<QueuedOffer>,
    sending: bool,
}

/// One offer, serialised once, and who waits for its answer.
struct QueuedOffer {
    body: Vec<u8>,
    answer: oneshot::Sender<Answer>,
}

impl OfferLine {
    fn lock(&self) -> MutexGuard<'_, LineState> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The next request's offers, oldest first, within the count and byte budgets (at
    /// least one); `None`, and the line idle, when nothing is queued.
    fn next_batch(&self) -> Option<Vec<QueuedOffer>> {
        let mut state = self.lock();
        if state.queued.is_empty() {
            state.sending = false;
            return None;
        }
        let mut bytes = 0;
        let count = state
            .queued
            .iter()
            .take(MAX_OFFERS_PER_REQUEST)
            .take_while(|offer| {
                bytes += offer.body.len() + 1;
                bytes <= OFFERS_BODY_BUDGET
            })
            .count()
            .max(1);
        Some(state.queued.drain(..count).collect())
    }
}

impl SlaveCalls {
    pub fn new(http: reqwest::Client, token: Token, offer_timeout: Duration) -> Self {
        Self { sender: OfferSender { http, token, offer_timeout }, lines: Mutex::default() }
    }

    /// Offers `offer` to the slave `name` at `url`: 202 accepted, 409 refused, anything
    /// else (or silence past the offer timeout) unreachable.
    #[tracing::instrument(name = "offer", skip_all, fields(slave = %name, task_id = offer.task_id))]
    pub async fn offer(&self, name: &str, url: &str, offer: &Offer) -> Answer {
        let mut answers = self.offer_all(url, std::slice::from_ref(offer)).await;
        answers.pop().unwrap_or_else(|| Answer::Unreachable("the offer was not sent".to_owned()))
    }

    /// Offers every one of `offers` to the slave at `url`, in one request when none is
    /// out to it (else in the next): the slave takes them in order while it has room.
    /// One answer per offer, in order.
    pub async fn offer_all(&self, url: &str, offers: &[Offer]) -> Vec<Answer> {
        if offers.is_empty() {
            return Vec::new(); // nothing to send: no sender to wake
        }
        let mut waiting = Vec::with_capacity(offers.len());
        let mut queued = Vec::with_capacity(offers.len());
        for offer in offers {
            let (answer, waiter) = oneshot::channel();
            match serde_json::to_vec(offer) {
                Ok(body) => queued.push(QueuedOffer { body, answer }),
                Err(error) => {
                    let _ =
                        answer.send(Answer::Unreachable(format!("the offer could not be encoded: {error}")));
                }
            }
            waiting.push(waiter);
        }
        let line = self.line(url);
        let start = {
            let mut state = line.lock();
            state.queued.append(&mut queued);
            !std::mem::replace(&mut state.sending, true)
        };
        if start {
            tokio::spawn(self.sender.clone().drain(line, url.to_owned()));
        }
        let answers = futures_util::future::join_all(waiting).await;
        let lost = || Answer::Unreachable("the offer was not sent".to_owned());
        answers.into_iter().map(|answer| answer.unwrap_or_else(|_| lost())).collect()
    }

    fn line(&self, url: &str) -> Arc<OfferLine> {
        let mut lines = self.lines.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        lines.entry(url.to_owned()).or_default().clone()
    }

    /// `DELETE {url}/tasks/{id}?attempt=` in the background, best effort: the ledger has
    /// already decided, and a late result from the slave is refused anyway.
    pub fn drop_task(&self, name: String, url: String, id: TaskId, attempt: i64) {
        let request = self
            .sender
            .token
            .authorize(self.sender.http.delete(format!("{url}/tasks/{id}?attempt={attempt}")));
        tokio::spawn(async move {
            match request.send().await {
                Ok(response) => {
                    tracing::debug!(task_id = %id, slave = %name, status = %response.status(), "drop sent")
                }
                Err(error) => {
                    tracing::warn!(task_id = %id, slave = %name, %error, "could not tell slave to drop task")
                }
            }
        });
    }

    /// `GET {url}/availability`, as a slave answers it: `Ok` with the instance it
    /// names, `Err` with what it answered instead. A master answers 404 there.
    pub async fn availability(&self, url: &str) -> Result<Option<String>, String> {
        let request = self.sender.http.get(format!("{url}/availability")).timeout(self.sender.offer_timeout);
        let response = request.send().await.map_err(|error| error.to_string())?;
        if response.status() != StatusCode::OK {
            return Err(format!("GET /availability answered {}", response.status()));
        }
        let availability: Availability = response
            .json()
            .await
            .map_err(|error| format!("GET /availability answered no slave's body: {error}"))?;
        Ok(availability.instance)
    }
}

impl OfferSender {
    /// Sends the line's offers, a request at a time, until none is left. When a slave
    /// does not answer, every offer queued to it hears so at once rather than waiting
    /// out another timeout each.
    async fn drain(self, line: Arc<OfferLine>, url: String) {
        while let Some(batch) = line.next_batch() {
            let (bodies, waiters): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|offer| (offer.body, offer.answer)).unzip();
            let answers = self.send(&url, bodies).await;
            if let Err(why) = &answers {
                let queued = std::mem::take(&mut line.lock().queued);
                for offer in queued {
                    let _ = offer.answer.send(Answer::Unreachable(why.clone()));
                }
            }
            match answers {
                Ok(answers) => waiters.into_iter().zip(answers).for_each(|(waiter, answer)| {
                    let _ = waiter.send(answer);
                }),
                Err(why) => waiters.into_iter().for_each(|waiter| {
                    let _ = waiter.send(Answer::Unreachable(why.clone()));
                }),
            }
        }
    }

    /// One request with the offers (`POST /tasks` for one, `POST /offers` for more):
    /// an answer for each, or why the slave gave none.
    async fn send(&self, url: &str, mut bodies: Vec<Vec<u8>>) -> Result<Vec<Answer>, String> {
        let count = bodies.len();
        let (path, body) =
            if count == 1 { ("tasks", bodies.swap_remove(0)) } else { ("offers", offers_body(&bodies)) };
        let request = self
            .http
            .post(format!("{url}/{path}"))
            .timeout(self.offer_timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        let response = self.token.authorize(request).send().await.map_err(|error| error.to_string())?;
        match response.status() {
            StatusCode::ACCEPTED if count == 1 => Ok(vec![Answer::Accepted]),
            StatusCode::CONFLICT if count == 1 => Ok(vec![Answer::Refused]),
            StatusCode::OK if count > 1 => {
                let answered: OfferAnswers =
                    response.json().await.map_err(|error| format!("answered no offers' body: {error}"))?;
                if answered.answers.len() != count {
                    return Err(format!("answered {} of {count} offers", answered.answers.len()));
                }
                let answer = |a: Availability| if a.available { Answer::Accepted } else { Answer::Refused };
                Ok(answered.answers.into_iter().map(answer).collect())
            }
            status => Err(format!("answered {status}")),
        }
    }
}

/// `{"offers":[…]}` from offers already serialised.
fn offers_body(bodies: &[Vec<u8>]) -> Vec<u8> {
    let mut body = Vec::with_capacity(bodies.iter().map(|b| b.len() + 1).sum::<usize>() + 16);
    body.extend_from_slice(b"{\"offers\":[");
    for (index, offer) in bodies.iter().enumerate() {
        if index > 0 {
            body.push(b',');
        }
        body.extend_from_slice(offer);
    }
    body.extend_from_slice(b"]}");
    body
}
