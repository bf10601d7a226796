//! Client subcommands (SPEC §9): plain tables for people, `--json` for scripts, a
//! non-zero exit (an `Err`) on any failure.

use std::{fmt::Write as _, time::Duration};

use serde_json::{Value, json};

use crate::cli::{ClientArgs, ShowArgs, SubmitArgs, TaskArgs, TasksArgs};

/// Longest single long poll while `submit --wait` waits.
const WAIT_STEP_SECONDS: u64 = 30;

/// Why a client command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the master: {0}")]
    Http(#[from] reqwest::Error),
    #[error("{status}: {code}: {message}")]
    Api { status: u16, code: String, message: String },
    #[error("{0}")]
    Config(String),
    #[error("task {id} ended {status}: {error}")]
    TaskFailed { id: i64, status: String, error: String },
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: common::auth::Token,
    json: bool,
}

impl Client {
    fn new(args: &ClientArgs) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(WAIT_STEP_SECONDS + 15))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            http,
            base: args.master.trim_end_matches('/').to_owned(),
            token: common::auth::Token::from_flag_or_file(args.token.clone(), args.token_file.as_deref())
                .map_err(ClientError::Config)?,
            json: args.json,
        })
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> Result<Value, ClientError> {
        let response = self.token.authorize(request).send().await?;
        let status = response.status();
        let body: Value =
            if status == reqwest::StatusCode::NO_CONTENT { Value::Null } else { response.json().await? };
        if status.is_success() {
            return Ok(body);
        }
        Err(ClientError::Api {
            status: status.as_u16(),
            code: text(&body["error"]),
            message: text(&body["message"]),
        })
    }

    async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call(self.http.get(format!("{}{path}", self.base))).await
    }

    fn print(&self, value: &Value, human: impl FnOnce(&Value) -> String) {
        if self.json {
            println!("{value}");
        } else {
            print!("{}", human(value));
        }
    }
}

/// `master submit`.
pub async fn submit(args: SubmitArgs) -> Result<(), ClientError> {
    let client = Client::new(&args.client)?;
    let variables: serde_json::Map<String, Value> =
        args.vars.into_iter().map(|(name, value)| (name, json!(value))).collect();
    let body = json!({ "expression": args.expression, "variables": variables, "delay_ms": args.delay_ms });
    let submitted = client.call(client.http.post(format!("{}/tasks", client.base)).json(&body)).await?;
    if !args.wait {
        client.print(&submitted, |v| format!("task {}: {}\n", v["id"], text(&v["message"])));
        return Ok(());
    }
    let spinner = waiting_spinner(client.json, &submitted);
    let id = submitted["id"].as_i64().unwrap_or_default();
    let task = loop {
        let task = client.get(&format!("/tasks/{id}?wait={WAIT_STEP_SECONDS}")).await?;
        if matches!(task["status"].as_str(), Some("done" | "failed" | "cancelled")) {
            break task;
        }
    };
    spinner.finish_and_clear();
    client.print(&task, task_table);
    finished_ok(&task)
}

/// A spinner on stderr while `submit --wait` waits; hidden for `--json` and when stderr
/// is not a terminal (indicatif draws nothing then), so scripts see clean output.
fn waiting_spinner(json: bool, submitted: &Value) -> indicatif::ProgressBar {
    let spinner = if json { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new_spinner() };
    spinner.set_message(format!(
        "task {}: {}; waiting for the result",
        submitted["id"],
        text(&submitted["message"])
    ));
    spinner.enable_steady_tick(Duration::from_millis(100));
    spinner
}

fn finished_ok(task: &Value) -> Result<(), ClientError> {
    match task["status"].as_str() {
        Some("done") => Ok(()),
        other => Err(ClientError::TaskFailed {
            id: task["id"].as_i64().unwrap_or_default(),
            status: other.unwrap_or("unknown").to_owned(),
            error: text(&task["error"]),
        }),
    }
}

/// `master tasks`, once or (`--watch`) redrawn every `--interval` until ctrl-c.
pub async fn tasks(args: TasksArgs) -> Result<(), ClientError> {
    let client = Client::new(&args.client)?;
    let mut query = vec![("limit", args.limit.to_string())];
    if let Some(status) = &args.status {
        query.push(("status", status.clone()));
    }
    if let Some(after) = args.after {
        query.push(("after", after.to_string()));
    }
    if !args.watch {
        return print_tasks(&client, &query).await;
    }
    loop {
        // Clear the screen and home the cursor, then redraw: a plain `watch`-style view.
        print!("\x1b[2J\x1b[H");
        print_tasks(&client, &query).await?;
        tokio::select! {
            () = tokio::time::sleep(args.interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

async fn print_tasks(client: &Client, query: &[(&str, String)]) -> Result<(), ClientError> {
    let request = client.http.get(format!("{}/tasks", client.base)).query(query);
    let list = client.call(request).await?;
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
    let task = client.get(&format!("/tasks/{}", args.id)).await?;
    if !args.events {
        client.print(&task, task_table);
        return Ok(());
    }
    let history = client.get(&format!("/tasks/{}/events", args.id)).await?;
    let both = json!({"task": task, "events": history["events"]});
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
    let task = client.call(client.http.delete(format!("{}/tasks/{}", client.base, args.id))).await?;
    client.print(&task, task_table);
    Ok(())
}

/// `master slaves`.
pub async fn slaves(args: ClientArgs) -> Result<(), ClientError> {
    let client = Client::new(&args)?;
    let list = client.get("/slaves").await?;
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
