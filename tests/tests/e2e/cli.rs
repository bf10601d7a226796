//! The client subcommands (SPEC §9): tables for people, `--json` for scripts, a
//! non-zero exit on failure.

use std::process::{Command, Output};

use cluster_tests::{Cluster, bins};
use serde_json::Value;

fn master_cli(cluster: &Cluster, args: &[&str]) -> Output {
    Command::new(&bins().master)
        .args(args)
        .env("MASTER_URL", &cluster.master.url)
        .output()
        .expect("run master")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn submit_wait_prints_the_result_and_exits_zero() {
    let cluster = Cluster::start(&[1]).await;
    let output = master_cli(&cluster, &["submit", "sqrt(x)*2", "--var", "x=16", "--wait", "--json"]);
    assert!(output.status.success(), "{output:?}");
    let task: Value = serde_json::from_str(stdout(&output).trim()).expect("one JSON object");
    assert_eq!((task["status"].as_str(), task["result"].as_f64()), (Some("done"), Some(8.0)));

    let output = master_cli(&cluster, &["submit", "2+3*4", "--wait"]);
    assert!(output.status.success(), "{output:?}");
    assert!(
        stdout(&output).lines().any(|line| line.starts_with("result") && line.ends_with("14.0")),
        "{}",
        stdout(&output)
    );
}

#[tokio::test]
async fn failures_exit_non_zero_with_the_reason() {
    let cluster = Cluster::start(&[1]).await;
    let refused = master_cli(&cluster, &["submit", "2+*3"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("invalid_expression"), "{refused:?}");

    let failed = master_cli(&cluster, &["submit", "1/0", "--wait"]);
    assert!(!failed.status.success(), "a task that ends failed is a failure");
    assert!(String::from_utf8_lossy(&failed.stderr).contains("division by zero"), "{failed:?}");

    let missing = master_cli(&cluster, &["task", "999"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not_found"));
}

#[tokio::test]
async fn tasks_and_slaves_print_tables_or_json() {
    let cluster = Cluster::start(&[1]).await;
    let id = cluster.submit("6*7", 0).await.body["id"].as_i64().unwrap();
    cluster.wait_final(id).await;

    let table = stdout(&master_cli(&cluster, &["tasks", "--status", "done"]));
    let mut lines = table.lines();
    assert!(lines.next().unwrap().starts_with("ID  STATUS  EXPRESSION  RESULT"), "{table}");
    assert!(lines.next().unwrap().starts_with(&format!("{id}   done    6*7         42")), "{table}");

    let json: Value = serde_json::from_str(&stdout(&master_cli(&cluster, &["tasks", "--json"]))).unwrap();
    assert_eq!(json["counts"]["done"], 1);

    let slaves = stdout(&master_cli(&cluster, &["slaves"]));
    assert!(slaves.lines().nth(1).unwrap().contains("slave-1"), "{slaves}");
    assert!(slaves.contains("up") && slaves.contains("0/1"), "{slaves}");
}

#[test]
fn completions_are_generated_for_bash() {
    let output = Command::new(&bins().master).args(["completions", "bash"]).output().unwrap();
    assert!(output.status.success());
    assert!(stdout(&output).contains("submit"), "the script completes subcommands");
}

#[tokio::test]
async fn task_events_prints_the_history_as_a_table_and_as_json() {
    let cluster = Cluster::start(&[1]).await;
    let id = cluster.submit("1+1", 0).await.body["id"].as_i64().expect("an id");
    cluster.wait_final(id).await;
    let output = master_cli(&cluster, &["task", &id.to_string(), "--events", "--json"]);
    assert!(output.status.success(), "{output:?}");
    let both: Value = serde_json::from_str(stdout(&output).trim()).expect("one JSON object");
    assert_eq!(both["task"]["id"], id);
    assert_eq!(both["events"].as_array().map(Vec::len), Some(2), "{both}");
    let output = master_cli(&cluster, &["task", &id.to_string(), "--events"]);
    let table = stdout(&output);
    assert!(table.lines().any(|line| line.starts_with("AT") && line.contains("EVENT")), "{table}");
    assert!(table.lines().any(|line| line.contains("done") && line.contains("slave-1")), "{table}");
}
