//! `-D FILE`: a hexdump of every byte that crosses the balancer, on both legs, as the original's
//! debug dump. With `-s` the client leg shows the decrypted bytes.
//!
//! Every read and every write on a socket becomes one chunk: a header line, then the classic
//! layout (offset, 16 bytes in hex, the same bytes as ASCII):
//!
//! ```text
//! 2026-12-01T21:00:00.123456Z conn=1 req=1 127.0.0.1:50312 -> lb 78 bytes
//! 0000  47 45 54 20 2f 20 48 54 54 50 2f 31 2e 31 0d 0a  GET / HTTP/1.1..
//! 0010  48 6f 73 74 3a 20 31 32 37 2e 30 2e 30 2e 31 3a  Host: 127.0.0.1:
//! ...
//! 2026-12-01T21:00:00.123701Z conn=1 req=1 upstream=#1 lb -> 127.0.0.1:8910 121 bytes
//! ```
//!
//! **Invariant:** dumping never blocks the request path. The socket wrapper ([`Tapped`]) copies the
//! bytes into a bounded queue; a writer thread formats and writes them. When the queue is full the
//! chunk is dropped and counted, and the count is reported at exit, as the access log does.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::SystemTime;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::config::LogTarget;
use crate::downstream::ConnInfo;

/// How many chunks may wait for the writer before new ones are dropped.
const QUEUE: usize = 16 * 1024;

/// A cloneable handle for queueing chunks; a no-op when `-D` is off.
#[derive(Debug, Clone, Default)]
pub struct Dump {
    inner: Option<Arc<Inner>>,
}

#[derive(Debug)]
struct Inner {
    tx: SyncSender<Chunk>,
    dropped: AtomicU64,
}

/// One read or write, waiting to be written out.
#[derive(Debug)]
struct Chunk {
    at: SystemTime,
    header: String,
    bytes: Vec<u8>,
}

/// The writer thread; [`DumpWriter::finish`] writes what is queued and stops it.
#[derive(Debug)]
pub struct DumpWriter {
    thread: JoinHandle<io::Result<()>>,
    dump: Dump,
}

impl Dump {
    /// Open `target` and start the writer thread.
    pub fn start(target: &LogTarget) -> io::Result<(Dump, DumpWriter)> {
        let out: Box<dyn Write + Send> = match target {
            LogTarget::Stdout => Box::new(io::stderr()),
            LogTarget::File(path) => {
                Box::new(OpenOptions::new().create(true).append(true).open(path)?)
            }
        };
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("dump".into())
            .spawn(move || write_chunks(rx, out))?;
        let dump = Dump {
            inner: Some(Arc::new(Inner {
                tx,
                dropped: AtomicU64::new(0),
            })),
        };
        Ok((dump.clone(), DumpWriter { thread, dump }))
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    fn send(&self, header: String, bytes: &[u8]) {
        let Some(inner) = &self.inner else { return };
        let chunk = Chunk {
            at: SystemTime::now(),
            header,
            bytes: bytes.to_vec(),
        };
        if inner.tx.try_send(chunk).is_err() {
            inner.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl DumpWriter {
    /// Write out everything queued (once every handle is gone), and say how many chunks were
    /// dropped.
    pub fn finish(self) -> io::Result<u64> {
        let DumpWriter { thread, dump } = self;
        let dropped = dump
            .inner
            .as_ref()
            .map_or(0, |i| i.dropped.load(Ordering::Relaxed));
        drop(dump);
        // The thread ends when the last sender is gone; sockets still open elsewhere hold one,
        // so do not wait for ever.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while !thread.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if thread.is_finished() {
            match thread.join() {
                Ok(result) => result?,
                Err(_) => return Err(io::Error::other("the dump thread panicked")),
            }
        }
        Ok(dropped)
    }
}

fn write_chunks(rx: Receiver<Chunk>, out: Box<dyn Write + Send>) -> io::Result<()> {
    let mut out = io::BufWriter::with_capacity(64 * 1024, out);
    while let Ok(chunk) = rx.recv() {
        let mut next = Some(chunk);
        while let Some(chunk) = next.take() {
            out.write_all(format_chunk(&chunk).as_bytes())?;
            next = rx.try_recv().ok();
        }
        out.flush()?;
    }
    out.flush()
}

fn format_chunk(chunk: &Chunk) -> String {
    let mut text = format!(
        "{} {} {} bytes\n",
        humantime::format_rfc3339_micros(chunk.at),
        chunk.header,
        chunk.bytes.len()
    );
    text.push_str(&hexdump(&chunk.bytes));
    text
}

/// The classic layout: offset, 16 bytes in hex, the same bytes as ASCII (`.` for the rest).
pub fn hexdump(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 4 + 16);
    for (row, line) in bytes.chunks(16).enumerate() {
        out.push_str(&format!("{:04x} ", row * 16));
        for i in 0..16 {
            match line.get(i) {
                Some(b) => out.push_str(&format!(" {b:02x}")),
                None => out.push_str("   "),
            }
        }
        out.push_str("  ");
        out.extend(line.iter().map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        }));
        out.push('\n');
    }
    out
}

/// Which leg a tapped socket is, and how its chunks are labelled.
#[derive(Debug, Clone)]
pub enum Leg {
    /// A client connection (its number, the request in progress on it, the client's address).
    Client(Arc<ConnInfo>),
    /// An upstream connection: its number, the backend, and the client request using it now
    /// (set by the request path each time the connection carries a request).
    Backend {
        id: u64,
        backend: String,
        user: Arc<(AtomicU64, AtomicU64)>,
    },
}

impl Leg {
    /// `conn=1 req=2 127.0.0.1:50312 -> lb`
    fn header(&self, incoming: bool) -> String {
        match self {
            Leg::Client(conn) => {
                // Bytes that arrive while no request is in flight are the next request's head.
                let next = u64::from(incoming && !conn.is_busy());
                let (id, req, peer) = (conn.id, conn.requests() + next, conn.peer);
                if incoming {
                    format!("conn={id} req={req} {peer} -> lb")
                } else {
                    format!("conn={id} req={req} lb -> {peer}")
                }
            }
            Leg::Backend { id, backend, user } => {
                let (conn, req) = (
                    user.0.load(Ordering::Relaxed),
                    user.1.load(Ordering::Relaxed),
                );
                let (from, to) = if incoming {
                    (backend.as_str(), "lb")
                } else {
                    ("lb", backend.as_str())
                };
                format!("conn={conn} req={req} upstream=#{id} {from} -> {to}")
            }
        }
    }
}

/// A socket whose reads and writes are copied to the dump (when there is one).
#[derive(Debug)]
pub struct Tapped<S> {
    inner: S,
    tap: Option<(Dump, Leg)>,
}

impl<S> Tapped<S> {
    /// `inner`, tapped into `dump` if it is enabled.
    pub fn new(inner: S, dump: &Dump, leg: impl FnOnce() -> Leg) -> Self {
        let tap = dump.is_enabled().then(|| (dump.clone(), leg()));
        Tapped { inner, tap }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tapped<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Some((dump, leg)) = &self.tap {
            let read = buf.filled().get(before..).unwrap_or_default();
            if !read.is_empty() {
                dump.send(leg.header(true), read);
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tapped<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if let (Some((dump, leg)), Poll::Ready(Ok(n))) = (&self.tap, &polled) {
            if let Some(written) = data.get(..*n).filter(|w| !w.is_empty()) {
                dump.send(leg.header(false), written);
            }
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let (Some((dump, leg)), Poll::Ready(Ok(n))) = (&self.tap, &polled) {
            let written: Vec<u8> = bufs
                .iter()
                .flat_map(|b| b.iter().copied())
                .take(*n)
                .collect();
            if !written.is_empty() {
                dump.send(leg.header(false), &written);
            }
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hexdump_rows_of_sixteen() {
        let text = hexdump(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "0000  47 45 54 20 2f 20 48 54 54 50 2f 31 2e 31 0d 0a  GET / HTTP/1.1.."
        );
        assert_eq!(
            lines[1],
            "0010  48 6f 73 74 3a 20 78 0d 0a 0d 0a                 Host: x...."
        );
        assert_eq!(lines.len(), 2);
    }
}
