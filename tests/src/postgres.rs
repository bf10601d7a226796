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

/// A server of one test's own, which it may stop and start; stopped on drop.
pub struct PrivateServer(Server);

impl PrivateServer {
    /// Starts a server for this test alone (never `TEST_DATABASE_URL`'s: the test
    /// stops it).
    pub async fn start() -> Result<PrivateServer, String> {
        let server =
            tokio::task::spawn_blocking(|| start(false)).await.map_err(|error| error.to_string())??;
        Ok(PrivateServer(server))
    }

    /// A new, empty database on it and its URL.
    pub async fn fresh_database(&self) -> Result<String, String> {
        create_database(&self.0).await
    }

    /// `pg_ctl ARGS` on this server (`stop -m fast`, `start`, `restart -m fast`).
    pub async fn pg_ctl(&self, args: &[&str]) -> Result<(), String> {
        let started = self.0.started.as_ref().ok_or("not a server of ours")?;
        let (mut command, args) =
            (started.pg_ctl_command(), args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>());
        command.args(&args);
        if args.first().is_some_and(|verb| verb == "start" || verb == "restart") {
            // A log file, so the server does not hold pg_ctl's output open.
            command.args(["-o", &started.settings]).arg("-l").arg(started.socket_dir.join("server.log"));
        }
        tokio::task::spawn_blocking(move || run(&mut command)).await.map_err(|error| error.to_string())?
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        if let Some(started) = &self.0.started {
            let mut stop = started.pg_ctl_command();
            stop.args(["stop", "-m", "immediate"]);
            let _ = run(&mut stop);
            let _ = std::fs::remove_dir_all(&started.socket_dir);
        }
    }
}

/// A server this process started.
struct Started {
    data: PathBuf,
    bin: PathBuf,
    socket_dir: PathBuf,
    as_postgres_user: bool,
    /// The server's `-o` options: where it listens and how.
    settings: String,
}

impl Started {
    /// `pg_ctl -D data -w -s`, as the server's own user; the verb comes after.
    fn pg_ctl_command(&self) -> Command {
        let mut command = self.command("pg_ctl");
        command.arg("-D").arg(&self.data).arg("-w").arg("-s");
        command
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

/// The shared server of this test binary, started on first use.
pub async fn server() -> Result<&'static Server, String> {
    static SERVER: OnceCell<Result<Server, String>> = OnceCell::const_new();
    SERVER
        .get_or_init(|| async {
            match std::env::var("TEST_DATABASE_URL") {
                Ok(url) => Ok(Server { admin_url: url, started: None }),
                Err(_) => {
                    tokio::task::spawn_blocking(|| start(true)).await.map_err(|error| error.to_string())?
                }
            }
        })
        .await
        .as_ref()
        .map_err(Clone::clone)
}

/// What a test does without a PostgreSQL server: under `CI=true` it fails with the
/// reason; elsewhere it is skipped, saying why (`None`).
pub fn or_skip<T>(server: Result<T, String>) -> Option<T> {
    match server {
        Ok(value) => Some(value),
        Err(reason) => {
            assert!(!crate::required(), "PostgreSQL is required under CI: {reason}");
            eprintln!("skipped: no PostgreSQL ({reason})");
            None
        }
    }
}

/// A new, empty database on the shared server and its URL.
pub async fn fresh_database() -> Result<String, String> {
    create_database(server().await?).await
}

async fn create_database(server: &Server) -> Result<String, String> {
    static NEXT: AtomicU32 = AtomicU32::new(1);
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

/// Starts a server in a temp dir; `shared`: it lives as long as this process (a
/// watcher stops it), else its [`PrivateServer`] stops it.
fn start(shared: bool) -> Result<Server, String> {
    let bin = bin_dir()?;
    let as_postgres_user = is_root();
    let dir =
        tempfile::Builder::new().prefix("test-pg-").tempdir().map_err(|error| error.to_string())?.keep();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|error| error.to_string())?;
    if as_postgres_user {
        run(Command::new("chown").arg("postgres:").arg(&dir))?;
    }
    let settings = format!(
        "-c listen_addresses='' -c unix_socket_directories='{}' -c fsync=off -c max_connections=400 \
         -c shared_buffers=64MB",
        dir.display()
    );
    let started =
        Started { data: dir.join("data"), bin, socket_dir: dir.clone(), as_postgres_user, settings };
    let mut initdb = started.command("initdb");
    initdb.arg("-D").arg(&started.data).args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"]);
    run(&mut initdb)?;
    let mut pg_ctl = started.pg_ctl_command();
    pg_ctl.args(["start", "-l"]).arg(dir.join("server.log")).args(["-o", &started.settings]);
    run(&mut pg_ctl)?;
    if shared {
        stop_when_this_process_exits(&started, &dir)?;
    }
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
