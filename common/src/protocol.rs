//! Wire types shared by master and slave (SPEC §4, §5): the only definition of what
//! crosses the network between them, so the two sides cannot drift apart.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The words the original demo used; clients and the dashboard match on them.
pub const AVAILABLE: &str = "I am available";
/// See [`AVAILABLE`].
pub const NOT_AVAILABLE: &str = "I am not available";

/// Variable bindings of a task: name → finite number.
pub type Variables = BTreeMap<String, f64>;

/// Master → slave `POST /tasks`: "are you available?" and the assignment in one step.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Offer {
    pub task_id: i64,
    /// The task's `attempts` value for this offer; echoed in the result report.
    pub attempt: i64,
    pub expression: String,
    #[serde(default)]
    pub variables: Variables,
    #[serde(default)]
    pub delay_ms: u64,
}

/// Most offers in one `POST /offers`; more is refused with 400.
pub const MAX_OFFERS_PER_REQUEST: usize = 256;

/// Master → slave `POST /offers`: several offers in one request, taken in the order
/// sent while the slave has room; each is answered as `POST /tasks` would answer it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Offers {
    /// 1..=256 offers.
    pub offers: Vec<Offer>,
}

/// Slave → master: the answer to [`Offers`], one entry per offer in the order sent
/// (`available` true: the slot is reserved, as a 202 to `POST /tasks`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OfferAnswers {
    pub answers: Vec<Availability>,
}

/// Slave → master: the answer to an offer (202 or 409) and to `GET /availability`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Availability {
    pub available: bool,
    pub message: String,
    pub running: usize,
    pub capacity: usize,
    /// The answering slave process (`GET /availability` only): lets the master tell a
    /// live process from its restart at the same address (SPEC §8, one process per name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

impl Availability {
    /// Builds the answer with the demo's exact message for `available`.
    pub fn new(available: bool, running: usize, capacity: usize) -> Self {
        let message = if available { AVAILABLE } else { NOT_AVAILABLE };
        Self { available, message: message.to_owned(), running, capacity, instance: None }
    }
}

/// A fresh id for one run of a slave process: distinct across processes and restarts
/// (std's `RandomState` is seeded from the OS; pid and start time make a collision moot).
pub fn new_instance_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    hasher.write_u128(nanos.as_nanos());
    format!("{:016x}", hasher.finish())
}

/// Slave → master `POST /slaves`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Registration {
    /// Unique: re-registering a name keeps its id and place in the order.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$", example = "slave-1")]
    pub name: String,
    /// Where the master offers tasks: `http(s)://host:port`, no credentials, path or query.
    #[schema(pattern = "^https?://[A-Za-z0-9.-]+:[0-9]{1,5}/?$", example = "http://127.0.0.1:9001")]
    pub url: String,
    /// Tasks the slave runs at once.
    #[schema(minimum = 1, maximum = 100000)]
    pub capacity: u32,
    /// Id of this run of the slave process; a name up under another live instance is
    /// refused with 409 `name_in_use`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 64, example = "5f0c2a9e41d7b3c8")]
    pub instance: Option<String>,
}

/// Master → slave: the answer to a registration.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Registered {
    pub id: i64,
    pub position: i64,
}

/// Slave → master `POST /slaves/{id}/heartbeat`: every task the slave still holds,
/// running or with a result not yet delivered.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Heartbeat {
    pub running: Vec<i64>,
    /// The slave is shutting down: it takes no more offers, so every task it does not
    /// list is no longer held (no offer can be in flight to it).
    #[serde(default)]
    pub draining: bool,
    /// The instance that registered; a heartbeat from a superseded one gets 409.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

/// How a task ended on the slave.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A finite result.
    Value(f64),
    /// Why there is no finite result, in words ("division by zero gives inf").
    Error(String),
}

/// Slave → master `POST /tasks/{id}/result`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ResultReport {
    pub slave_id: i64,
    pub attempt: i64,
    pub outcome: Outcome,
}

/// Most results in one `POST /results`; more is refused with 400.
pub const MAX_RESULTS_PER_REPORT: usize = 1000;

/// Slave → master `POST /results`: every result the slave has ready, in one request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ResultsReport {
    pub slave_id: i64,
    /// 1..=1000 results; each is recorded (or refused) on its own.
    pub results: Vec<TaskResult>,
}

/// One result inside a [`ResultsReport`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct TaskResult {
    pub task_id: i64,
    pub attempt: i64,
    pub outcome: Outcome,
}

/// Master → slave: the answer to a [`ResultsReport`], one entry per result in the
/// order sent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ResultAnswers {
    pub results: Vec<ResultAnswer>,
}

/// What `POST /tasks/{task_id}/result` would have answered for this one result: its
/// status code and body (the acknowledgement, or the error shape).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ResultAnswer {
    pub task_id: i64,
    /// 200: recorded, a duplicate, or cancelled; 403, 404, 409: not this slave's to
    /// report any more (give up); 503: retry later.
    #[schema(example = 200)]
    pub status: u16,
    #[schema(value_type = Object)]
    pub body: serde_json::Value,
}

impl ResultAnswer {
    /// Whether the slave is done with this result: recorded, or refused for good.
    pub fn is_settled(&self) -> bool {
        matches!(self.status, 200..=299 | 403 | 404 | 409)
    }
}

/// The error body both servers answer with (SPEC §4): `{"error": code, "message": words}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_uses_the_spec_shape_on_the_wire() {
        let value = serde_json::to_value(Outcome::Value(2.5)).unwrap();
        assert_eq!(value, serde_json::json!({"value": 2.5}));
        let error = serde_json::to_value(Outcome::Error("x".into())).unwrap();
        assert_eq!(error, serde_json::json!({"error": "x"}));
    }

    #[test]
    fn availability_carries_the_demo_messages() {
        assert_eq!(Availability::new(true, 0, 1).message, "I am available");
        assert_eq!(Availability::new(false, 1, 1).message, "I am not available");
    }
}
