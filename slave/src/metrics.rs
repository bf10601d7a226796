//! Prometheus metrics of one slave (`GET /metrics`), one registry per slave so that
//! local slaves inside a master process share nothing.

use std::sync::Arc;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Label of counters split by outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

/// Every metric of one slave.
#[derive(Clone)]
pub struct SlaveMetrics {
    registry: Arc<Registry>,
    /// Offers answered, by `accepted` / `refused`.
    pub offers: Family<Outcome, Counter>,
    /// Requests that carried offers (`POST /tasks` and `POST /offers`).
    pub offer_requests: Counter,
    /// Tasks evaluated, by `value` / `error`.
    pub tasks_finished: Family<Outcome, Counter>,
    /// Result reports the master did not take at the first try.
    pub result_retries: Counter,
    /// Tasks occupying a slot.
    pub running: Gauge,
    /// Evaluation time, without the simulated delay.
    pub eval_seconds: Histogram,
}

impl SlaveMetrics {
    /// A fresh registry with every metric registered; `capacity` is published once.
    pub fn new(capacity: usize) -> Self {
        let mut registry = Registry::with_prefix("slave");
        let offers = Family::<Outcome, Counter>::default();
        let offer_requests = Counter::default();
        let tasks_finished = Family::<Outcome, Counter>::default();
        let result_retries = Counter::default();
        let running = Gauge::default();
        let capacity_gauge = Gauge::<i64>::default();
        capacity_gauge.set(i64::try_from(capacity).unwrap_or(i64::MAX));
        let eval_seconds =
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.000_001, 4.0, 12));
        registry.register("offers", "Offers answered, by outcome", offers.clone());
        registry.register("offer_requests", "Requests that carried offers", offer_requests.clone());
        registry.register("tasks_finished", "Tasks evaluated, by outcome", tasks_finished.clone());
        registry.register("result_retries", "Result reports retried", result_retries.clone());
        registry.register("running_tasks", "Tasks occupying a slot", running.clone());
        registry.register("capacity_tasks", "Tasks this slave runs at once", capacity_gauge);
        registry.register("eval_duration_seconds", "Expression evaluation time", eval_seconds.clone());
        Self {
            registry: Arc::new(registry),
            offers,
            offer_requests,
            tasks_finished,
            result_retries,
            running,
            eval_seconds,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}
