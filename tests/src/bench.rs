//! What the benchmarks that run sprig's release binary next to Debian's mosquitto share: finding both
//! binaries, room for thousands of sockets, a broker process's memory as `/proc` reports it, and
//! percentiles.

use std::path::{Path, PathBuf};

/// `SPRIG_BIN` (made absolute), else sprig's release binary, built now through cargo so it is never stale.
pub fn sprig_release_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SPRIG_BIN") {
        // Absolute: the brokers run in directories of their own.
        let bin = PathBuf::from(bin);
        return std::fs::canonicalize(&bin).unwrap_or(bin);
    }
    crate::release_bin().to_owned()
}

/// `MOSQUITTO` if it is a file, else `mosquitto` on `PATH` or in the sbin directories (Debian installs it
/// in `/usr/sbin`, often not on a user's `PATH`).
pub fn find_mosquitto() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("MOSQUITTO") {
        let path = PathBuf::from(path);
        return path.is_file().then_some(path);
    }
    find_program("mosquitto")
}

/// `name` on `PATH`, `/usr/sbin` or `/usr/local/sbin`.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin"])
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file());
    found
}

/// Raises the soft (and if need be the hard) limit of open files to at least `want`; returns the soft
/// limit. Processes started afterwards (the brokers) inherit it.
pub fn raise_nofile(want: u64) -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a properly initialized struct.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        if limit.rlim_cur >= want {
            return limit.rlim_cur;
        }
        let wanted = libc::rlimit {
            rlim_cur: want,
            rlim_max: limit.rlim_max.max(want),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
            // Not allowed to raise the hard limit: take what there is.
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur
    }
}

/// A `kB` field of `/proc/{pid}/status` (`VmRSS:`, `VmHWM:`); `None` once the process is gone.
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Resident memory now (`VmRSS`), in KiB; 0 once the process is gone.
pub fn rss_kb(pid: u32) -> u64 {
    status_kb(pid, "VmRSS:").unwrap_or(0)
}

/// The most resident memory the process has had (`VmHWM`) since it started or since
/// [`reset_peak_rss`], in KiB; 0 once the process is gone.
pub fn peak_rss_kb(pid: u32) -> u64 {
    status_kb(pid, "VmHWM:").unwrap_or(0)
}

/// Starts `VmHWM` again from the current `VmRSS` (`echo 5 > /proc/PID/clear_refs`, Linux 4.0 and later),
/// so a later [`peak_rss_kb`] is the peak of what happened in between. `false` if the kernel refused.
pub fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// Kills a broker the benchmark started and waits for it; if the environment variable `logs_var` names a
/// directory, its log (`log_path`) is kept there as `{label}.log`.
pub fn stop_broker(child: &mut std::process::Child, log_path: &Path, label: &str, logs_var: &str) {
    let _ = child.kill();
    let _ = child.wait();
    if let Some(dir) = std::env::var_os(logs_var) {
        let dir = PathBuf::from(dir);
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::copy(log_path, dir.join(format!("{label}.log")));
    }
}

/// KiB as MiB with one decimal, as the benchmarks' tables print memory.
pub fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// Nearest-rank percentile (`p` in 0..=1) of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// Connects device `id` (anonymous, on loopback), subscribes it to `filter` at QoS 1 and returns the
/// open socket, once both were acknowledged.
pub async fn subscribed_device(
    addr: std::net::SocketAddr,
    id: &str,
    filter: &str,
) -> tokio::net::TcpStream {
    let mut stream = connected(addr, &crate::raw::connect(id, None))
        .await
        .unwrap_or_else(|e| panic!("{id}: {e}"));
    subscribe(&mut stream, &[filter])
        .await
        .unwrap_or_else(|e| panic!("{id}: {e}"));
    stream
}

/// Opens a connection to `addr` (without Nagle's delay: the benchmarks' clients write small packets and
/// wait for answers), sends `connect` (a CONNECT from [`crate::raw`]) and returns the socket once the
/// broker accepted it; `Err` saying why not.
pub async fn connected(
    addr: std::net::SocketAddr,
    connect: &[u8],
) -> std::io::Result<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    stream.write_all(connect).await?;
    let (header, body) = crate::raw::read_packet_async(&mut stream).await?;
    if header != 0x20 || body.get(1) != Some(&0) {
        let refused = format!("CONNACK {header:#04x} {body:?}, not accepted");
        return Err(std::io::Error::other(refused));
    }
    Ok(stream)
}

/// Subscribes to `filters` at QoS 1 and waits for the SUBACK (the next packet: call it before anything
/// else can arrive); `Err` if a filter was refused.
pub async fn subscribe(
    stream: &mut tokio::net::TcpStream,
    filters: &[&str],
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    stream
        .write_all(&crate::raw::subscribe(1, filters, 1))
        .await?;
    let (header, body) = crate::raw::read_packet_async(stream).await?;
    if header != 0x90 || body.len() != 2 + filters.len() || body[2..].iter().any(|&c| c > 2) {
        let refused = format!("SUBACK {header:#04x} {body:?} for {filters:?}");
        return Err(std::io::Error::other(refused));
    }
    Ok(())
}

/// Starts a broker process in `dir`, its output appended to `log`; panics naming `name` if it cannot.
pub fn spawn_broker(
    command: &mut std::process::Command,
    dir: &Path,
    log: std::fs::File,
    name: &str,
) -> std::process::Child {
    command
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.5), Some(100.0));
        assert_eq!(percentile(&values, 0.99), Some(198.0));
        assert_eq!(percentile(&values[..1], 0.99), Some(1.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn this_process_has_a_resident_size_and_a_peak() {
        let pid = std::process::id();
        assert!(rss_kb(pid) > 0);
        assert!(peak_rss_kb(pid) >= rss_kb(pid) / 2);
    }
}
