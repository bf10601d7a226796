//! What a run found: a summary table for people, or one JSON object for scripts.

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::{Map, Value};

use super::{BenchError, Percentiles, plot::Timeline};

/// The figures of one run. Fields a workload cannot measure are `null`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub workload: &'static str,
    pub cluster: String,
    /// Tasks the run meant to finish.
    pub tasks: u64,
    /// Finished `done`.
    pub ok: u64,
    /// Finished `failed` or `cancelled`.
    pub failed: u64,
    /// Accepted by the master but not finished when the run ended.
    pub lost: u64,
    pub elapsed_s: f64,
    /// Finished tasks per second, first submit to last finish.
    pub throughput_per_s: Option<f64>,
    /// The workload's headline latency (its table row says which).
    pub latency_ms: Option<Percentiles>,
    pub master_peak_rss_mb: Option<f64>,
    pub slave_peak_rss_mb: Option<f64>,
    /// Workload-specific figures.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
    /// What went wrong; the run exits non-zero when this is not empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// Samples for `--plot` (not printed).
    #[serde(skip)]
    pub timeline: Timeline,
}

impl Report {
    /// An empty report of `workload` on `cluster`.
    pub fn new(workload: &'static str, cluster: &str, tasks: u64) -> Self {
        Self {
            workload,
            cluster: cluster.to_owned(),
            tasks,
            ok: 0,
            failed: 0,
            lost: 0,
            elapsed_s: 0.0,
            throughput_per_s: None,
            latency_ms: None,
            master_peak_rss_mb: None,
            slave_peak_rss_mb: None,
            extra: Map::new(),
            problems: Vec::new(),
            timeline: Timeline::default(),
        }
    }

    /// Adds a workload-specific figure.
    pub fn set(&mut self, key: &str, value: impl Serialize) {
        self.extra.insert(key.to_owned(), serde_json::to_value(value).unwrap_or(Value::Null));
    }

    /// Prints the table, or the JSON object with `json`.
    pub fn print(&self, json: bool) {
        if json {
            println!("{}", serde_json::to_value(self).unwrap_or(Value::Null));
        } else {
            print!("{}", self.table());
        }
    }

    /// `Err` naming every problem, or `Ok` for a clean run.
    pub fn verdict(&self) -> Result<(), BenchError> {
        if self.problems.is_empty() { Ok(()) } else { Err(BenchError::Incomplete(self.problems.join("; "))) }
    }

    fn table(&self) -> String {
        let value = serde_json::to_value(self).unwrap_or(Value::Null);
        let Value::Object(fields) = value else { return String::new() };
        // The common figures first, in this order, then the workload's own.
        let common = [
            "workload",
            "cluster",
            "tasks",
            "ok",
            "failed",
            "lost",
            "elapsed_s",
            "throughput_per_s",
            "latency_ms",
            "master_peak_rss_mb",
            "slave_peak_rss_mb",
        ];
        let extra = fields.keys().map(String::as_str).filter(|key| !common.contains(key));
        let mut out = String::new();
        for key in common.into_iter().chain(extra) {
            let _ = writeln!(out, "{key:<28}{}", cell(&fields[key]));
        }
        out
    }
}

/// A figure as a person reads it: percentiles on one line, numbers rounded.
fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.2}"),
            _ => n.to_string(),
        },
        Value::Object(map) if map.contains_key("p50") => {
            let ms = |key: &str| map.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN);
            format!(
                "p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3} ms  (n={})",
                ms("p50"),
                ms("p90"),
                ms("p99"),
                ms("max"),
                map.get("samples").map_or_else(String::new, Value::to_string)
            )
        }
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join("; "),
        Value::Object(map) => {
            map.iter().map(|(key, value)| format!("{key} {}", cell(value))).collect::<Vec<_>>().join(", ")
        }
        Value::Bool(b) => b.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cells_round_floats_and_spell_percentiles() {
        assert_eq!(cell(&json!(1.23456)), "1.23");
        assert_eq!(cell(&json!(20000)), "20000");
        assert_eq!(cell(&Value::Null), "-");
        let p = json!({"samples": 3, "p50": 1.0, "p90": 2.0, "p99": 3.0, "max": 4.0});
        assert_eq!(cell(&p), "p50 1.000  p90 2.000  p99 3.000  max 4.000 ms  (n=3)");
        assert_eq!(cell(&json!({"slave-1": 10, "slave-2": 10})), "slave-1 10, slave-2 10");
    }

    #[test]
    fn a_report_with_problems_fails_the_run() {
        let mut report = Report::new("throughput", "local", 10);
        assert!(report.verdict().is_ok());
        report.problems.push("3 tasks lost".to_owned());
        assert!(report.verdict().is_err());
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["lost"], 0);
        assert_eq!(json["problems"][0], "3 tasks lost");
    }
}
