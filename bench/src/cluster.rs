//! The cluster under load: a local one the bench starts from the real binaries (a
//! `master serve` child, and `slave` children with `--slave-processes`), or a running
//! master on loopback given with `--master`. Children are reaped on drop.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::{BenchError, api::Api};
use crate::WhenFull;

/// How long a child may take to print its `listening on` line.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a child gets to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Pacing of "is it there yet" probes while a cluster starts.
const PROBE_INTERVAL: Duration = Duration::from_millis(5);

/// How the bench wants its local cluster.
#[derive(Debug, Clone)]
pub struct LocalSpec {
    pub capacity: u32,
    pub when_full: WhenFull,
    pub slave_processes: bool,
    /// Masters sharing the ledger (more than one: PostgreSQL, slave processes).
    pub masters: usize,
    /// The ledger file; `None` for one in a temporary directory.
    pub db: Option<String>,
    /// `--worker-threads` of the master; `None` for its default.
    pub worker_threads: Option<u16>,
}

/// A running child that printed `listening on http://ADDR` (the harness the end-to-end
/// tests use too), with its stderr in a log file for when it fails.
pub struct Process {
    inner: cluster_harness::Process,
    log: PathBuf,
}

impl std::ops::Deref for Process {
    type Target = cluster_harness::Process;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl Process {
    /// Spawns `program args` with stderr to `log` and waits for its `listening on` line.
    async fn spawn(name: &str, program: &Path, args: &[String], log: &Path) -> Result<Self, BenchError> {
        let log_file = std::fs::File::create(log)
            .map_err(|error| BenchError::Start(format!("cannot create {}: {error}", log.display())))?;
        let mut command = std::process::Command::new(program);
        // A child that fails to start says why in a line or two (shown from its log),
        // not in a backtrace the caller's RUST_BACKTRACE would add to its error.
        command.args(args).stderr(log_file).env("RUST_LIB_BACKTRACE", "0");
        let name = name.to_owned();
        let spawned = tokio::task::spawn_blocking(move || {
            cluster_harness::Process::spawn(&name, command, START_TIMEOUT)
        })
        .await
        .map_err(|error| BenchError::Start(error.to_string()))?;
        match spawned {
            Ok(inner) => Ok(Self { inner, log: log.to_path_buf() }),
            Err(why) => Err(BenchError::Start(format!("{why}; its log ends:\n{}", log_tail(log)))),
        }
    }

    /// CPU seconds (user + system) used so far; `None` once it has exited.
    pub fn cpu_seconds(&self) -> Option<f64> {
        super::probe::cpu_seconds(&self.inner.pid().to_string())
    }

    /// SIGTERM (graceful: the ledger is checkpointed and closed), then SIGKILL past
    /// [`STOP_TIMEOUT`] (on drop).
    pub async fn stop(self) -> Result<(), BenchError> {
        let Self { mut inner, log } = self;
        let stopped = tokio::task::spawn_blocking(move || inner.terminate(STOP_TIMEOUT))
            .await
            .map_err(|error| BenchError::Incomplete(error.to_string()))?;
        stopped
            .map(drop)
            .map_err(|why| BenchError::Incomplete(format!("{why}; its log ends:\n{}", log_tail(&log))))
    }
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The cluster a workload drives.
pub struct Cluster {
    pub api: Api,
    /// What the report calls it.
    pub description: String,
    local: Option<Local>,
}

struct Local {
    /// Holds the temporary ledger and logs; removed on drop.
    dir: tempfile::TempDir,
    spec: LocalSpec,
    /// The master's `--db`: a SQLite file or a PostgreSQL URL.
    db: String,
    /// `None` only between the stop and the start of a restart.
    master: Option<Process>,
    /// The masters after the first, sharing its PostgreSQL ledger.
    more_masters: Vec<Process>,
    slaves: Vec<Process>,
}

impl Cluster {
    /// A running master on loopback (SPEC §10: the bench only ever targets this machine).
    pub async fn existing(url: &str, api_timeout: Duration) -> Result<Self, BenchError> {
        let base = master_client::parse_bases(url)
            .iter()
            .map(|base| loopback_base(base))
            .collect::<Result<Vec<_>, _>>()?
            .join(",");
        let api = Api::new(&base, api_timeout)?;
        api.healthz().await.map_err(|error| BenchError::Start(format!("{base} is not healthy: {error}")))?;
        Ok(Self { api, description: format!("existing master at {base}"), local: None })
    }

    /// Starts a master (and its two slaves) from the binaries beside this one.
    pub async fn start(spec: LocalSpec, api_timeout: Duration) -> Result<Self, BenchError> {
        let dir = tempfile::Builder::new()
            .prefix("master-bench-")
            .tempdir()
            .map_err(|error| BenchError::Start(format!("cannot make a temporary directory: {error}")))?;
        let db = spec.db.clone().unwrap_or_else(|| dir.path().join("master.db").display().to_string());
        if spec.masters > 1 && !db.starts_with("postgres") {
            return Err(BenchError::Start(
                "--masters above 1 needs --db postgres://…: SQLite takes one master".to_owned(),
            ));
        }
        let master = spawn_master(&spec, &db, dir.path(), "master").await?;
        let mut more_masters = Vec::new();
        for number in 2..=spec.masters {
            more_masters.push(spawn_master(&spec, &db, dir.path(), &format!("master-{number}")).await?);
        }
        let master_url = std::iter::once(&master)
            .chain(&more_masters)
            .map(|master| master.url.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let api = Api::new(&master_url, api_timeout)?;
        let mut local = Local { dir, spec, db, master: Some(master), more_masters, slaves: Vec::new() };
        if local.spec.slave_processes {
            for name in ["slave-1", "slave-2"] {
                // One after the other, each registered before the next starts, so the
                // order is slave-1, slave-2 as with --local-slaves.
                let slave = spawn_slave(name, &local, &master_url, &api).await?;
                local.slaves.push(slave);
            }
        }
        wait_for_slaves(&api, 2).await?;
        let kind = if local.spec.slave_processes { "slave processes" } else { "in-process slaves" };
        let masters = match local.spec.masters {
            1 => "master".to_owned(),
            count => format!("{count} masters on one PostgreSQL"),
        };
        let description = format!(
            "local: {masters} + 2 {kind} of capacity {}, --when-full {}",
            local.spec.capacity,
            when_full_flag(local.spec.when_full)
        );
        Ok(Self { api, description, local: Some(local) })
    }

    /// The ledger file of a local cluster.
    pub fn db(&self) -> Option<&Path> {
        let local = self.local.as_ref()?;
        (!local.db.starts_with("postgres")).then(|| Path::new(&local.db))
    }

    /// Peak RSS of the master process, in MiB (local clusters only).
    pub fn master_peak_rss_mb(&self) -> Option<f64> {
        self.local.as_ref()?.master.as_ref()?.peak_rss_mb()
    }

    /// RSS of the master process now, in MiB (local clusters only).
    pub fn master_rss_mb(&self) -> Option<f64> {
        self.local.as_ref()?.master.as_ref()?.rss_mb()
    }

    /// The larger peak RSS of the two slave processes, in MiB (`--slave-processes` only).
    pub fn slave_peak_rss_mb(&self) -> Option<f64> {
        self.local.as_ref()?.slaves.iter().filter_map(|slave| slave.peak_rss_mb()).reduce(f64::max)
    }

    /// CPU seconds the master processes used so far, together (local clusters only).
    pub fn master_cpu_seconds(&self) -> Option<f64> {
        let local = self.local.as_ref()?;
        let first = local.master.as_ref()?.cpu_seconds()?;
        Some(first + local.more_masters.iter().filter_map(Process::cpu_seconds).sum::<f64>())
    }

    /// CPU seconds the slave processes used so far, together (`--slave-processes` only).
    pub fn slaves_cpu_seconds(&self) -> Option<f64> {
        self.local.as_ref()?.slaves.iter().filter_map(Process::cpu_seconds).reduce(|a, b| a + b)
    }

    /// Stops the master (gracefully: two masters must never share a ledger) and starts
    /// it again on the same file; gives the time from spawn to `listening on`, and to
    /// the first `GET /healthz` 200.
    pub async fn restart_master(&mut self) -> Result<(Duration, Duration), BenchError> {
        let Some(local) = self.local.as_mut() else {
            return Err(BenchError::Incomplete("restarting needs a local cluster (no --master)".to_owned()));
        };
        if !local.more_masters.is_empty() {
            return Err(BenchError::Incomplete("restarting is measured with one master".to_owned()));
        }
        for slave in std::mem::take(&mut local.slaves) {
            slave.stop().await?;
        }
        if let Some(master) = local.master.take() {
            master.stop().await?;
        }
        let started = Instant::now();
        let master = spawn_master(&local.spec, &local.db, local.dir.path(), "master-restarted").await?;
        let listening = master.started_in;
        self.api = Api::new(&master.url, self.api.timeout())?;
        local.master = Some(master);
        let deadline = Instant::now() + START_TIMEOUT;
        while self.api.healthz().await.is_err() {
            if Instant::now() > deadline {
                return Err(BenchError::Start("restarted master never answered GET /healthz 200".to_owned()));
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
        Ok((listening, started.elapsed()))
    }

    /// Stops every child; the master first gets SIGTERM so the ledger closes cleanly.
    pub async fn stop(self) -> Result<(), BenchError> {
        let Some(local) = self.local else { return Ok(()) };
        for slave in local.slaves {
            slave.stop().await?;
        }
        for master in local.more_masters {
            master.stop().await?;
        }
        match local.master {
            Some(master) => master.stop().await,
            None => Ok(()),
        }
    }
}

impl Local {
    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }
}

async fn spawn_master(spec: &LocalSpec, db: &str, dir: &Path, name: &str) -> Result<Process, BenchError> {
    let exe = std::env::current_exe()
        .map_err(|error| BenchError::Start(format!("cannot find the master binary: {error}")))?;
    let local_slaves = if spec.slave_processes { 0 } else { 2 };
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--db".into(),
        db.to_owned(),
        "--local-slaves".into(),
        local_slaves.to_string(),
        "--local-slave-capacity".into(),
        spec.capacity.to_string(),
        "--when-full".into(),
        when_full_flag(spec.when_full).into(),
    ];
    if let Some(threads) = spec.worker_threads {
        args.extend(["--worker-threads".into(), threads.to_string()]);
    }
    Process::spawn(name, &exe, &args, &dir.join(format!("{name}.log"))).await
}

async fn spawn_slave(name: &str, local: &Local, master_url: &str, api: &Api) -> Result<Process, BenchError> {
    let exe = std::env::current_exe()
        .map_err(|error| BenchError::Start(format!("cannot find the master binary: {error}")))?;
    let slave_bin = exe.with_file_name("slave");
    if !slave_bin.exists() {
        return Err(BenchError::Start(format!(
            "--slave-processes needs {}: build it with `cargo build --release -p slave`",
            slave_bin.display()
        )));
    }
    let args: Vec<String> = vec![
        "--master".into(),
        master_url.to_owned(),
        "--name".into(),
        name.into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--capacity".into(),
        local.spec.capacity.to_string(),
    ];
    let slave = Process::spawn(name, &slave_bin, &args, &local.log(name)).await?;
    let deadline = Instant::now() + START_TIMEOUT;
    while !api.slave_names_up().await?.iter().any(|up| up == name) {
        if Instant::now() > deadline {
            return Err(BenchError::Start(format!("{name} never showed up in GET /slaves")));
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
    Ok(slave)
}

async fn wait_for_slaves(api: &Api, count: usize) -> Result<(), BenchError> {
    let deadline = Instant::now() + START_TIMEOUT;
    while api.fewest_slaves_up().await? < count {
        if Instant::now() > deadline {
            return Err(BenchError::Start(format!("fewer than {count} slaves are up in GET /slaves")));
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
    Ok(())
}

fn when_full_flag(when_full: WhenFull) -> &'static str {
    match when_full {
        WhenFull::Reject => "reject",
        WhenFull::Queue => "queue",
    }
}

/// `url` without a trailing slash, if its host is a loopback address.
pub fn loopback_base(url: &str) -> Result<String, BenchError> {
    let parsed = reqwest::Url::parse(url).map_err(|error| BenchError::Target(format!("`{url}`: {error}")))?;
    let host = parsed.host_str().unwrap_or_default();
    let ip = host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>();
    let loopback = host == "localhost" || ip.is_ok_and(|ip| ip.is_loopback());
    if parsed.scheme() != "http" || !loopback {
        return Err(BenchError::Target(format!(
            "`{url}`: the bench only drives http masters on this machine (127.0.0.1, [::1], localhost)"
        )));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_masters_are_targets() {
        assert_eq!(loopback_base("http://127.0.0.1:8080/").unwrap(), "http://127.0.0.1:8080");
        assert!(loopback_base("http://localhost:1").is_ok());
        assert!(loopback_base("http://[::1]:1").is_ok());
        assert!(loopback_base("http://10.0.0.1:8080").is_err());
        assert!(loopback_base("http://example.com").is_err());
        assert!(loopback_base("https://127.0.0.1:1").is_err());
        assert!(loopback_base("not a url").is_err());
    }
}
