//! Prometheus metrics of the master (`GET /metrics`), one registry per master so two
//! masters in one test process share nothing.

use std::{sync::Arc, time::Duration};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Writes per ledger batch and commit latency: the figures group commit lives by.
#[derive(Clone)]
pub struct BatchStats {
    size: Histogram,
    commit_seconds: Histogram,
}

impl Default for BatchStats {
    fn default() -> Self {
        Self {
            size: Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0]),
            commit_seconds: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.000_1, 2.0, 14,
            )),
        }
    }
}

impl BatchStats {
    /// Records one committed batch.
    pub fn observe(&self, writes: usize, took: Duration) {
        self.size.observe(writes as f64);
        self.commit_seconds.observe(took.as_secs_f64());
    }
}

/// Label of counters split by a reason or status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

/// Label of per-slave gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SlaveLabel {
    pub slave: String,
}

/// Label of request metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Route {
    pub method: String,
    pub route: String,
    pub status: u16,
}

/// Every metric of one master.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub tasks_submitted: Counter,
    pub tasks_rejected: Family<Reason, Counter>,
    pub tasks_finished: Family<Reason, Counter>,
    pub offers: Family<Reason, Counter>,
    pub requeued: Counter,
    pub queue_depth: Gauge,
    pub slaves_up: Gauge,
    pub slave_running: Family<SlaveLabel, Gauge>,
    pub request_seconds: Family<Route, Histogram>,
    pub batches: BatchStats,
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("master");
        let tasks_submitted = Counter::default();
        let tasks_rejected = Family::<Reason, Counter>::default();
        let tasks_finished = Family::<Reason, Counter>::default();
        let offers = Family::<Reason, Counter>::default();
        let requeued = Counter::default();
        let queue_depth = Gauge::default();
        let slaves_up = Gauge::default();
        let slave_running = Family::<SlaveLabel, Gauge>::default();
        let request_seconds = Family::<Route, Histogram>::new_with_constructor(|| {
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.000_1, 2.0, 16))
        });
        let batches = BatchStats::default();
        registry.register("tasks_submitted", "Tasks accepted (201 or 202)", tasks_submitted.clone());
        registry.register("tasks_rejected", "Submissions refused, by reason", tasks_rejected.clone());
        registry.register(
            "tasks_finished",
            "Tasks that reached a final status, by status",
            tasks_finished.clone(),
        );
        registry.register("dispatch_offers", "Offers sent to slaves, by answer", offers.clone());
        registry.register(
            "tasks_requeued",
            "Tasks lost on a slave and put back to pending",
            requeued.clone(),
        );
        registry.register("queue_depth", "Pending tasks waiting for a slave", queue_depth.clone());
        registry.register("slaves_up", "Registered slaves in state up", slaves_up.clone());
        registry.register("slave_running_tasks", "Tasks in flight per slave", slave_running.clone());
        registry.register("http_request_duration_seconds", "HTTP request latency", request_seconds.clone());
        registry.register(
            "ledger_batch_writes",
            "Writes per ledger commit (group commit)",
            batches.size.clone(),
        );
        registry.register(
            "ledger_commit_duration_seconds",
            "Time to run and commit one ledger batch",
            batches.commit_seconds.clone(),
        );
        Self {
            registry: Arc::new(registry),
            tasks_submitted,
            tasks_rejected,
            tasks_finished,
            offers,
            requeued,
            queue_depth,
            slaves_up,
            slave_running,
            request_seconds,
            batches,
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

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
