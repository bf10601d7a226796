//! The master's calls to slaves (SPEC §5): the offer ("are you available?" and the
//! assignment in one request), the drop of a task it should stop, and the availability
//! probe that registration uses to tell a slave from anything else.

use std::time::Duration;

use common::{
    auth::Token,
    protocol::{Availability, Offer},
};
use reqwest::StatusCode;

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

/// The HTTP client for slaves, with the cluster token and the offer timeout.
pub struct SlaveCalls {
    /// No redirects, connect and total timeouts (`slave::reporter::http_client`).
    http: reqwest::Client,
    token: Token,
    offer_timeout: Duration,
}

impl SlaveCalls {
    pub fn new(http: reqwest::Client, token: Token, offer_timeout: Duration) -> Self {
        Self { http, token, offer_timeout }
    }

    /// `POST {url}/tasks` with the offer to the slave `name`: 202 accepted, 409 refused,
    /// anything else (or silence past the offer timeout) unreachable.
    #[tracing::instrument(name = "offer", skip_all, fields(slave = %name, task_id = offer.task_id))]
    pub async fn offer(&self, name: &str, url: &str, offer: &Offer) -> Answer {
        let request = self.http.post(format!("{url}/tasks")).timeout(self.offer_timeout).json(offer);
        match self.token.authorize(request).send().await {
            Ok(response) if response.status() == StatusCode::ACCEPTED => Answer::Accepted,
            Ok(response) if response.status() == StatusCode::CONFLICT => Answer::Refused,
            Ok(response) => Answer::Unreachable(format!("answered {}", response.status())),
            Err(error) => Answer::Unreachable(error.to_string()),
        }
    }

    /// `DELETE {url}/tasks/{id}?attempt=` in the background, best effort: the ledger has
    /// already decided, and a late result from the slave is refused anyway.
    pub fn drop_task(&self, name: String, url: String, id: TaskId, attempt: i64) {
        let request = self.token.authorize(self.http.delete(format!("{url}/tasks/{id}?attempt={attempt}")));
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
        let request = self.http.get(format!("{url}/availability")).timeout(self.offer_timeout);
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
