//! What `/proc` says about a process and its children (the gateway and its plugin hosts): ids, states,
//! command lines and CPU time. Linux only, like the gateway's process isolation.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// One process, from `/proc/PID/stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub pid: u32,
    pub parent: u32,
    /// `R` running, `S` sleeping, `Z` zombie (dead, not reaped), …
    pub state: char,
    /// User and system CPU time, in clock ticks.
    pub cpu_ticks: u64,
}

/// The process `pid`, if it exists (a zombie does).
pub fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything: the fields follow the last `)`.
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let number = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some(Stat {
        pid,
        state: fields.first()?.chars().next()?,
        parent: number(1)? as u32,
        // Fields 14 and 15 of the file (utime, stime), counted from 1 with pid and comm.
        cpu_ticks: number(11)? + number(12)?,
    })
}

/// Bytes `pid` has caused to be written to storage so far (`write_bytes` of `/proc/PID/io`: counted when
/// it dirties a page of a file, so a rewrite of a page not yet written back counts once, and a tmpfs
/// counts nothing). `None` once the process is gone, or where `/proc/PID/io` may not be read.
pub fn write_bytes(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|line| line.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// [`write_bytes`] of `pid` once it has stopped moving: polled every 100 ms until it has not changed for
/// `quiet`, for at most `within` (then `settled` is false: something kept writing). The gateway writes
/// behind its requests (sled's flush every half second, the manifest after it, the spool's fsync), so a
/// measurement reads the counter once those have run, not after a fixed sleep.
pub fn settled_write_bytes(pid: u32, quiet: Duration, within: Duration) -> Settled {
    let started = Instant::now();
    let mut bytes = write_bytes(pid).unwrap_or(0);
    let mut since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = write_bytes(pid).unwrap_or(bytes);
        if now != bytes {
            bytes = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return Settled {
                bytes,
                settled: true,
            };
        }
        if started.elapsed() >= within {
            return Settled {
                bytes,
                settled: false,
            };
        }
    }
}

/// What [`settled_write_bytes`] read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    pub bytes: u64,
    /// The counter stood still for the whole quiet window.
    pub settled: bool,
}

/// Whether `pid` is a live process: it exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    stat(pid).is_some_and(|s| s.state != 'Z')
}

/// The children of `pid`, zombies included.
pub fn children(pid: u32) -> Vec<Stat> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(stat)
        .filter(|s| s.parent == pid)
        .collect()
}

/// The command line of `pid`, arguments joined by spaces.
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|&b| b == 0)
                .map(|arg| String::from_utf8_lossy(arg).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
                .trim_end()
                .to_owned()
        })
        .unwrap_or_default()
}

/// Clock ticks per second, the unit of [`Stat::cpu_ticks`].
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// The CPU that `pid` and its live children use over `window`, as a fraction of one core (`1.0`: one core
/// busy throughout). A child that ends during the window counts for nothing.
pub fn cpu_share(pid: u32, window: Duration) -> f64 {
    let sample = || -> HashMap<u32, u64> {
        stat(pid)
            .into_iter()
            .chain(children(pid))
            .map(|s| (s.pid, s.cpu_ticks))
            .collect()
    };
    let before = sample();
    let started = Instant::now();
    std::thread::sleep(window);
    let after = sample();
    let elapsed = started.elapsed().as_secs_f64();
    let used: u64 = after
        .iter()
        .filter_map(|(pid, ticks)| Some(ticks.saturating_sub(*before.get(pid)?)))
        .sum();
    used as f64 / ticks_per_second() as f64 / elapsed
}
