//! What the kernel knows about a running process: the CPU time it has used and its peak memory,
//! read from `/proc`. The bench charges each proxy (and each load generator) with these numbers.
//!
//! - CPU: `utime` and `stime`, fields 14 and 15 of `/proc/PID/stat`, counted in clock ticks
//!   (`getconf CLK_TCK`, 100 per second on Linux): the time spent running the program's own code
//!   (user) and the time the kernel spent on its behalf (system calls, here mostly loopback TCP).
//!   The process-level file covers every thread, live or already exited, so a multi-threaded
//!   proxy is charged in full. The kernel samples which of the two a tick belongs to, so the split
//!   is exact only over many ticks: a run of a few seconds gives hundreds.
//! - Peak memory: `VmHWM` ("high water mark" of the resident set) in `/proc/PID/status`. Writing
//!   `5` to `/proc/PID/clear_refs` resets it to the current RSS (Linux >= 4.0), which lets one
//!   long-lived proxy report a peak *per load point* instead of one peak since it started.
//! - Current memory: `VmRSS` in the same file, what the idle-connection part reads before and
//!   after opening its connections.
//! - This process's open-file limit (`/proc/self/limits`) and open descriptors
//!   (`/proc/self/fd`): how many connections the idle-connection part can hold.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

/// Clock ticks per second of the CPU fields in `/proc/PID/stat`: `getconf CLK_TCK`, asked once,
/// or 100 (the value Linux has used for `USER_HZ` on every architecture we know) if that fails.
pub fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .filter(|&hz| hz > 0)
        .unwrap_or(100)
}

/// The few fields of `/proc/PID/stat` the bench needs.
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    /// `R`, `S`, ..., `Z` for a zombie: exited, not yet reaped by its parent.
    pub state: char,
    pub ppid: u32,
    /// CPU time spent in user space, in clock ticks.
    pub utime: u64,
    /// CPU time the kernel spent on the process's behalf, in clock ticks.
    pub stime: u64,
}

impl Stat {
    /// `utime + stime`, in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        self.utime + self.stime
    }
}

/// Read `/proc/PID/stat`.
pub fn stat(pid: u32) -> Result<Stat> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_stat(&text).with_context(|| format!("parsing {path}: {text:?}"))
}

/// Field 2 is the command name in parentheses and may itself contain spaces and `)`, so the
/// numbered fields are counted from the *last* `)`: field 3 (state) is the first word after it.
fn parse_stat(text: &str) -> Result<Stat> {
    let (_, rest) = text
        .rsplit_once(')')
        .context("no `)` after the command name")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3; field N is fields[N - 3].
    let field = |n: usize| -> Result<&str> {
        fields
            .get(n - 3)
            .copied()
            .with_context(|| format!("field {n} missing"))
    };
    let state = field(3)?.chars().next().context("empty state")?;
    let ppid = field(4)?.parse().context("field 4 (ppid)")?;
    let utime = field(14)?.parse().context("field 14 (utime)")?;
    let stime = field(15)?.parse().context("field 15 (stime)")?;
    Ok(Stat {
        state,
        ppid,
        utime,
        stime,
    })
}

/// The direct children of `pid` (e.g. nginx's workers under its master), found by scanning the
/// parent pid of every process in `/proc`.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut kids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| stat(p).is_ok_and(|s| s.ppid == pid))
        .collect();
    kids.sort_unstable();
    kids
}

/// `pid` and its direct children: the processes one proxy is made of.
pub fn process_group(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    pids.extend(children(pid));
    pids
}

/// Converts clock ticks into time.
pub fn ticks_to_duration(ticks: u64, hz: u64) -> Duration {
    Duration::from_secs_f64(ticks as f64 / hz.max(1) as f64)
}

/// Reset the peak RSS of `pid` to its current RSS. Returns false where the kernel refuses.
pub fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// The peak resident set (`VmHWM`) of `pid`, in bytes.
pub fn peak_rss(pid: u32) -> Result<u64> {
    status_bytes(pid, "VmHWM")
}

/// The resident set (`VmRSS`) of `pid` now, in bytes.
pub fn rss(pid: u32) -> Result<u64> {
    status_bytes(pid, "VmRSS")
}

/// The current resident set of `pid` and its direct children, summed (nginx: master and
/// workers). Pages the processes share are counted once per process; the bench only ever
/// subtracts two such sums, where they cancel out.
pub fn group_rss(pid: u32) -> Result<u64> {
    let mut total = 0;
    for p in process_group(pid) {
        total +=
            rss(p).with_context(|| format!("process {p} of a proxy is gone: did it crash?"))?;
    }
    Ok(total)
}

/// A `NAME:   1234 kB` line of `/proc/PID/status`, in bytes.
fn status_bytes(pid: u32, name: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_status_kib(&text, name)
        .map(|kib| kib * 1024)
        .with_context(|| format!("no {name} in {path}"))
}

fn parse_status_kib(status: &str, name: &str) -> Option<u64> {
    let line = status
        .lines()
        .find(|l| l.split_once(':').is_some_and(|(key, _)| key == name))?;
    let (_, value) = line.split_once(':')?;
    value.trim().trim_end_matches("kB").trim().parse().ok()
}

/// What one proxy used during one measurement.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Usage {
    /// CPU time in user space of all its processes (in JSON: seconds).
    #[serde(serialize_with = "super::report::secs::serialize")]
    pub user: Duration,
    /// CPU time the kernel spent for all its processes (in JSON: seconds).
    #[serde(serialize_with = "super::report::secs::serialize")]
    pub system: Duration,
    /// The sum of its processes' peak RSS, in bytes.
    pub peak_rss: u64,
    /// False if the peak could not be reset first (then it is the peak since the proxy started).
    pub peak_is_per_run: bool,
}

impl Usage {
    /// User and system CPU time together.
    pub fn cpu(&self) -> Duration {
        self.user + self.system
    }
}

/// Measures one proxy across one run: [`Meter::start`] before, [`Meter::finish`] after.
#[derive(Debug)]
pub struct Meter {
    pids: Vec<u32>,
    /// (utime, stime) summed over `pids` at the start.
    ticks_before: (u64, u64),
    hz: u64,
    peak_is_per_run: bool,
}

impl Meter {
    /// Reset the peaks and note the CPU used so far by `pid` and its children.
    pub fn start(pid: u32, hz: u64) -> Result<Meter> {
        let pids = process_group(pid);
        let mut peak_is_per_run = true;
        for &p in &pids {
            peak_is_per_run &= reset_peak_rss(p);
        }
        let ticks_before = total_ticks(&pids)?;
        Ok(Meter {
            pids,
            ticks_before,
            hz,
            peak_is_per_run,
        })
    }

    pub fn finish(self) -> Result<Usage> {
        let (user, system) = total_ticks(&self.pids)?;
        let (user_before, system_before) = self.ticks_before;
        let mut peak_rss = 0;
        for &p in &self.pids {
            peak_rss += peak_rss_or_zero(p);
        }
        Ok(Usage {
            user: ticks_to_duration(user.saturating_sub(user_before), self.hz),
            system: ticks_to_duration(system.saturating_sub(system_before), self.hz),
            peak_rss,
            peak_is_per_run: self.peak_is_per_run,
        })
    }
}

/// (utime, stime) summed over `pids`, in clock ticks.
fn total_ticks(pids: &[u32]) -> Result<(u64, u64)> {
    let (mut user, mut system) = (0, 0);
    for &p in pids {
        let s =
            stat(p).with_context(|| format!("process {p} of a proxy is gone: did it crash?"))?;
        user += s.utime;
        system += s.stime;
    }
    Ok((user, system))
}

fn peak_rss_or_zero(pid: u32) -> u64 {
    peak_rss(pid).unwrap_or(0)
}

/// An unlimited resource limit, as [`open_files_limit`] returns it.
pub const UNLIMITED: u64 = u64::MAX;

/// This process's open-file limit (`RLIMIT_NOFILE`), soft and hard, from `/proc/self/limits`.
pub fn open_files_limit() -> Option<(u64, u64)> {
    parse_open_files_limit(&std::fs::read_to_string("/proc/self/limits").ok()?)
}

/// How many more files this process may open: its soft open-file limit less the descriptors
/// it has open (the entries of `/proc/self/fd`).
pub fn free_descriptors() -> Option<usize> {
    let (soft, _) = open_files_limit()?;
    let open = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(usize::try_from(soft.saturating_sub(open)).unwrap_or(usize::MAX))
}

/// The `Max open files   SOFT   HARD   files` line; `unlimited` is [`UNLIMITED`].
fn parse_open_files_limit(limits: &str) -> Option<(u64, u64)> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut values = line["Max open files".len()..].split_whitespace().map(|v| {
        if v == "unlimited" {
            Some(UNLIMITED)
        } else {
            v.parse().ok()
        }
    });
    Some((values.next()??, values.next()??))
}

/// How busy all CPUs were over `window` (0.0 idle .. 1.0 saturated), from `/proc/stat`.
pub fn machine_busy(window: Duration) -> Option<f64> {
    let (busy0, total0) = cpu_line()?;
    std::thread::sleep(window);
    let (busy1, total1) = cpu_line()?;
    let total = total1.checked_sub(total0)?;
    (total > 0).then(|| busy1.saturating_sub(busy0) as f64 / total as f64)
}

/// (busy, total) jiffies of the first `cpu` line: idle and iowait are not busy.
fn cpu_line() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal; guest time that follows is already
    // counted in user and nice.
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// How much of the machine *other* processes used during a run: the CPU time all CPUs were busy
/// (`/proc/stat`) minus what the bench's own processes used. On a shared machine this says how
/// far a run can be trusted.
#[derive(Debug)]
pub struct OtherLoad {
    busy: u64,
    total: u64,
    ours: u64,
    pids: Vec<u32>,
}

impl OtherLoad {
    /// Start counting; `pids` are the bench's long-lived processes (backends, the proxy and its
    /// children). The client's CPU is added at [`OtherLoad::finish`].
    pub fn start(pids: Vec<u32>) -> Option<OtherLoad> {
        let (busy, total) = cpu_line()?;
        let ours = pids
            .iter()
            .filter_map(|&p| stat(p).ok())
            .map(|s| s.cpu_ticks())
            .sum();
        Some(OtherLoad {
            busy,
            total,
            ours,
            pids,
        })
    }

    /// The fraction (0..1) of all CPUs' time that other processes used since [`OtherLoad::start`].
    pub fn finish(self, client_cpu: Duration, hz: u64) -> Option<f64> {
        let (busy, total) = cpu_line()?;
        let ours: u64 = self
            .pids
            .iter()
            .filter_map(|&p| stat(p).ok())
            .map(|s| s.cpu_ticks())
            .sum();
        let ours = ours.saturating_sub(self.ours) as f64 + client_cpu.as_secs_f64() * hz as f64;
        let busy = busy.saturating_sub(self.busy) as f64;
        let total = total.checked_sub(self.total).filter(|&t| t > 0)? as f64;
        Some(((busy - ours) / total).clamp(0.0, 1.0))
    }
}

/// The 1-, 5- and 15-minute load averages, as `/proc/loadavg` prints them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Does `/proc/PID` exist (a running or zombie process)?
pub fn exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let line =
            "4242 (nginx: a (b) c) S 17 4242 4242 0 -1 4194624 100 0 0 0 250 31 0 0 20 0 1 0 \
                    123 4096 200 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 17);
        assert_eq!((s.utime, s.stime), (250, 31));
        assert_eq!(s.cpu_ticks(), 281);
    }

    #[test]
    fn status_lines_are_found_by_their_whole_name() {
        let status = "Name:\tnginx\nVmHWM:\t   9000 kB\nVmRSS:\t   8192 kB\nRssAnon:\t 100 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(8192));
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(9000));
        assert_eq!(parse_status_kib(status, "Rss"), None);
    }

    #[test]
    fn the_open_files_line_is_found_among_the_limits() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             95859                95859                processes \n\
                      Max open files            1024                 524288               files     \n\
                      Max locked memory         8388608              unlimited            bytes     \n";
        assert_eq!(parse_open_files_limit(limits), Some((1024, 524_288)));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(
            parse_open_files_limit(unlimited),
            Some((UNLIMITED, UNLIMITED))
        );
        assert_eq!(
            parse_open_files_limit("Max processes 1 1 processes\n"),
            None
        );
        assert!(open_files_limit().is_some_and(|(soft, hard)| soft > 0 && soft <= hard));
        assert!(free_descriptors().is_some_and(|free| free > 0));
    }

    #[test]
    fn our_own_process_can_be_read() {
        let me = std::process::id();
        assert!(stat(me).is_ok());
        assert!(peak_rss(me).unwrap() > 0);
        assert!(rss(me).unwrap() > 0);
    }
}
