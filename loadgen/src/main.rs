//! The `loadgen` command: parse the arguments, start a small single-threaded runtime, and hand
//! over to the library (`loadgen::cli::execute`), which prints the report and picks the exit code
//! (0 pass, 1 fail, 2 usage error: clap's, or `Cli::validate`'s). The traffic itself runs on threads of its own that
//! `loadgen::run` starts (one per core, or `--threads`), so this runtime only waits for them.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = loadgen::cli::Cli::parse();
    if let Err(usage) = cli.validate() {
        usage.exit();
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let result = match runtime {
        Ok(runtime) => runtime.block_on(loadgen::cli::execute(cli)),
        Err(e) => Err(anyhow::Error::new(e).context("cannot start the tokio runtime")),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}
