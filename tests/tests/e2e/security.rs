//! The cluster token, exposure rules and request limits (SPEC §8).

use std::time::{Duration, Instant};

use cluster_tests::{Cluster, Http, MasterOptions, bins};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "correct-horse-battery-staple";

async fn cluster_with_token() -> Cluster {
    let options = MasterOptions { token: Some(TOKEN.to_owned()), ..MasterOptions::default() };
    Cluster::start_with(options, Vec::new(), &[1]).await
}

cluster_tests::on_both_engines! {
    async fn every_protected_route_answers_401_without_the_right_token_and_changes_nothing() {
        let cluster = cluster_with_token().await;
        let reply = cluster.submit("1+1", 30_000).await;
        assert_eq!(reply.status, 201, "a slave holding the token registered and takes work");
        let id = reply.body["id"].as_i64().unwrap();
        let slave_url = cluster.slaves[0].url.clone();

        for http in [Http::new(None), Http::new(Some("wrong-token"))] {
            let registration = json!({"name": "intruder", "url": "http://127.0.0.1:9", "capacity": 1});
            let result = json!({"slave_id": 1, "attempt": 1, "outcome": {"value": 0.0}});
            let offer = json!({"task_id": 999, "attempt": 1, "expression": "1", "variables": {}, "delay_ms": 0});
            let replies = [
                ("register", http.post(&cluster.url("/slaves"), &registration).await),
                ("heartbeat", http.post(&cluster.url("/slaves/1/heartbeat"), &json!({"running": []})).await),
                ("result", http.post(&cluster.url(&format!("/tasks/{id}/result")), &result).await),
                ("results", http.post(&cluster.url("/results"), &json!({"slave_id": 1, "results": [
                    {"task_id": id, "attempt": 1, "outcome": {"value": 0.0}}]})).await),
                ("deregister", http.delete(&cluster.url("/slaves/1")).await),
                ("cancel", http.delete(&cluster.url(&format!("/tasks/{id}"))).await),
                ("slave offer", http.post(&format!("{slave_url}/tasks"), &offer).await),
                ("slave offers", http.post(&format!("{slave_url}/offers"), &json!({"offers": [offer]})).await),
                ("slave drop", http.delete(&format!("{slave_url}/tasks/{id}")).await),
            ];
            for (route, reply) in replies {
                assert_eq!(reply.status_and_code(), (401, "unauthorized"), "{route}: {:?}", reply.body);
            }
        }

        let slaves = cluster.http.get(&cluster.url("/slaves")).await.body;
        let names: Vec<_> = slaves["slaves"].as_array().unwrap().iter().map(|s| s["name"].clone()).collect();
        assert_eq!(names, vec![json!("slave-1")], "no intruder registered, slave-1 not deregistered");
        let task = cluster.task(id).await;
        assert_eq!(task["status"], "in_progress", "not cancelled, no result recorded");

        let reply = cluster.http.delete(&cluster.url(&format!("/tasks/{id}"))).await;
        assert_eq!(reply.status, 200, "the right token cancels: {:?}", reply.body);
    }
}

cluster_tests::on_both_engines! {
    async fn a_client_sending_headers_byte_by_byte_is_dropped_and_others_are_served_meanwhile() {
        let cluster = Cluster::start(&[1]).await;
        let addr = cluster.master.url.trim_start_matches("http://").to_owned();
        let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
        slow.write_all(b"GET /tasks HTTP/1.1\r\nHost: test\r\n").await.unwrap();
        let started = Instant::now();

        let served = cluster.http.get(&cluster.url("/slaves")).await;
        assert_eq!(served.status, 200, "another client is served while the slow one trickles");

        // One header byte every 500 ms, bounded to 60 bytes: the server must hang up first.
        let mut dropped = false;
        for byte in b"X-Slow: ".iter().chain(std::iter::repeat(&b'a')).take(60) {
            if slow.write_all(&[*byte]).await.is_err() {
                dropped = true;
                break;
            }
            let mut buffer = [0u8; 256];
            match tokio::time::timeout(Duration::from_millis(500), slow.read(&mut buffer)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    dropped = true;
                    break;
                }
                Ok(Ok(_)) => {
                    dropped = true; // an error answer (408) before closing also ends the request
                    break;
                }
                Err(_) => {} // nothing yet: pacing between bytes
            }
        }
        assert!(dropped, "the slow client was never dropped");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(20), "dropped only after {took:?}");
    }
}

#[test]
fn servers_refuse_a_public_address_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("master.db");
    let output = std::process::Command::new(&bins().master)
        .args(["serve", "--listen", "0.0.0.0:0", "--db"])
        .arg(&db)
        .env_remove("CLUSTER_TOKEN")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--token") && stderr.contains("--insecure"), "{stderr}");
    assert!(!db.exists(), "nothing created before the refusal");

    let output = std::process::Command::new(&bins().slave)
        .args(["--name", "s", "--listen", "0.0.0.0:0"])
        .env_remove("CLUSTER_TOKEN")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--insecure"));
}

#[test]
fn a_corrupt_ledger_stops_the_master_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("master.db");
    std::fs::write(&db, vec![0x5a; 64 * 1024]).unwrap();
    let output = std::process::Command::new(&bins().master)
        .args(["serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("integrity check") && stderr.contains("master.db"), "{stderr}");
}
