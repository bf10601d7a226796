//! Property test of `POST /tasks` (SPEC §3, §8): whatever the body, the master answers
//! in the error shape with a 4xx or 503 (no slaves here), never a 500 and never a panic,
//! and it keeps serving. Runs the real router over a real ledger file, in-process.

use std::sync::Arc;

use axum::{
    body::Body,
    http::{Request, StatusCode},
};
use master::{
    api::{AppState, router},
    cluster::Cluster,
    config::ServeConfig,
    ledger::{Ledger, Location},
    metrics::Metrics,
};
use proptest::prelude::*;
use tower::ServiceExt;

struct Harness {
    runtime: tokio::runtime::Runtime,
    app: axum::Router,
    _dir: tempfile::TempDir,
}

fn harness() -> Harness {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config =
        ServeConfig::new("127.0.0.1:0".parse().unwrap(), Location::Sqlite(dir.path().join("master.db")));
    let app = runtime.block_on(async {
        let metrics = Metrics::new();
        let ledger = Ledger::open(&config.db, metrics.batches.clone(), 512).await.unwrap();
        let http = slave::reporter::http_client().unwrap();
        let cluster = Cluster::start(ledger, Arc::new(config), metrics, http).await.unwrap();
        router(AppState { cluster })
    });
    Harness { runtime, app, _dir: dir }
}

fn submit(harness: &Harness, body: Vec<u8>) -> (StatusCode, serde_json::Value) {
    harness.runtime.block_on(async {
        let request = Request::post("/tasks")
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        let response = harness.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    })
}

fn assert_answered_in_shape(status: StatusCode, body: &serde_json::Value) {
    assert!(
        status.is_client_error() || status == StatusCode::SERVICE_UNAVAILABLE,
        "status {status} for body {body}"
    );
    assert!(body["error"].is_string() && body["message"].is_string(), "error shape: {body}");
}

/// Pieces meval's grammar is made of, so generated expressions reach deep into it.
fn expression() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        "[0-9]{1,4}(\\.[0-9]{1,3})?(e[+-]?[0-9]{1,4})?",
        Just("+".to_owned()),
        Just("-".to_owned()),
        Just("*".to_owned()),
        Just("/".to_owned()),
        Just("^".to_owned()),
        Just("%".to_owned()),
        Just("(".to_owned()),
        Just(")".to_owned()),
        Just(",".to_owned()),
        Just("x".to_owned()),
        Just("pi".to_owned()),
        Just("sqrt(".to_owned()),
        Just("max(".to_owned()),
        Just("min(".to_owned()),
        Just("atan2(".to_owned()),
        Just("sin(".to_owned()),
        Just("!".to_owned()),
        Just(" ".to_owned()),
        "[a-z]{1,3}",
        "\\PC",
    ];
    proptest::collection::vec(token, 0..24).prop_map(|tokens| tokens.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_expression_is_answered_in_the_error_shape_without_a_500(expr in expression(), x in any::<f64>()) {
        let harness = harness_once();
        let body = serde_json::json!({"expression": expr, "variables": {"x": x}});
        let (status, reply) = submit(harness, serde_json::to_vec(&body).unwrap());
        assert_answered_in_shape(status, &reply);
    }

    #[test]
    fn any_bytes_are_answered_in_the_error_shape_without_a_500(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let harness = harness_once();
        let (status, reply) = submit(harness, bytes);
        assert_answered_in_shape(status, &reply);
    }

    #[test]
    fn any_json_fields_are_answered_in_the_error_shape_without_a_500(
        expression in proptest::option::of("\\PC{0,40}"),
        delay in proptest::option::of(any::<i64>()),
        name in "\\PC{0,80}",
        value in any::<f64>(),
    ) {
        let harness = harness_once();
        let mut body = serde_json::json!({"variables": {name: value}});
        if let Some(expression) = expression { body["expression"] = expression.into(); }
        if let Some(delay) = delay { body["delay_ms"] = delay.into(); }
        let (status, reply) = submit(harness, serde_json::to_vec(&body).unwrap());
        assert_answered_in_shape(status, &reply);
    }
}

/// One master per test binary: cases share it, as clients share a real master.
fn harness_once() -> &'static Harness {
    static HARNESS: std::sync::OnceLock<Harness> = std::sync::OnceLock::new();
    HARNESS.get_or_init(harness)
}
