//! The `restful-server` binary: parse flags, bind, print the "Starting" line, serve until Ctrl-C
//! or SIGTERM. Everything else is in the library (`restful_server`).

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use restful_server::{cli, serve, shutdown};

#[tokio::main]
async fn main() -> ExitCode {
    // A bad flag ends the process here with clap's message and status 2.
    let args = cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` prints the error and its causes on one line.
            eprintln!("restful-server: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: cli::Args) -> anyhow::Result<()> {
    let config = args.config()?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|err| anyhow::anyhow!(cli::cannot_listen(args.listen, &err)))?;
    let addr = listener
        .local_addr()
        .context("reading the listening address")?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{}", cli::starting_line(addr, &config)).context("writing to stdout")?;
    stdout.flush().context("writing to stdout")?;
    serve(listener, config, shutdown::signal())
        .await
        .context("serving")
}
