//! The `lb` binary: parse the command line, bind, run until Ctrl-C or SIGTERM.

use std::process::ExitCode;

/// jemalloc rather than the system's malloc: with its background thread on (see `main`), memory
/// freed by parked connections (see `accept.rs`) goes back to the system within seconds, where
/// glibc's malloc keeps it for good.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let _ = tikv_jemalloc_ctl::background_thread::write(true);
    let config = match lb::cli::parse(std::env::args_os()) {
        Ok(config) => config,
        Err(lb::cli::CliError::Clap(e)) => e.exit(),
        Err(e) => {
            eprintln!("lb: {e}");
            return ExitCode::from(2);
        }
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .without_time()
        .init();
    // This thread only waits for the stop signal and runs housekeeping; `lb::run` starts one
    // worker thread per core (`--threads`) with an event loop each.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lb: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async {
        lb::print_rules(&config);
        let listener = match lb::accept::bind(config.listen) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("lb: cannot listen on {}: {e} (is another server using it? pick another port with -p)", config.listen);
                return ExitCode::from(1);
            }
        };
        let admin = match config.admin.map(lb::accept::bind).transpose() {
            Ok(admin) => admin,
            Err(e) => {
                let at = config.admin.map(|a| a.to_string()).unwrap_or_default();
                eprintln!("lb: cannot listen on {at} for --admin: {e} (is another server using it? pick another port with --admin)");
                return ExitCode::from(1);
            }
        };
        let addr = listener.local_addr().map_or_else(|_| config.listen.to_string(), |a| a.to_string());
        // Handlers first, then the readiness line: a signal sent right after it stops lb cleanly.
        let stop = lb::shutdown::signal();
        eprintln!("Starting LB on {addr}");
        if let Some(Ok(at)) = admin.as_ref().map(tokio::net::TcpListener::local_addr) {
            eprintln!("Admin on http://{at}/");
        }
        match lb::run_with_admin(listener, admin, config, stop).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("lb: {e}");
                ExitCode::from(1)
            }
        }
    })
}
