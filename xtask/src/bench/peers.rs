//! The peers lb is measured against: nginx and HAProxy as proxies, wrk as a second load
//! generator. They come from Debian's packages (`--install-peers`); when one is missing, its rows
//! say "not installed" and the bench goes on.
//!
//! Each proxy gets a configuration generated into a temporary directory, listens on a free port
//! of 127.0.0.1, and is tuned the way a careful operator would run it in front of the same
//! backends lb gets: the balancing method asked for ([`Setup::balance`]; round robin in the main
//! scenarios), keep-alive to the backends (HTTP/1.1, connections reused), no access log,
//! `X-Forwarded-For` added as lb adds it, one worker per core.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tests::Proc;

use super::procfs;

/// Where Debian puts daemons: `/usr/sbin` is not on every user's `PATH`.
const EXTRA_DIRS: [&str; 4] = ["/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/local/bin"];

/// The path of `program`, looked up on `PATH` and then in the sbin directories.
pub fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// The first line `program -v` prints (nginx and wrk print it on stderr).
pub fn version(program: &Path) -> String {
    let Ok(out) = Command::new(program).arg("-v").output() else {
        return "unknown".into();
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("unknown")
        .to_string()
}

/// `apt-get update && apt-get install -y nginx-light haproxy wrk` (plain `nginx` where
/// `nginx-light` is gone, as in Debian 13). Needs root and Debian's package manager.
pub fn install() -> Result<()> {
    let apt = find("apt-get").context(
        "--install-peers needs Debian's apt-get; elsewhere install nginx, haproxy and wrk with your package manager",
    )?;
    if !is_root() {
        bail!("--install-peers runs apt-get and needs root: run `sudo apt-get install nginx-light haproxy wrk` instead");
    }
    println!("==> apt-get update");
    run_apt(&apt, &["update"])?;
    let nginx = if apt_knows(&apt, "nginx-light") {
        "nginx-light"
    } else {
        "nginx"
    };
    println!("==> apt-get install -y {nginx} haproxy wrk");
    run_apt(
        &apt,
        &[
            "install",
            "-y",
            "--no-install-recommends",
            nginx,
            "haproxy",
            "wrk",
        ],
    )
}

fn run_apt(apt: &Path, args: &[&str]) -> Result<()> {
    let status = Command::new(apt)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .with_context(|| format!("running apt-get {}", args.join(" ")))?;
    if !status.success() {
        bail!(
            "apt-get {} failed ({status}); see its output above",
            args.join(" ")
        );
    }
    Ok(())
}

/// Does the package index offer `package` (with an installable candidate)?
fn apt_knows(apt: &Path, package: &str) -> bool {
    let cache = apt.with_file_name("apt-cache");
    Command::new(cache)
        .args(["policy", package])
        .output()
        .map(|out| {
            let text = String::from_utf8_lossy(&out.stdout);
            text.lines()
                .any(|l| l.trim().starts_with("Candidate:") && !l.contains("(none)"))
        })
        .unwrap_or(false)
}

/// Is this process running as root? `/proc/self` belongs to the effective user.
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A free port on 127.0.0.1: bind port 0, read what the kernel chose, close it again. Another
/// process could take it in between; on a bench machine that is rare enough to accept.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// What a proxy peer is started for.
pub struct Setup<'a> {
    /// Names the peer in messages (`nginx`, `nginx least_conn`) and, made a file name, its
    /// directory under the bench's temporary one.
    pub label: &'static str,
    pub backends: &'a [SocketAddr],
    /// nginx worker processes, HAProxy threads.
    pub workers: usize,
    /// nginx: the `upstream` block's balancing directive without its `;` (`least_conn`,
    /// `random two least_conn`), empty for nginx's default, round robin. HAProxy: the `balance`
    /// algorithm (`roundrobin`, `leastconn`, `random(2)`).
    pub balance: &'a str,
    /// Terminate TLS on the proxy port with this certificate (plain HTTP without).
    pub tls: Option<&'a TlsFiles>,
    /// Connections the proxy may hold at once: nginx's `worker_connections` (per worker, its
    /// upstream connections included, and one worker may accept all the clients), HAProxy's
    /// `maxconn` (client connections). [`MAX_CONNS`] except in the idle-connection part, which
    /// holds thousands.
    pub max_conns: usize,
    /// How long an idle keep-alive client is kept: nginx's `keepalive_timeout`, HAProxy's
    /// `timeout http-keep-alive`. `None` leaves each proxy's own (nginx 75 s; HAProxy `timeout
    /// client`, 30 s here).
    pub idle_timeout: Option<Duration>,
}

/// The connection limit of the peers in every part but the idle one: far above the 256
/// connections of the busiest load point, and within a 20,000 open-file limit (HAProxy needs
/// about two descriptors per connection).
pub const MAX_CONNS: usize = 4096;

/// One certificate and its key, in the files each proxy wants: nginx a certificate and a key
/// (`ssl_certificate`, `ssl_certificate_key`), HAProxy and lb both in one PEM (`ssl crt`, `-s`).
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub combined: PathBuf,
}

impl Setup<'_> {
    fn dir_name(&self) -> String {
        self.label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect()
    }
}

/// A proxy peer started by the bench: stopped with SIGTERM (then killed) when dropped.
pub struct Peer {
    pub name: &'static str,
    proc: Proc,
    /// Its proxy address.
    pub addr: SocketAddr,
    /// nginx only: the address of the server block that serves a static file.
    pub static_addr: Option<SocketAddr>,
}

impl Peer {
    /// The pid to measure (with its children).
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // A SIGKILLed nginx master leaves its workers running, holding the port; SIGTERM makes
        // the master stop them first. Any worker left over is then killed by its pid.
        let workers = procfs::children(self.proc.pid());
        let _ = self.proc.terminate();
        let _ = self.proc.wait_exit(Duration::from_secs(5));
        for pid in workers {
            if procfs::exists(pid) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
        // Dropping `proc` then kills (if still needed) and reaps the master.
    }
}

/// nginx with one `upstream` of the backends (behind `listen ... ssl` with [`Setup::tls`]), plus
/// a static server block for the loadgen-versus-wrk comparison.
pub fn start_nginx(bin: &Path, dir: &Path, setup: &Setup) -> Result<Peer> {
    let root = dir.join(setup.dir_name());
    let docroot = root.join("static");
    std::fs::create_dir_all(&docroot).with_context(|| format!("creating {}", docroot.display()))?;
    std::fs::write(docroot.join("index.html"), static_page())?;
    // Workers drop root for `nobody`: they must be able to read the static file.
    make_world_readable(dir)?;

    let port = free_port()?;
    let static_port = free_port()?;
    let servers: String = setup
        .backends
        .iter()
        .map(|b| format!("        server {b};\n"))
        .collect();
    // Each nginx worker keeps its own counts of requests in flight unless the upstream has a
    // shared memory zone; with one, least_conn sees all workers' requests, as lb's counters do
    // across its threads. Round robin (the main scenarios) runs as nginx's default, without.
    let balance = match setup.balance {
        "" => String::new(),
        method => format!("        {method};\n        zone backends 64k;\n"),
    };
    // With TLS: the same location behind `listen ... ssl`, TLS 1.2 and 1.3 as lb speaks them.
    let tls = match setup.tls {
        None => String::new(),
        Some(files) => format!(
            " ssl;\n        ssl_certificate {};\n        ssl_certificate_key {};\n        \
             ssl_protocols TLSv1.2 TLSv1.3",
            files.cert.display(),
            files.key.display()
        ),
    };
    // Each connection is an open file: nginx inherits the bench's open-file limit, which the
    // idle part raises.
    let (workers, worker_connections) = (setup.workers, setup.max_conns);
    let keepalive_timeout = setup.idle_timeout.map_or_else(String::new, |t| {
        format!("    keepalive_timeout {}s;\n", t.as_secs())
    });
    let root_text = root.display();
    let conf = format!(
        "# Generated by `cargo xtask bench`.
worker_processes {workers};
pid {root_text}/nginx.pid;
error_log {root_text}/error.log warn;
events {{
    worker_connections {worker_connections};
}}
http {{
    access_log off;
    client_body_temp_path {root_text}/client_body;
    proxy_temp_path {root_text}/proxy;
    # Like lb and HAProxy, never close a busy client connection after N requests.
    keepalive_requests 1000000;
{keepalive_timeout}    upstream backends {{
{balance}{servers}        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port}{tls};
        location / {{
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
    server {{
        listen 127.0.0.1:{static_port};
        root {docroot};
    }}
}}
",
        docroot = docroot.display()
    );
    let conf_path = root.join("nginx.conf");
    std::fs::write(&conf_path, conf).with_context(|| format!("writing {}", conf_path.display()))?;
    let args = [
        "-p",
        &root_text.to_string(),
        "-e",
        &format!("{root_text}/error.log"),
        "-c",
        &conf_path.display().to_string(),
        "-g",
        "daemon off;",
    ]
    .map(|s| s.to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let proc = Proc::spawn(bin, &args)?;
    let mut peer = Peer {
        name: setup.label,
        proc,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        static_addr: Some(SocketAddr::from(([127, 0, 0, 1], static_port))),
    };
    wait_listening(&mut peer, &[port, static_port], &root.join("error.log"))?;
    Ok(peer)
}

/// HAProxy in HTTP mode: `balance` as asked (`roundrobin` in the main scenarios),
/// `http-reuse always`, `option forwardfor`; `ssl crt` on the bind line with [`Setup::tls`].
pub fn start_haproxy(bin: &Path, dir: &Path, setup: &Setup) -> Result<Peer> {
    let root = dir.join(setup.dir_name());
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let port = free_port()?;
    let servers: String = setup
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("    server b{} {b}\n", i + 1))
        .collect();
    let (threads, balance, max_conns) = (setup.workers, setup.balance, setup.max_conns);
    let tls = setup.tls.map_or_else(String::new, |files| {
        format!(" ssl crt {} alpn http/1.1", files.combined.display())
    });
    let keep_alive = setup.idle_timeout.map_or_else(String::new, |t| {
        format!("    timeout http-keep-alive {}s\n", t.as_secs())
    });
    let conf = format!(
        "# Generated by `cargo xtask bench`.
global
    nbthread {threads}
    maxconn {max_conns}
    # HAProxy sizes its open-file limit for two descriptors per connection and, by default
    # (strict-limits), refuses to start when the hard limit is lower. The idle part holds
    # thousands of client connections but few to the backends: one descriptor each is enough,
    # so a warning will do.
    no strict-limits

defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
{keep_alive}    option http-keep-alive

frontend bench
    bind 127.0.0.1:{port}{tls}
    maxconn {max_conns}
    default_backend backends

backend backends
    balance {balance}
    http-reuse always
    option forwardfor
{servers}"
    );
    let conf_path = root.join("haproxy.cfg");
    std::fs::write(&conf_path, conf).with_context(|| format!("writing {}", conf_path.display()))?;
    let conf_text = conf_path.display().to_string();
    let proc = Proc::spawn(bin, &["-f", &conf_text, "-db"])?;
    let mut peer = Peer {
        name: setup.label,
        proc,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        static_addr: None,
    };
    wait_listening(&mut peer, &[port], &conf_path)?;
    Ok(peer)
}

/// Wait until every port accepts connections; fail with the peer's output if it exits first.
fn wait_listening(peer: &mut Peer, ports: &[u16], look_at: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    for &port in ports {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            let exited = procfs::stat(peer.pid()).map_or(true, |s| s.state == 'Z');
            if exited || Instant::now() >= deadline {
                let log = std::fs::read_to_string(look_at).unwrap_or_default();
                bail!(
                    "{} did not start listening on {addr} (see {}):\n{log}\n{}",
                    peer.name,
                    look_at.display(),
                    peer.proc.transcript()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// A small static page (about the size of the backends' index page) for nginx to serve.
fn static_page() -> String {
    let mut page = String::from("<!doctype html>\n<html><head><title>bench</title></head><body>\n");
    while page.len() < 2000 {
        page.push_str("<p>A static page served by nginx for the loadgen/wrk comparison.</p>\n");
    }
    page.push_str("</body></html>\n");
    page
}

/// `chmod a+rX` on `dir` and everything under it.
fn make_world_readable(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    let mode = if meta.is_dir() { 0o755 } else { 0o644 };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", dir.display()))?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir)? {
            make_world_readable(&entry?.path())?;
        }
    }
    Ok(())
}
