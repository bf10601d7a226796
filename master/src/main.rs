//! `master`: run the master or talk to one (SPEC §9). The only home of anyhow.

use anyhow::Context;
use clap::Parser;
use master::{
    Master,
    cli::{Cli, Command},
    client,
};
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    common::logging::init(cli.log_format);
    master::memory::limit_allocator_arenas();
    let mut runtime = match &cli.command {
        // The load generator shares the cores with what it measures: one thread keeps
        // its own cost low (no hand-offs between worker threads).
        Command::Bench(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if let Command::Serve(args) = &cli.command
        && let Some(threads) = args.worker_threads
    {
        runtime.worker_threads(usize::from(threads));
    }
    runtime.enable_all().build().context("cannot start the async runtime")?.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Submit(args) => Ok(client::submit(args).await?),
        Command::Tasks(args) => Ok(client::tasks(args).await?),
        Command::Task(args) => Ok(client::task(args).await?),
        Command::Cancel(args) => Ok(client::cancel(args).await?),
        Command::Slaves(args) => Ok(client::slaves(args).await?),
        Command::Masters(args) => Ok(client::masters(args).await?),
        Command::Bench(args) => Ok(master_bench::run(args).await?),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "master", &mut std::io::stdout());
            Ok(())
        }
    }
}

async fn serve(args: master::cli::ServeArgs) -> anyhow::Result<()> {
    let config = args.into_config().map_err(anyhow::Error::msg)?;
    let db = config.db.to_string();
    let master = Master::build(config).await.with_context(|| format!("cannot start the master on {db}"))?;
    let addr = master.local_addr()?;
    // The one line scripts and tests wait for (SPEC §9).
    println!("listening on http://{addr}");
    for (name, url) in master.local_slaves() {
        println!("local slave {name} at {url}");
    }
    println!("dashboard: http://{addr}/   tasks: http://{addr}/tasks   ledger: {db}");
    let stop = CancellationToken::new();
    tokio::spawn(common::serve::cancel_on_signal(stop.clone()));
    tell_systemd_when_healthy(master.ledger(), stop.clone());
    master.run_until_stopped(stop).await?;
    Ok(())
}

/// Under systemd (`Type=notify`, `WatchdogSec=`): READY=1 once the API is bound and a
/// ledger write really commits (the same check as `GET /healthz`), then WATCHDOG=1
/// every half watchdog period only while that check holds, so a master whose ledger
/// was lost (disk full, file deleted) is restarted by systemd instead of lingering.
/// Outside systemd (no `$NOTIFY_SOCKET`) this does nothing.
fn tell_systemd_when_healthy(ledger: master::ledger::Ledger, stop: CancellationToken) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    tokio::spawn(async move {
        let retry = std::time::Duration::from_millis(200);
        while let Err(error) = ledger.probe_writable().await {
            tracing::warn!(%error, "not ready: the ledger does not commit a write yet");
            tokio::select! {
                () = tokio::time::sleep(retry) => {}
                () = stop.cancelled() => return,
            }
        }
        if let Err(error) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
            tracing::warn!(%error, "could not tell systemd the master is ready");
        }
        let Some(period) = sd_notify::watchdog_enabled() else { return };
        loop {
            tokio::select! {
                () = tokio::time::sleep(period / 2) => {}
                () = stop.cancelled() => {
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
                    return;
                }
            }
            match ledger.probe_writable().await {
                Ok(()) => {
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                }
                Err(error) => tracing::error!(%error, "watchdog not fed: the ledger does not commit writes"),
            }
        }
    });
}
