//! A throwaway PostgreSQL server for tests, or the one `TEST_DATABASE_URL` names.
//!
//! The first test of a test binary that asks for a database starts a server with
//! Debian's `initdb` and `pg_ctl` in a temp dir, listening only on a Unix socket in
//! that dir (no port to race for), as the `postgres` user when the tests run as root
//! (PostgreSQL refuses to run as root). Each caller then gets a database of its own.
//! A watcher process stops the server and removes the dir once the test binary exits.
//! Under `CI=true` a server that cannot start fails the test; elsewhere the caller
//! may skip ([`fresh_database`] returns `Err` with the reason).
//!
//! The server runs with `fsync=off`: the tests kill masters and restart PostgreSQL,
//! never the machine, so flushing to the platter would only slow them down.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use sqlx::{Connection, Executor, PgConnection};
use tokio::sync::OnceCell;

/// A server tests can create databases in.
pub struct Server {
    /// URL of its `postgres` database, for `CREATE DATABASE`.
    admin_url: String,
    /// The server we started (`None` with `TEST_DATABASE_URL`).
    started: Option<Started>,
}

/// A server this process started.
pub struct Started {
    pub data: PathBuf,
    pub bin: PathBuf,
    pub socket_dir: PathBuf,
    pub as_postgres_user: bool,
}

impl Started {
    /// `pg_ctl ARGS -D data`, as the server's own user.
    pub fn pg_ctl(&self, args: &[&str]) -> Result<(), String> {
        let mut command = self.command("pg_ctl");
        command.args(args).arg("-D").arg(&self.data).arg("-w").arg("-s");
        run(&mut command)
    }

    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        if self.as_postgres_user {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }
}

fn run(command: &mut Command) -> Result<(), String> {
    let output = command.stdin(Stdio::null()).output().map_err(|error| format!("{command:?}: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} failed: {}", String::from_utf8_lossy(&output.stderr)))
    }
}

impl Server {
    /// The server we started, for tests that stop or restart it.
    pub fn started(&self) -> Option<&Started> {
        self.started.as_ref()
    }
}

/// The shared server of this test binary, started on first use.
pub async fn server() -> Result<&'static Server, String> {
    static SERVER: OnceCell<Result<Server, String>> = OnceCell::const_new();
    SERVER
        .get_or_init(|| async {
            match std::env::var("TEST_DATABASE_URL") {
                Ok(url) => Ok(Server { admin_url: url, started: None }),
                Err(_) => tokio::task::spawn_blocking(start).await.map_err(|error| error.to_string())?,
            }
        })
        .await
        .as_ref()
        .map_err(Clone::clone)
}

/// A new, empty database and its URL.
pub async fn fresh_database() -> Result<String, String> {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let server = server().await?;
    let name = format!("test_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    let mut admin = PgConnection::connect(&server.admin_url).await.map_err(|error| error.to_string())?;
    admin.execute(format!("CREATE DATABASE {name}").as_str()).await.map_err(|error| error.to_string())?;
    let _ = admin.close().await;
    with_database(&server.admin_url, &name)
}

/// `url` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> Result<String, String> {
    let mut parsed = url::Url::parse(url).map_err(|error| format!("{url}: {error}"))?;
    parsed.set_path(&format!("/{name}"));
    Ok(parsed.to_string())
}

/// The newest PostgreSQL's binaries: Debian keeps them off `PATH`.
fn bin_dir() -> Result<PathBuf, String> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|error| {
            format!("PostgreSQL is not installed (/usr/lib/postgresql: {error}); apt-get install postgresql")
        })?
        .filter_map(Result::ok)
        .filter_map(|entry| Some((entry.file_name().to_str()?.parse().ok()?, entry.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| "no initdb under /usr/lib/postgresql/*/bin".to_owned())
}

fn start() -> Result<Server, String> {
    let bin = bin_dir()?;
    let as_postgres_user = is_root();
    let dir =
        tempfile::Builder::new().prefix("test-pg-").tempdir().map_err(|error| error.to_string())?.keep();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|error| error.to_string())?;
    if as_postgres_user {
        run(Command::new("chown").arg("postgres:").arg(&dir))?;
    }
    let started = Started { data: dir.join("data"), bin, socket_dir: dir.clone(), as_postgres_user };
    let mut initdb = started.command("initdb");
    initdb.arg("-D").arg(&started.data).args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"]);
    run(&mut initdb)?;
    let settings = format!(
        "-c listen_addresses='' -c unix_socket_directories='{}' -c fsync=off -c max_connections=400 \
         -c shared_buffers=64MB",
        dir.display()
    );
    started.pg_ctl(&["start", "-l", &dir.join("server.log").display().to_string(), "-o", &settings])?;
    stop_when_this_process_exits(&started, &dir)?;
    let admin_url = format!("postgres://postgres@localhost/postgres?host={}", dir.display());
    Ok(Server { admin_url, started: Some(started) })
}

/// A small shell process that waits for this test binary to exit, then stops the
/// server and removes its dir (statics are never dropped, so nothing else would).
fn stop_when_this_process_exits(started: &Started, dir: &Path) -> Result<(), String> {
    let pg_ctl = started.bin.join("pg_ctl");
    let stop = if started.as_postgres_user {
        format!("runuser -u postgres -- {} stop -D {} -m immediate", pg_ctl.display(), started.data.display())
    } else {
        format!("{} stop -D {} -m immediate", pg_ctl.display(), started.data.display())
    };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {stop} >/dev/null 2>&1; rm -rf {dir}",
        pid = std::process::id(),
        dir = dir.display()
    );
    Command::new("setsid")
        .args(["sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(drop)
        .map_err(|error| format!("cannot start the server's watcher: {error}"))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
