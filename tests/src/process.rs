//! [`Proc`]: a child process that is killed when dropped, whose output is read line by line by
//! background threads, so that a test (or `cargo xtask`) can wait for a readiness line, and whose
//! [`Proc::transcript`] says what went wrong: the command line, the exit status if it has exited,
//! and the last lines it printed (ripgrep's habit: a failing test shows the process's own words).

use std::collections::VecDeque;
use std::fmt::Display;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How many of the last lines of each stream a transcript shows.
const TRANSCRIPT_LINES: usize = 40;

/// Lines read from one of a child's output streams, by a background thread.
struct Lines {
    rx: Receiver<String>,
    /// Every line received so far, in order.
    seen: Vec<String>,
    /// How many of `seen` [`Lines::next`] has handed out.
    taken: usize,
    /// The stream has ended (the process closed it, usually by exiting).
    ended: bool,
}

impl Lines {
    fn new(stream: impl Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Bytes, not `lines()`: a line that is not UTF-8 must not stop the reading, or the
            // child would block on a full pipe.
            let mut reader = BufReader::new(stream);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line);
                        if tx
                            .send(text.trim_end_matches(['\n', '\r']).to_string())
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
            taken: 0,
            ended: false,
        }
    }

    /// Receive one more line, waiting at most `timeout`; false if none came (or the stream ended).
    fn receive(&mut self, timeout: Duration) -> bool {
        if self.ended {
            return false;
        }
        match self.rx.recv_timeout(timeout) {
            Ok(line) => {
                self.seen.push(line);
                true
            }
            Err(RecvTimeoutError::Disconnected) => {
                self.ended = true;
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
        }
    }

    /// Take in every line already read.
    fn drain(&mut self) {
        while self.receive(Duration::ZERO) {}
    }

    /// Wait until the stream ends (the reader thread has read everything), at most `timeout`.
    fn finish(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.ended {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return;
            };
            self.receive(left);
        }
    }

    /// The next line not yet handed out, if one arrives within `timeout`.
    fn next(&mut self, timeout: Duration) -> Option<String> {
        if self.taken == self.seen.len() && !self.receive(timeout) {
            return None;
        }
        self.taken += 1;
        Some(self.seen[self.taken - 1].clone())
    }

    /// The first line (already seen or arriving within `timeout`) that `matches`; it and the
    /// lines before it count as handed out by [`Lines::next`].
    fn wait_for(&mut self, timeout: Duration, matches: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut at = self.seen.iter().position(|l| matches(l));
        while at.is_none() {
            let left = deadline.checked_duration_since(Instant::now())?;
            if !self.receive(left) {
                return None;
            }
            if matches(&self.seen[self.seen.len() - 1]) {
                at = Some(self.seen.len() - 1);
            }
        }
        let at = at?;
        self.taken = self.taken.max(at + 1);
        Some(self.seen[at].clone())
    }

    /// The last [`TRANSCRIPT_LINES`] lines, with a note of how many came before.
    fn tail(&self) -> String {
        let skip = self.seen.len().saturating_sub(TRANSCRIPT_LINES);
        let mut shown: VecDeque<&str> = self.seen[skip..].iter().map(String::as_str).collect();
        let note = format!("[... {skip} earlier lines ...]");
        if skip > 0 {
            shown.push_front(&note);
        }
        Vec::from(shown).join("\n")
    }
}

/// A running child process that is killed when dropped.
pub struct Proc {
    /// The command line as a person would type it (the program without its directory).
    command: String,
    /// The same with the program's full path, for failure reports.
    full_command: String,
    child: std::process::Child,
    stdout: Lines,
    stderr: Lines,
    /// Set once the child has been seen to exit.
    exit: Option<ExitStatus>,
}

impl std::fmt::Debug for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Proc({})", self.command)
    }
}

impl Proc {
    /// Start `program args...` with piped stdout and stderr (and no stdin).
    pub fn spawn(program: &Path, args: &[&str]) -> Result<Proc> {
        let full_command = format!("{} {}", program.display(), args.join(" "));
        let name = program.file_name().map_or_else(
            || program.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let command = format!("{name} {}", args.join(" "));
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {full_command}"))?;
        let stdout = Lines::new(child.stdout.take().context("no stdout")?);
        let stderr = Lines::new(child.stderr.take().context("no stderr")?);
        Ok(Proc {
            command,
            full_command,
            child,
            stdout,
            stderr,
            exit: None,
        })
    }

    /// The command line as typed (the program's name without its directory).
    pub fn command(&self) -> &str {
        &self.command
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the process has exited.
    fn exited(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Why a wait for `what` came to nothing: the process exited, or it is still running.
    fn no_line(&mut self, what: &str, stream: &str, timeout: Duration) -> anyhow::Error {
        // A stream that ended usually means the process exited: give it a moment to be reaped.
        if self.stdout.ended || self.stderr.ended {
            let deadline = Instant::now() + Duration::from_millis(500);
            while self.exited().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        match self.exited() {
            Some(status) => anyhow::anyhow!(
                "the process exited ({status}) before printing {what} on {stream}\n{}",
                self.transcript()
            ),
            None => anyhow::anyhow!(
                "{what} not printed on {stream} within {timeout:?}\n{}",
                self.transcript()
            ),
        }
    }

    /// Wait for a stdout line containing `needle` (lines already printed count too);
    /// [`Proc::next_stdout`] goes on after it.
    pub fn wait_stdout(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        match self.stdout.wait_for(timeout, |l| l.contains(needle)) {
            Some(line) => Ok(line),
            None => Err(self.no_line(&format!("a line containing {needle:?}"), "stdout", timeout)),
        }
    }

    /// Wait for a stderr line containing `needle` (lines already printed count too).
    pub fn wait_stderr(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        match self.stderr.wait_for(timeout, |l| l.contains(needle)) {
            Some(line) => Ok(line),
            None => Err(self.no_line(&format!("a line containing {needle:?}"), "stderr", timeout)),
        }
    }

    /// Wait until stdout holds at least `n` lines, and return them all.
    pub fn wait_stdout_lines(&mut self, n: usize, timeout: Duration) -> Result<Vec<String>> {
        let deadline = Instant::now() + timeout;
        while self.stdout.seen.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.stdout.receive(left) {
                let what = format!("{n} lines (only {} so far)", self.stdout.seen.len());
                return Err(self.no_line(&what, "stdout", timeout));
            }
        }
        Ok(self.stdout.seen.clone())
    }

    /// The next stdout line not yet taken by this method, if one arrives within `timeout`.
    pub fn next_stdout(&mut self, timeout: Duration) -> Option<String> {
        self.stdout.next(timeout)
    }

    /// Every stdout line received so far.
    pub fn stdout_lines(&mut self) -> &[String] {
        self.stdout.drain();
        &self.stdout.seen
    }

    /// Every stderr line received so far.
    pub fn stderr_lines(&mut self) -> &[String] {
        self.stderr.drain();
        &self.stderr.seen
    }

    /// Send a signal by name (`"TERM"`, `"INT"`, `"KILL"`) with kill(1): the workspace forbids
    /// the unsafe code a direct `libc::kill` would need.
    pub fn signal(&self, name: &str) -> Result<()> {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.pid().to_string()])
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill -{name} {} failed ({status})", self.pid());
        }
        Ok(())
    }

    /// Ask the process to stop, as a service manager would (SIGTERM).
    pub fn terminate(&self) -> Result<()> {
        self.signal("TERM")
    }

    /// Wait for the process to exit, then for its output to be read to the end.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                self.stdout.finish(Duration::from_secs(2));
                self.stderr.finish(Duration::from_secs(2));
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("still running after {timeout:?}\n{}", self.transcript());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The command, whether it has exited, and the last lines it printed, for failure messages.
    pub fn transcript(&mut self) -> String {
        self.stdout.drain();
        self.stderr.drain();
        let state = match self.exited() {
            Some(status) => format!("exited: {status}"),
            None => "still running".to_string(),
        };
        format!(
            "--- command: {}\n--- {state}\n--- stdout:\n{}\n--- stderr:\n{}\n---",
            self.full_command,
            self.stdout.tail(),
            self.stderr.tail()
        )
    }

    /// Panic with `message` and the [`transcript`](Proc::transcript).
    #[track_caller]
    pub fn fail(&mut self, message: impl Display) -> ! {
        panic!("{message}\n{}", self.transcript())
    }

    /// Fail (with the transcript) unless `ok`.
    #[track_caller]
    pub fn check(&mut self, ok: bool, message: impl Display) {
        if !ok {
            self.fail(message);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    //! A failing wait explains itself: the command line, whether the process exited, and its
    //! last lines.

    use super::*;

    fn sh(script: &str) -> Proc {
        Proc::spawn(Path::new("/bin/sh"), &["-c", script]).unwrap()
    }

    #[test]
    fn a_process_that_exits_before_its_line_is_reported_with_its_stderr() {
        let mut proc = sh("echo starting; echo 'cannot listen on 127.0.0.1:80' >&2; exit 3");
        let error = proc
            .wait_stderr("Starting LB on ", Duration::from_secs(10))
            .unwrap_err()
            .to_string();
        for needle in [
            "exited (exit status: 3) before printing a line containing \"Starting LB on \"",
            "--- command: /bin/sh -c echo starting;",
            "--- stdout:\nstarting\n",
            "--- stderr:\ncannot listen on 127.0.0.1:80\n",
        ] {
            assert!(error.contains(needle), "{needle:?} not in:\n{error}");
        }
    }

    #[test]
    fn a_line_that_never_comes_is_reported_with_what_was_printed() {
        let mut proc = sh("echo 'still thinking' >&2; sleep 10");
        let error = proc
            .wait_stderr("Starting LB on ", Duration::from_millis(200))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(
                "a line containing \"Starting LB on \" not printed on stderr within 200ms"
            ),
            "{error}"
        );
        assert!(error.contains("--- still running"), "{error}");
        assert!(error.contains("still thinking"), "{error}");
    }

    #[test]
    fn a_transcript_shows_the_last_lines_only() {
        let mut proc = sh("seq 1 100 >&2");
        proc.wait_exit(Duration::from_secs(10)).unwrap();
        let transcript = proc.transcript();
        assert!(
            transcript.contains("[... 60 earlier lines ...]\n61\n"),
            "{transcript}"
        );
        assert!(transcript.ends_with("100\n---"), "{transcript}");
    }

    #[test]
    fn next_stdout_goes_on_after_the_line_waited_for() {
        let mut proc = sh("echo one; echo ready; echo two");
        proc.wait_stdout("ready", Duration::from_secs(10)).unwrap();
        assert_eq!(
            proc.next_stdout(Duration::from_secs(10)).as_deref(),
            Some("two")
        );
    }
}
