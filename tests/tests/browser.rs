//! The dashboard (SPEC §9) in a real browser: headless Chromium driven through
//! chromedriver over WebDriver, against a real master and two real slaves.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`ops/ci-browser.sh` installs them).
//! Without chromedriver the test is skipped, except under CI (`CI` set), where it fails.
//! A screenshot of the page is saved to `target/test-artifacts/dashboard.png`.

use std::{
    net::TcpListener,
    os::unix::process::CommandExt,
    panic::{AssertUnwindSafe, resume_unwind},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use cluster_tests::{Cluster, MasterOptions, eventually, fast_failure_detection, fast_heartbeats};
use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::FutureExt;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

/// Flags without which headless Chromium stalls on a machine with no internet, or in a
/// container (no sandbox, small /dev/shm, no GPU).
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    // Tall enough that the screenshot holds the whole page.
    "--window-size=1280,1150",
];

/// Reads what the page shows, as JSON: the submit reply (null while none is shown), the
/// slaves' rows in order, the task rows and the counts.
const READ_PAGE: &str = r##"
    const text = (node, selector) => node.querySelector(selector).textContent.trim();
    const reply = document.querySelector("#reply");
    return {
        reply: reply.dataset.kind === undefined ? null : {
            kind: reply.dataset.kind,
            status: text(document, "#reply-status"),
            message: document.querySelector("#reply-message").textContent,
        },
        slaves: [...document.querySelectorAll("#slaves tbody tr[data-name]")].map((row) => ({
            name: row.dataset.name,
            cells: [...row.cells].map((cell) => cell.textContent.trim()),
        })),
        masters: [...document.querySelectorAll("#masters tbody tr[data-id]")].map((row) => ({
            state: row.dataset.state,
            url: row.cells[1].textContent.trim(),
        })),
        tasks: [...document.querySelectorAll("#tasks tbody tr[data-task-id]")].map((row) => ({
            id: Number(row.dataset.taskId),
            status: text(row, ".status"),
            outcome: text(row, ".outcome"),
        })),
        counts: Object.fromEntries([...document.querySelectorAll("#counts .n")]
            .map((node) => [node.dataset.status, node.textContent.trim()])),
        chips: Object.fromEntries([...document.querySelectorAll("#chips .chip")]
            .map((chip) => [chip.dataset.filter || "all", {
                n: chip.querySelector(".n").textContent.trim(),
                pressed: chip.getAttribute("aria-pressed") === "true",
            }])),
        page: document.querySelector("#page-info").textContent.trim(),
        newer: !document.querySelector("#newer").disabled,
        older: !document.querySelector("#older").disabled,
    };
"##;

#[tokio::test]
async fn dashboard_lists_slaves_in_order_submits_through_its_form_and_shows_tasks_finish() {
    let Some(programs) = browser_or_skip() else { return };
    let cluster = Cluster::start(&[1, 1]).await;
    let driver = Chromedriver::start(&programs.chromedriver);
    let browser = driver.session(&programs.chromium).await;

    let outcome = AssertUnwindSafe(walk_through(&browser, &cluster)).catch_unwind().await;
    // The page as it ended, passed or failed: the artifact a person looks at.
    let screenshot = save_screenshot(&browser, "dashboard.png").await;
    let _ = browser.close().await;
    if let Err(panic) = outcome {
        resume_unwind(panic);
    }
    screenshot.expect("screenshot of the dashboard");
}

/// Reads the open task's story: its status badge and the event rows, in order.
const READ_DETAIL: &str = r##"
    const section = document.querySelector("#task-detail");
    return {
        shown: !section.hidden,
        id: document.querySelector("#detail-id").textContent,
        status: (document.querySelector("#detail-status") || { textContent: "" }).textContent,
        events: [...document.querySelectorAll("#events tbody tr[data-kind]")].map((row) => ({
            kind: row.dataset.kind,
            slave: row.querySelector(".slave").textContent.trim(),
        })),
    };
"##;

#[tokio::test]
async fn a_task_re_dispatched_after_its_slave_was_killed_tells_its_story_on_its_own_page() {
    let Some(programs) = browser_or_skip() else { return };
    let options = MasterOptions { args: fast_failure_detection(), ..MasterOptions::default() };
    let mut cluster = Cluster::start_with(options, fast_heartbeats(), &[1, 1]).await;
    let reply = cluster.submit("6*7", 2_000).await;
    assert_eq!(reply.body["slave"]["name"], "slave-1", "{:?}", reply.body);
    let id = reply.body["id"].as_i64().expect("an id");
    let first = cluster.slave_index("slave-1");
    cluster.slaves[first].kill9();
    let task = cluster.wait_final(id).await;
    assert_eq!((task["status"].as_str(), task["slave"]["name"].as_str()), (Some("done"), Some("slave-2")));
    // A burst of quick tasks for the charts (one slot left: some meet full capacity).
    for n in 0..10 {
        let reply = cluster.submit(&format!("{n}+1"), 0).await;
        if let Some(id) = reply.body["id"].as_i64() {
            cluster.wait_final(id).await;
        }
    }

    let driver = Chromedriver::start(&programs.chromedriver);
    let browser = driver.session(&programs.chromium).await;
    let outcome = AssertUnwindSafe(open_the_story(&browser, &cluster, id)).catch_unwind().await;
    let screenshot = save_screenshot(&browser, "task-detail.png").await;
    let _ = browser.close().await;
    if let Err(panic) = outcome {
        resume_unwind(panic);
    }
    screenshot.expect("screenshot of the task's page");
}

#[tokio::test]
async fn the_history_filters_by_status_with_counts_and_pages_past_a_hundred_tasks_and_back() {
    let Some(programs) = browser_or_skip() else { return };
    let cluster = Cluster::start(&[4]).await;
    // 120 tasks, one in ten failing (1/0 is inf: failed with words), each finished.
    for n in 1..=120 {
        let expression = if n % 10 == 0 { "1/0".to_owned() } else { format!("{n}+1") };
        let reply = cluster.submit(&expression, 0).await;
        assert_eq!(reply.status, 201, "{:?}", reply.body);
        cluster.wait_final(reply.body["id"].as_i64().unwrap()).await;
    }
    let failed_in_ledger = cluster.http.get(&cluster.url("/tasks?status=failed&limit=1000")).await.body;
    let failed_ids: Vec<i64> = failed_in_ledger["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|t| t["id"].as_i64().unwrap())
        .collect();
    assert_eq!(failed_in_ledger["counts"]["failed"], 12);

    let driver = Chromedriver::start(&programs.chromedriver);
    let browser = driver.session(&programs.chromium).await;
    let outcome = AssertUnwindSafe(filter_and_page(&browser, &cluster, &failed_ids)).catch_unwind().await;
    let screenshot = save_screenshot(&browser, "history.png").await;
    let _ = browser.close().await;
    if let Err(panic) = outcome {
        resume_unwind(panic);
    }
    screenshot.expect("screenshot of the filtered history");
}

async fn click(browser: &Client, selector: &str) {
    let node = browser.find(Locator::Css(selector)).await.unwrap_or_else(|e| panic!("{selector}: {e}"));
    node.click().await.unwrap_or_else(|e| panic!("click {selector}: {e}"));
}

fn ids(page: &Value) -> Vec<i64> {
    statuses(page).into_iter().map(|(id, _)| id).collect()
}

async fn filter_and_page(browser: &Client, cluster: &Cluster, failed_ids: &[i64]) {
    browser.goto(&cluster.url("/")).await.expect("open the dashboard");
    let page =
        page_until(browser, "the newest 50 of 120", |page| Some(ids(page).first() == Some(&120))).await;
    assert_eq!(ids(&page), (71..=120).rev().collect::<Vec<_>>());
    assert_eq!(page["chips"]["all"], json!({"n": "120", "pressed": true}));
    assert_eq!((page["newer"].as_bool(), page["older"].as_bool()), (Some(false), Some(true)));

    click(browser, r#"#chips .chip[data-filter="failed"]"#).await;
    let page = page_until(browser, "only failed tasks", |page| {
        Some(page["chips"]["failed"]["pressed"] == true && ids(page) == failed_ids)
    })
    .await;
    assert!(statuses(&page).iter().all(|(_, status)| status == "failed"), "{page}");
    assert_eq!(page["chips"]["failed"]["n"], failed_ids.len().to_string(), "the count GET /tasks gives");
    assert_eq!(page["older"], false, "twelve fit on one page");

    click(browser, r#"#chips .chip[data-filter=""]"#).await;
    page_until(browser, "every status again", |page| Some(ids(page).first() == Some(&120))).await;
    click(browser, "#older").await;
    let page = page_until(browser, "the second page", |page| Some(ids(page).first() == Some(&70))).await;
    assert_eq!(ids(&page), (21..=70).rev().collect::<Vec<_>>());
    click(browser, "#older").await;
    let page = page_until(browser, "the oldest page", |page| Some(ids(page).first() == Some(&20))).await;
    assert_eq!(ids(&page), (1..=20).rev().collect::<Vec<_>>());
    assert_eq!((page["newer"].as_bool(), page["older"].as_bool()), (Some(true), Some(false)));
    assert_eq!(page["page"], "tasks 20 – 1, page 3");
    click(browser, "#newer").await;
    page_until(browser, "back to the second page", |page| Some(ids(page).first() == Some(&70))).await;
    click(browser, "#newer").await;
    let page = page_until(browser, "back to the newest", |page| Some(ids(page).first() == Some(&120))).await;
    assert_eq!(page["newer"], false);

    type_into(browser, "#find-id", "30").await;
    click(browser, "#find-task button").await;
    // The page shows the id at once and the task's fields once its two reads answer.
    let detail = eventually("task 30's page", || async {
        let detail = browser.execute(READ_DETAIL, Vec::new()).await.expect("read the detail");
        let shown = detail["shown"] == true && detail["id"].as_str().is_some_and(|id| id.contains("30"));
        (shown && detail["status"] != "").then_some(detail)
    })
    .await;
    assert_eq!(detail["status"], "failed", "{detail}");
}

/// From the dashboard's table to the task's own page, by its link, as a person would.
async fn open_the_story(browser: &Client, cluster: &Cluster, id: i64) {
    browser.goto(&cluster.url("/")).await.expect("open the dashboard");
    page_until(browser, "the task listed", |page| Some(row(page, id).is_some())).await;
    let link = format!("#tasks tr[data-task-id=\"{id}\"] a");
    browser.find(Locator::Css(&link)).await.expect("the task's link").click().await.expect("click it");
    let detail = eventually("the task's story to be shown", || async {
        let detail = browser.execute(READ_DETAIL, Vec::new()).await.expect("read the page");
        let done = detail["events"].as_array()?.iter().any(|event| event["kind"] == "done");
        (detail["shown"] == true && done).then_some(detail)
    })
    .await;
    assert_eq!(detail["id"], id.to_string());
    assert_eq!(detail["status"], "done");
    let story: Vec<(&str, &str)> = detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| (event["kind"].as_str().unwrap(), event["slave"].as_str().unwrap()))
        .collect();
    assert_eq!(
        story,
        [("submitted", "slave-1"), ("requeued", "slave-1"), ("assigned", "slave-2"), ("done", "slave-2")],
        "{detail}"
    );
    let url = browser.current_url().await.expect("the address");
    assert_eq!(url.fragment(), Some(format!("/tasks/{id}").as_str()), "a link that can be shared");

    // The charts above the tables drew the burst that just ran.
    let drawn = eventually("the throughput chart to draw a non-zero second", || async {
        let drawn = browser.execute(READ_CHARTS, Vec::new()).await.expect("read the charts");
        (drawn["finished"].as_array()?.iter().any(|n| n.as_u64() > Some(0))).then_some(drawn)
    })
    .await;
    assert!(drawn["latency_points"].as_u64() > Some(0), "{drawn}");
    assert_eq!(drawn["running"].as_array().map(Vec::len), Some(2), "one bar per slave: {drawn}");
}

/// What the three charts drew: the throughput bars, the latency line's points, and the
/// running-tasks bar of each slave.
const READ_CHARTS: &str = r##"
    return {
        finished: [...document.querySelectorAll("#chart-throughput rect")].map((bar) => Number(bar.dataset.finished)),
        latency_points: Number(document.querySelector("#chart-latency .p99").dataset.points),
        running: [...document.querySelectorAll("#chart-running rect")].map((bar) => bar.dataset.slave),
    };
"##;

/// The seed walk-through (SPEC §1) done by a person on the dashboard.
async fn walk_through(browser: &Client, cluster: &Cluster) {
    let served = cluster.http.get(&cluster.url("/")).await;
    assert_eq!(served.status, 200);
    let content_type = served.headers["content-type"].to_str().unwrap();
    assert!(content_type.starts_with("text/html"), "GET / is served as {content_type}");

    browser.goto(&cluster.url("/")).await.expect("open the dashboard");
    let page =
        page_until(browser, "both slaves listed", |page| Some(page["slaves"].as_array()?.len() == 2)).await;
    let names: Vec<&str> =
        page["slaves"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["slave-1", "slave-2"], "slaves in registration order");
    for slave in page["slaves"].as_array().unwrap() {
        let cells = &slave["cells"];
        assert_eq!((cells[2].as_str(), cells[3].as_str()), (Some("up"), Some("0 / 1")), "{slave}");
    }

    let page =
        page_until(browser, "the masters panel", |page| Some(!page["masters"].as_array()?.is_empty())).await;
    let this_page = format!("{} (this page)", cluster.master.url);
    assert_eq!(page["masters"], json!([{"state": "up", "url": this_page}]), "the one master, up");

    type_into(browser, "#expression", "2+3*4").await;
    type_into(browser, "#delay", "1500").await;
    // The form keeps its values, so each further submission is one click, as for a person.
    let first = submit(browser).await;
    assert_eq!(
        first,
        json!({"kind": "ok", "status": "201", "message": "Task successfully assigned to slave-1"})
    );
    let second = submit(browser).await;
    assert_eq!(
        second,
        json!({"kind": "ok", "status": "201", "message": "Task successfully assigned to slave-2"})
    );
    let third = submit(browser).await;
    assert_eq!(
        third,
        json!({"kind": "busy", "status": "503", "message": "All slaves are busy: full capacity"})
    );

    let running =
        page_until(browser, "tasks 1 and 2 listed", |page| Some(page["tasks"].as_array()?.len() >= 2)).await;
    assert_eq!(
        statuses(&running),
        [(2, "in_progress".to_owned()), (1, "in_progress".to_owned())],
        "newest first, both running while full capacity was answered; the refused task left no row"
    );
    save_screenshot(browser, "dashboard-running.png").await.expect("screenshot while tasks run");

    let finished = page_until(browser, "tasks 1 and 2 done on the page", |page| {
        Some(page["tasks"].as_array()?.iter().all(|task| task["status"] == "done"))
    })
    .await;
    for task in finished["tasks"].as_array().unwrap() {
        assert_eq!(task["outcome"], "14", "{task}");
    }
    assert_eq!(statuses(&finished).len(), 2, "the refused task left no row");
    assert_eq!(
        finished["counts"],
        json!({"pending": "0", "in_progress": "0", "done": "2", "failed": "0", "cancelled": "0"})
    );
    for id in [1, 2] {
        assert_eq!(cluster.wait_final(id).await["result"], 14.0, "the ledger agrees with the page");
    }

    // Bad input: the server's 400 message is shown as it is, and nothing is stored.
    type_into(browser, "#expression", "2+").await;
    let reply = submit(browser).await;
    let refused = cluster.submit("2+", 0).await;
    assert_eq!(refused.status, 400);
    let verbatim = json!({"kind": "error", "status": "400", "message": refused.body["message"]});
    assert_eq!(reply, verbatim, "the server's message, as it is");

    // Variables typed as `x=2, y=3`.
    type_into(browser, "#expression", "x*y+1").await;
    type_into(browser, "#variables", "x=2, y=3").await;
    type_into(browser, "#delay", "0").await;
    assert_eq!(submit(browser).await["message"], "Task successfully assigned to slave-1");
    let page =
        page_until(browser, "task 3 done on the page", |page| Some(row(page, 3)?["status"] == "done")).await;
    assert_eq!(row(&page, 3).unwrap()["outcome"], "7");

    // A long task, cancelled with its row's button.
    type_into(browser, "#delay", "60000").await;
    assert_eq!(submit(browser).await["status"], "201");
    page_until(browser, "task 4 running on the page", |page| Some(row(page, 4)?["status"] == "in_progress"))
        .await;
    let cancel =
        browser.find(Locator::Css(r#"#tasks tr[data-task-id="4"] button"#)).await.expect("cancel button");
    cancel.click().await.expect("click cancel");
    page_until(browser, "task 4 cancelled on the page", |page| Some(row(page, 4)?["status"] == "cancelled"))
        .await;
    assert_eq!(cluster.task(4).await["status"], "cancelled", "the ledger agrees with the page");
}

/// Saves what the browser shows as `target/test-artifacts/<name>`.
async fn save_screenshot(browser: &Client, name: &str) -> Result<PathBuf, String> {
    let png = browser.screenshot().await.map_err(|error| error.to_string())?;
    let path = artifact_path(name);
    std::fs::write(&path, png).map_err(|error| format!("write {}: {error}", path.display()))?;
    println!("screenshot: {}", path.display());
    Ok(path)
}

/// Clicks Submit and waits for the page's reply: `{kind, status, message}` as shown.
async fn submit(browser: &Client) -> Value {
    browser.find(Locator::Css("#submit")).await.expect("submit button").click().await.expect("click submit");
    // The click handler hides the previous reply before it sends, so this is the new one.
    let page = page_until(browser, "the reply to a submission", |page| Some(!page["reply"].is_null())).await;
    page["reply"].clone()
}

/// The table row of task `id`, if the page lists it.
fn row(page: &Value, id: i64) -> Option<&Value> {
    page["tasks"].as_array()?.iter().find(|task| task["id"] == id)
}

async fn type_into(browser: &Client, selector: &str, text: &str) {
    let input = browser.find(Locator::Css(selector)).await.unwrap_or_else(|e| panic!("{selector}: {e}"));
    input.clear().await.expect("clear input");
    input.send_keys(text).await.expect("type into input");
}

/// Task ids and statuses as the table lists them.
fn statuses(page: &Value) -> Vec<(i64, String)> {
    let tasks = page["tasks"].as_array().map(Vec::as_slice).unwrap_or_default();
    tasks
        .iter()
        .map(|task| (task["id"].as_i64().unwrap(), task["status"].as_str().unwrap().to_owned()))
        .collect()
}

/// Reads the page until `ready` holds, within the harness deadline.
async fn page_until(browser: &Client, what: &str, ready: impl Fn(&Value) -> Option<bool>) -> Value {
    eventually(what, || async {
        let page = browser.execute(READ_PAGE, Vec::new()).await.expect("read the page");
        ready(&page).unwrap_or(false).then_some(page)
    })
    .await
}

/// Where the browser and its driver are installed.
struct BrowserPrograms {
    chromedriver: PathBuf,
    chromium: Option<PathBuf>,
}

/// The installed programs; `None` (skip) without chromedriver, unless under CI.
fn browser_or_skip() -> Option<BrowserPrograms> {
    let Some(chromedriver) = find_program(&["chromedriver"]) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromedriver not installed, and CI must run the browser test: \
             run ops/ci-browser.sh (apt-get install chromium chromium-driver)"
        );
        println!("skipping: chromedriver not installed");
        return None;
    };
    Some(BrowserPrograms { chromedriver, chromium: find_program(&["chromium", "chromium-browser"]) })
}

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|p| p.is_file())
}

/// `target/test-artifacts/<name>`, the directory created.
fn artifact_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target
    let target = exe.ancestors().nth(3).expect("target directory");
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("create target/test-artifacts");
    dir.join(name)
}

/// A chromedriver on a free loopback port, with a fresh browser profile; on drop it and
/// every browser it started are killed.
struct Chromedriver {
    child: Child,
    url: String,
    profile: tempfile::TempDir,
}

impl Chromedriver {
    fn start(program: &Path) -> Chromedriver {
        // chromedriver refuses port 0: let the OS pick a free port, then hand it over.
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let mut command = Command::new(program);
        command.args([format!("--port={port}"), "--allowed-ips=127.0.0.1".to_owned()]).stdin(Stdio::null());
        if std::env::var_os("TEST_LOG").is_none() {
            command.stdout(Stdio::null()).stderr(Stdio::null());
        }
        // Its own process group, so that drop also ends the browser it launched.
        command.process_group(0);
        let child = command.spawn().unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
        let profile = tempfile::tempdir().expect("browser profile dir");
        Chromedriver { child, url: format!("http://127.0.0.1:{port}"), profile }
    }

    /// Waits for the driver to be ready and opens a headless Chromium session.
    async fn session(&self, chromium: &Option<PathBuf>) -> Client {
        let status = format!("{}/status", self.url);
        eventually("chromedriver to be ready", || async {
            let body: Value = reqwest::get(&status).await.ok()?.json().await.ok()?;
            body["value"]["ready"].as_bool()?.then_some(())
        })
        .await;
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|flag| (*flag).to_owned()).collect();
        args.push(format!("--user-data-dir={}", self.profile.path().display()));
        let mut options = json!({ "args": args });
        if let Some(chromium) = chromium {
            options["binary"] = json!(chromium);
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".to_owned(), options);
        ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("start a headless Chromium session")
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        if let Ok(group) = i32::try_from(self.child.id()) {
            // SAFETY: signals the process group this test created for chromedriver; no memory is touched.
            unsafe { libc::kill(-group, libc::SIGKILL) };
        }
        let _ = self.child.wait();
    }
}
