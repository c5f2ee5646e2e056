//! `cargo xtask <task>`: project tasks written in Rust instead of shell scripts.
//!
//! - `cargo xtask demo`: the original article's walkthrough, run and checked end to end;
//! - `cargo xtask bench`: lb beside nginx and HAProxy, loadgen beside wrk, what lb's `--admin`
//!   costs while watched, every balancing strategy in front of one slow backend, and the memory
//!   of idle keep-alive connections.
//!
//! The `xtask` alias lives in `.cargo/config.toml`; processes are started through the `tests`
//! crate's harness, which kills every child when it is dropped.

mod bench;
mod demo;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Start two restful-servers and lb on the walkthrough's ports, send traffic, check the round robin.
    Demo(demo::Args),
    /// Measure lb beside nginx and HAProxy, loadgen beside wrk, lb with and without --admin, the
    /// balancing strategies with one slow backend, and idle connections' memory; writes
    /// target/bench/report.md.
    Bench(bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Demo(args) => demo::run(args),
        Task::Bench(args) => bench::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
