//! `master`: run the master or talk to one (SPEC §9). The only home of anyhow.

use anyhow::Context;
use clap::Parser;
use master::{
    Master,
    cli::{Cli, Command},
    client,
};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    slave::logging::init(cli.log_format);
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Submit(args) => Ok(client::submit(args).await?),
        Command::Tasks(args) => Ok(client::tasks(args).await?),
        Command::Task(args) => Ok(client::task(args).await?),
        Command::Cancel(args) => Ok(client::cancel(args).await?),
        Command::Slaves(args) => Ok(client::slaves(args).await?),
        Command::Bench(args) => Ok(master::bench::run(args).await?),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "master", &mut std::io::stdout());
            Ok(())
        }
    }
}

async fn serve(args: master::cli::ServeArgs) -> anyhow::Result<()> {
    let config = args.into_config().map_err(anyhow::Error::msg)?;
    let db = config.db.display().to_string();
    let master = Master::build(config).await.with_context(|| format!("cannot start the master on {db}"))?;
    let addr = master.local_addr()?;
    // The one line scripts and tests wait for (SPEC §9).
    println!("listening on http://{addr}");
    for (name, url) in master.local_slaves() {
        println!("local slave {name} at {url}");
    }
    println!("dashboard: http://{addr}/   tasks: http://{addr}/tasks   ledger: {db}");
    let stop = CancellationToken::new();
    tokio::spawn(slave::serve::cancel_on_signal(stop.clone()));
    master.run_until_stopped(stop).await?;
    Ok(())
}
