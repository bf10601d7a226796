//! Bad input (SPEC §3, §4, §8 limits): exact status and error code, nothing stored,
//! and the master keeps serving.

use cluster_tests::Cluster;
use serde_json::{Value, json};

cluster_tests::on_both_engines! {
    async fn every_malformed_submission_gets_400_with_its_code_and_stores_nothing() {
        let cluster = Cluster::start(&[1]).await;
        let too_long = "1+".repeat(5_000) + "1"; // 10 001 characters
        let cases: Vec<(Value, &str)> = vec![
            (json!({"expression": ""}), "invalid_expression"),
            (json!({"expression": "   \t "}), "invalid_expression"),
            (json!({"expression": "2+*3"}), "invalid_expression"),
            (json!({"expression": "(1+2"}), "invalid_expression"),
            (json!({"expression": "x+1"}), "invalid_expression"),
            (json!({"expression": "nope(1)"}), "invalid_expression"),
            (json!({"expression": "sin(1, 2)"}), "invalid_expression"),
            (json!({"expression": too_long}), "invalid_expression"),
            (json!({"expression": "1", "delay_ms": -1}), "invalid_request"),
            (json!({"expression": "1", "delay_ms": 600_001}), "invalid_request"),
            (json!({"expression": "1", "delay_ms": "soon"}), "invalid_request"),
            (json!({"expression": "x", "variables": {"x": "two"}}), "invalid_request"),
            (json!({"expression": "x", "variables": [1, 2]}), "invalid_request"),
            (json!({"variables": {}}), "invalid_request"),
            (json!({"expression": 42}), "invalid_request"),
            (json!(["2+2"]), "invalid_request"),
            (json!(null), "invalid_request"),
        ];
        for (body, code) in &cases {
            let reply = cluster.submit_json(body).await;
            assert_eq!(reply.status_and_code(), (400, *code), "body {body}: {:?}", reply.body);
            assert!(!reply.body["message"].as_str().unwrap_or("").is_empty(), "a message for {body}");
        }
        for raw in ["not json", "{\"expression\": ", "", "{\"expression\": \"1\", \"variables\": {\"x\": 1e999}}"]
        {
            let reply = cluster.http.post_raw(&cluster.url("/tasks"), raw.to_owned()).await;
            assert_eq!(reply.status_and_code(), (400, "invalid_request"), "raw body {raw:?}: {:?}", reply.body);
        }

        let listed = cluster.http.get(&cluster.url("/tasks")).await.body;
        assert_eq!(listed["tasks"], json!([]), "nothing stored");

        let still_serving = cluster.submit("2+2", 0).await;
        assert_eq!(still_serving.status, 201, "{:?}", still_serving.body);
    }
}

cluster_tests::on_both_engines! {
    async fn the_refusal_message_points_at_the_problem() {
        let cluster = Cluster::start(&[1]).await;
        let reply = cluster.submit("y*2", 0).await;
        assert_eq!(reply.body["message"], "unknown variable `y`");
        let reply = cluster.submit("frobnicate(2)", 0).await;
        assert_eq!(reply.body["message"], "unknown function `frobnicate`");
        let reply = cluster.submit(&"9".repeat(10_001), 0).await;
        assert_eq!(reply.body["message"], "expression is 10001 characters long; the limit is 10000");
    }
}

cluster_tests::on_both_engines! {
    async fn a_body_over_64_kib_gets_413_and_one_at_the_limit_is_read() {
        let cluster = Cluster::start(&[1]).await;
        let padding = " ".repeat(64 * 1024);
        let over = format!("{{\"expression\": \"1+1\"{padding}}}");
        assert!(over.len() > 64 * 1024);
        let reply = cluster.http.post_raw(&cluster.url("/tasks"), over).await;
        assert_eq!(reply.status_and_code(), (413, "payload_too_large"));

        let at_limit = format!("{{\"expression\": \"1+1\"{}}}", " ".repeat(64 * 1024 - 21));
        assert_eq!(at_limit.len(), 64 * 1024);
        let reply = cluster.http.post_raw(&cluster.url("/tasks"), at_limit).await;
        assert_eq!(reply.status, 201, "{:?}", reply.body);
    }
}

cluster_tests::on_both_engines! {
    async fn results_that_are_not_finite_end_failed_with_words_never_null() {
        let cluster = Cluster::start(&[3]).await;
        let cases = [("1/0", "inf"), ("0/0", "NaN"), ("sqrt(-1)", "NaN"), ("-1/0", "-inf")];
        for (expression, word) in cases {
            let reply = cluster.submit(expression, 0).await;
            assert_eq!(reply.status, 201, "{expression}: {:?}", reply.body);
            let task = cluster.wait_final(reply.body["id"].as_i64().unwrap()).await;
            assert_eq!(task["status"], "failed", "{expression}: {task}");
            assert_eq!(task["result"], Value::Null);
            let error = task["error"].as_str().unwrap();
            assert!(error.contains(word), "{expression}: {error}");
        }
    }
}

cluster_tests::on_both_engines! {
    async fn unknown_ids_routes_and_parameters_answer_in_the_error_shape() {
        let cluster = Cluster::start(&[1]).await;
        let http = &cluster.http;
        assert_eq!(http.get(&cluster.url("/tasks/999")).await.status_and_code(), (404, "not_found"));
        assert_eq!(http.delete(&cluster.url("/tasks/999")).await.status_and_code(), (404, "not_found"));
        assert_eq!(http.get(&cluster.url("/tasks/abc")).await.status_and_code(), (400, "invalid_request"));
        assert_eq!(http.get(&cluster.url("/nowhere")).await.status_and_code(), (404, "not_found"));
        assert_eq!(
            http.get(&cluster.url("/tasks?status=sleeping")).await.status_and_code(),
            (400, "invalid_request")
        );
        assert_eq!(http.get(&cluster.url("/tasks?limit=0")).await.status_and_code(), (400, "invalid_request"));
        assert_eq!(http.get(&cluster.url("/tasks?limit=1001")).await.status_and_code(), (400, "invalid_request"));
        assert_eq!(http.get(&cluster.url("/tasks/1?wait=61")).await.status_and_code(), (400, "invalid_request"));
        assert_eq!(http.delete(&cluster.url("/slaves/999")).await.status_and_code(), (404, "not_found"));
        let reply = http.post(&cluster.url("/slaves/999/heartbeat"), &json!({"running": []})).await;
        assert_eq!(reply.status_and_code(), (404, "not_found"));
        assert_eq!(cluster.submit("1+1", 0).await.status, 201, "still serving");
    }
}

cluster_tests::on_both_engines! {
    async fn registrations_with_bad_urls_names_or_capacity_are_refused() {
        let cluster = Cluster::start(&[]).await;
        let bad = [
            json!({"name": "s", "url": "http://user:pw@127.0.0.1:9000", "capacity": 1}),
            json!({"name": "s", "url": "http://127.0.0.1:9000/path", "capacity": 1}),
            json!({"name": "s", "url": "http://127.0.0.1:9000/?q=1", "capacity": 1}),
            json!({"name": "s", "url": "file:///etc/passwd", "capacity": 1}),
            json!({"name": "s", "url": "http://127.0.0.1:9000", "capacity": 0}),
            json!({"name": "", "url": "http://127.0.0.1:9000", "capacity": 1}),
            json!({"name": "a b", "url": "http://127.0.0.1:9000", "capacity": 1}),
            json!({"name": "s", "capacity": 1}),
        ];
        for body in bad {
            let reply = cluster.http.post(&cluster.url("/slaves"), &body).await;
            assert_eq!(reply.status_and_code(), (400, "invalid_request"), "{body}: {:?}", reply.body);
        }
        let slaves = cluster.http.get(&cluster.url("/slaves")).await.body;
        assert_eq!(slaves["slaves"], json!([]));
        assert_eq!(cluster.submit("1", 0).await.status_and_code(), (503, "no_slaves"));
    }
}
