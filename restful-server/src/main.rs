//! The `restful-server` binary: parse flags, bind, print the "Starting" line, serve until Ctrl-C
//! or SIGTERM. Everything else is in the library (`restful_server`).

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use restful_server::{cli, serve_with_delay, shutdown};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let args = cli::parse(); // A bad flag exits here, with status 2.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Err(err) = run(args).await {
        eprintln!("restful-server: {err:#}"); // `{:#}`: the error and its causes on one line.
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

async fn run(args: cli::Args) -> anyhow::Result<()> {
    let config = args.config()?;
    let listener = restful_server::bind(args.listen)
        .map_err(|err| anyhow::anyhow!(cli::cannot_listen(args.listen, &err)))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    // Signal handlers go in before the line: whoever reads it may send SIGTERM at once.
    let stop = shutdown::signal();
    let mut stdout = std::io::stdout();
    let delay = args.delay();
    writeln!(stdout, "{}", cli::starting_line(addr, &config, delay))
        .context("writing to stdout")?;
    stdout.flush().context("writing to stdout")?;
    serve_with_delay(listener, config, delay, stop)
        .await
        .context("serving")
}
