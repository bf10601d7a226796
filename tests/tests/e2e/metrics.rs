//! Prometheus metrics on the master and on each slave (issue 7 item 2).

use cluster_tests::Cluster;

fn value_of(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

async fn text(url: &str) -> String {
    let response = reqwest::get(url).await.expect("metrics answer");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    response.text().await.unwrap()
}

#[tokio::test]
async fn master_and_slaves_count_what_happened() {
    let cluster = Cluster::start(&[1]).await;
    let done = cluster.submit("1+1", 0).await;
    cluster.wait_final(done.body["id"].as_i64().unwrap()).await;
    let busy = cluster.submit("2+2", 5_000).await;
    assert_eq!(busy.status, 201);
    assert_eq!(cluster.submit("3+3", 0).await.status_and_code(), (503, "full_capacity"));

    let master = text(&cluster.url("/metrics")).await;
    assert_eq!(value_of(&master, "master_tasks_submitted_total"), Some(2.0), "{master}");
    assert_eq!(value_of(&master, "master_tasks_rejected_total{reason=\"full_capacity\"}"), Some(1.0));
    assert_eq!(value_of(&master, "master_tasks_finished_total{reason=\"done\"}"), Some(1.0));
    assert_eq!(value_of(&master, "master_dispatch_offers_total{reason=\"accepted\"}"), Some(2.0));
    assert_eq!(value_of(&master, "master_slaves_up"), Some(1.0));
    assert_eq!(value_of(&master, "master_slave_running_tasks{slave=\"slave-1\"}"), Some(1.0));
    assert!(master.contains("master_ledger_commit_duration_seconds_bucket"), "{master}");
    assert!(master.contains("master_http_request_duration_seconds_bucket"), "{master}");

    let slave = text(&format!("{}/metrics", cluster.slaves[0].url)).await;
    assert_eq!(value_of(&slave, "slave_offers_total{outcome=\"accepted\"}"), Some(2.0), "{slave}");
    assert_eq!(value_of(&slave, "slave_tasks_finished_total{outcome=\"value\"}"), Some(1.0));
    assert_eq!(value_of(&slave, "slave_running_tasks"), Some(1.0));
    assert_eq!(value_of(&slave, "slave_capacity_tasks"), Some(1.0));
}
