//! The gateway's memory across cycles of connecting then disconnecting the same client ids: after each
//! cycle, what the release `sprig` keeps resident. Memory that grows from cycle to cycle is held per
//! connection and never given back (it once was: glibc's heap fragmented, and the router kept each link's
//! name); memory that levels off after the first cycle is the price of having had that many connections.
//!
//! Each device is a raw MQTT 3.1.1 client (client id = thing name, anonymous on loopback) that subscribes
//! to its namespaced job notifications, as the fan-out benchmark's devices do; a cycle connects them all,
//! then they leave. `cargo bench -p sprig-tests --bench churn`; `SPRIG_CHURN_DEVICES` (1,000),
//! `SPRIG_CHURN_CYCLES` (6), `SPRIG_CHURN_ABRUPT=1` (close the sockets without a DISCONNECT).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sprig_test_support::settings::env_or;
use sprig_tests::bench::{mib, raise_nofile, rss_kb, subscribed_device};
use sprig_tests::raw;
use sprig_tests::{release_bin, with_setting, Gateway};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// How long the gateway is given, once a fleet has left, to end their sessions and give memory back
/// before it is read (as the fan-out benchmark does).
const SETTLE: Duration = Duration::from_secs(2);

/// Connects `id`, subscribes to its notifications and returns the open socket.
async fn device(addr: SocketAddr, id: &str) -> TcpStream {
    let filter = format!("$aws/things/{id}/jobs/+/notify-namespace-bench/");
    subscribed_device(addr, id, &filter).await
}

/// Connects the whole fleet, 100 at a time.
async fn connect_fleet(addr: SocketAddr, devices: usize) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(devices);
    for chunk in (0..devices).collect::<Vec<_>>().chunks(100) {
        let mut connecting = JoinSet::new();
        for &i in chunk {
            connecting.spawn(async move { device(addr, &format!("dev{i:05}")).await });
        }
        while let Some(stream) = connecting.join_next().await {
            streams.push(stream.unwrap());
        }
    }
    streams
}

/// The fleet leaves: with a DISCONNECT each, or, `abrupt`, by closing its sockets.
async fn disconnect_fleet(streams: Vec<TcpStream>, abrupt: bool) {
    for mut stream in streams {
        if !abrupt {
            let _ = stream.write_all(&raw::packet(0xE0, &[])).await;
            let _ = stream.shutdown().await;
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let devices = env_or("SPRIG_CHURN_DEVICES", 1000);
    let cycles = env_or("SPRIG_CHURN_CYCLES", 6).max(3);
    let abrupt = std::env::var_os("SPRIG_CHURN_ABRUPT").is_some();
    raise_nofile(devices as u64 + 256);
    let gateway = Gateway::start_bin_with(release_bin(), |config| {
        with_setting(
            &config,
            "max_connections = 1024",
            &format!("max_connections = {}", devices + 64),
        )
    });
    let pid = gateway.pid();
    println!(
        "{devices} devices, {cycles} cycles, {}; release sprig, resident memory",
        if abrupt {
            "sockets closed without DISCONNECT"
        } else {
            "DISCONNECT"
        }
    );
    println!(
        "{:>5}  {:>12}  {:>12}  {:>10}",
        "cycle", "connected", "after", "connect in"
    );
    let mut after = Vec::with_capacity(cycles);
    for cycle in 0..cycles {
        let started = Instant::now();
        let streams = connect_fleet(gateway.addr, devices).await;
        let connected_in = started.elapsed();
        let connected = rss_kb(pid);
        disconnect_fleet(streams, abrupt).await;
        tokio::time::sleep(SETTLE).await;
        after.push(rss_kb(pid));
        println!(
            "{cycle:>5}  {:>12}  {:>12}  {:>10.2?}",
            mib(connected),
            mib(after[cycle]),
            connected_in
        );
    }
    // The first cycle grows the allocator's pools to the fleet's size: growth counts from the second.
    let growth = after[cycles - 1] as i64 - after[1] as i64;
    println!(
        "growth from cycle 1 to {}: {growth} KiB ({:.2} KiB per connect/disconnect)",
        cycles - 1,
        growth as f64 / ((cycles - 2) * devices) as f64
    );
}
