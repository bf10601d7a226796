//! Client subcommands (SPEC §9): plain tables for people, `--json` for scripts, a
//! non-zero exit (an `Err`) on any failure.

use std::{fmt::Write as _, time::Duration};

use common::protocol::Variables;
use master_client::{MasterClient, Submitted, Task};
use serde::Serialize;
use serde_json::{Value, json};

use crate::cli::{ClientArgs, ShowArgs, SubmitArgs, TaskArgs, TasksArgs};

/// Longest single long poll while `submit --wait` waits.
const WAIT_STEP: Duration = Duration::from_secs(30);

/// Why a client command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the master: {0}")]
    Http(reqwest::Error),
    #[error("{status}: {code}: {message}")]
    Api { status: u16, code: String, message: String },
    #[error("{0}")]
    Config(String),
    #[error("cannot reach the master: {0}")]
    Unreachable(String),
    #[error("task {id} ended {status}: {error}")]
    TaskFailed { id: i64, status: String, error: String },
}

impl From<master_client::ClientError> for ClientError {
    fn from(error: master_client::ClientError) -> Self {
        match error {
            master_client::ClientError::Http(error) => Self::Http(error),
            master_client::ClientError::Connection(reason) => Self::Unreachable(reason),
            master_client::ClientError::Api { status, code, message, .. } => {
                Self::Api { status, code, message }
            }
        }
    }
}

/// The typed API client, and how to print what it read.
struct Client {
    api: MasterClient,
    json: bool,
}

impl Client {
    fn new(args: &ClientArgs) -> Result<Self, ClientError> {
        let token = common::auth::Token::from_flag_or_file(args.token.clone(), args.token_file.as_deref())
            .map_err(ClientError::Config)?;
        let api = MasterClient::new(&args.master, token, &master_client::Options::default())?;
        Ok(Self { api, json: args.json })
    }

    /// The API's JSON with `--json`, else the table `human` draws from it.
    fn print(&self, value: &impl Serialize, human: impl FnOnce(&Value) -> String) {
        let value = serde_json::to_value(value).unwrap_or_default();
        if self.json {
            println!("{value}");
        } else {
            print!("{}", human(&value));
        }
    }
}

/// `master submit`.
pub async fn submit(args: SubmitArgs) -> Result<(), ClientError> {
    let client = Client::new(&args.client)?;
    let variables: Variables = args.vars.into_iter().collect();
    let submitted = client.api.submit(&args.expression, &variables, args.delay_ms).await?;
    if !args.wait {
        client.print(&submitted, |v| format!("task {}: {}\n", v["id"], text(&v["message"])));
        return Ok(());
    }
    let spinner = waiting_spinner(client.json, &submitted);
    let task = client.api.wait_final(submitted.id, WAIT_STEP).await?;
    spinner.finish_and_clear();
    client.print(&task, task_table);
    finished_ok(&task)
}

/// A spinner on stderr while `submit --wait` waits; hidden for `--json` and when stderr
/// is not a terminal (indicatif draws nothing then), so scripts see clean output.
fn waiting_spinner(json: bool, submitted: &Submitted) -> indicatif::ProgressBar {
    let spinner = if json { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new_spinner() };
    spinner.set_message(format!("task {}: {}; waiting for the result", submitted.id, submitted.message));
    spinner.enable_steady_tick(Duration::from_millis(100));
    spinner
}

fn finished_ok(task: &Task) -> Result<(), ClientError> {
    if task.status == "done" {
        return Ok(());
    }
    let error = task.error.clone().unwrap_or_else(|| "-".to_owned());
    Err(ClientError::TaskFailed { id: task.id, status: task.status.clone(), error })
}

/// `master tasks`, once or (`--watch`) redrawn every `--interval` until ctrl-c.
pub async fn tasks(args: TasksArgs) -> Result<(), ClientError> {
    let client = Client::new(&args.client)?;
    let query = (args.status.as_deref(), args.after, args.limit);
    if !args.watch {
        return print_tasks(&client, query).await;
    }
    loop {
        // Clear the screen and home the cursor, then redraw: a plain `watch`-style view.
        print!("\x1b[2J\x1b[H");
        print_tasks(&client, query).await?;
        tokio::select! {
            () = tokio::time::sleep(args.interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// One page: `(status, after, limit)` as given on the command line.
async fn print_tasks(
    client: &Client,
    (status, after, limit): (Option<&str>, Option<i64>, i64),
) -> Result<(), ClientError> {
    let list = client.api.tasks(status, after, limit).await?;
    client.print(&list, |list| {
        let rows: Vec<Vec<String>> = list["tasks"].as_array().into_iter().flatten().map(task_row).collect();
        let mut out = table(&["ID", "STATUS", "EXPRESSION", "RESULT", "SLAVE", "ATTEMPTS"], &rows);
        let counts = &list["counts"];
        let _ = writeln!(
            out,
            "pending {}  in_progress {}  done {}  failed {}  cancelled {}",
            counts["pending"], counts["in_progress"], counts["done"], counts["failed"], counts["cancelled"]
        );
        out
    });
    Ok(())
}

/// `master task ID [--events]`; with `--json` and `--events`, one object
/// `{"task": ..., "events": [...]}`.
pub async fn task(args: ShowArgs) -> Result<(), ClientError> {
    let client = Client::new(&args.client)?;
    let task = client.api.task(args.id, Duration::ZERO).await?;
    if !args.events {
        client.print(&task, task_table);
        return Ok(());
    }
    let events = client.api.task_events(args.id).await?;
    let both = json!({"task": task, "events": events});
    client.print(&both, |both| format!("{}\n{}", task_table(&both["task"]), events_table(&both["events"])));
    Ok(())
}

/// A task's events, oldest first.
fn events_table(events: &Value) -> String {
    let rows: Vec<Vec<String>> = events
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| vec![text(&e["at"]), text(&e["kind"]), text(&e["slave"]["name"]), text(&e["detail"])])
        .collect();
    table(&["AT", "EVENT", "SLAVE", "DETAIL"], &rows)
}

/// `master cancel ID`.
pub async fn cancel(args: TaskArgs) -> Result<(), ClientError> {
    let client = Client::new(&args.client)?;
    let task = client.api.cancel(args.id).await?;
    client.print(&task, task_table);
    Ok(())
}

/// `master slaves`.
pub async fn slaves(args: ClientArgs) -> Result<(), ClientError> {
    let client = Client::new(&args)?;
    let list = json!({ "slaves": client.api.slaves().await? });
    client.print(&list, |list| {
        let rows: Vec<Vec<String>> = list["slaves"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                vec![
                    s["position"].to_string(),
                    s["id"].to_string(),
                    text(&s["name"]),
                    text(&s["state"]),
                    format!("{}/{}", s["running"], s["capacity"]),
                    text(&s["url"]),
                    text(&s["last_seen_at"]),
                ]
            })
            .collect();
        table(&["POS", "ID", "NAME", "STATE", "LOAD", "URL", "LAST SEEN"], &rows)
    });
    Ok(())
}

/// `master masters`.
pub async fn masters(args: ClientArgs) -> Result<(), ClientError> {
    let client = Client::new(&args)?;
    let list = client.api.masters().await?;
    client.print(&list, |list| {
        let this = list["this"].as_i64();
        let rows: Vec<Vec<String>> = list["masters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                let answered = if m["id"].as_i64() == this { " (answered)" } else { "" };
                vec![
                    format!("{}{answered}", m["id"]),
                    text(&m["url"]),
                    if m["up"].as_bool() == Some(true) { "up" } else { "down" }.to_owned(),
                    text(&m["started_at"]),
                    text(&m["last_seen_at"]),
                ]
            })
            .collect();
        table(&["ID", "URL", "STATE", "STARTED", "LAST SEEN"], &rows)
    });
    Ok(())
}

fn task_row(task: &Value) -> Vec<String> {
    let outcome = if task["result"].is_null() { text(&task["error"]) } else { task["result"].to_string() };
    vec![
        task["id"].to_string(),
        text(&task["status"]),
        text(&task["expression"]),
        outcome,
        text(&task["slave"]["name"]),
        task["attempts"].to_string(),
    ]
}

fn task_table(task: &Value) -> String {
    let fields = [
        "id",
        "expression",
        "status",
        "result",
        "error",
        "attempts",
        "submitted_at",
        "assigned_at",
        "finished_at",
    ];
    let mut out = String::new();
    for field in fields {
        let _ = writeln!(out, "{field:<13}{}", text(&task[field]));
    }
    let _ = writeln!(out, "{:<13}{}", "variables", task["variables"]);
    let _ = writeln!(out, "{:<13}{}", "slave", text(&task["slave"]["name"]));
    out
}

/// A JSON value as a person reads it: strings unquoted, null as `-`.
fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Left-aligned columns separated by two spaces.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let cells: Vec<String> =
            row.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let out =
            table(&["ID", "NAME"], &[vec!["1".into(), "slave-1".into()], vec!["10".into(), "s".into()]]);
        assert_eq!(out, "ID  NAME\n1   slave-1\n10  s\n");
    }

    #[test]
    fn null_reads_as_a_dash() {
        assert_eq!(text(&Value::Null), "-");
        assert_eq!(text(&json!("x")), "x");
        assert_eq!(text(&json!(2.5)), "2.5");
    }
}
