//! Job notifications to a fleet: how long after a CreateJob for N devices (10,000 by default) the last of
//! them has its notifications, through the release `sprig`. Each device subscribes to all of its jobs
//! topics (`$aws/things/{thing}/jobs/#`) and must receive exactly two messages: the job's own
//! (`…/fan/notify-namespace-acme/`) and `notify-next-namespace-acme`.
//!
//! The devices are raw MQTT 3.1.1 clients (client id = thing name, anonymous on loopback) in this process,
//! which therefore needs N sockets: the benchmark raises its file limit. `cargo bench -p sprig-tests
//! --bench notify`; `SPRIG_NOTIFY_DEVICES` changes the count. Figures are in the README's performance
//! section.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sprig_test_support::settings::env_or;
use sprig_tests::bench::{raise_nofile, subscribed_device};
use sprig_tests::raw::read_packet_async as read_packet;
use sprig_tests::{create_job, release_bin, with_setting, Gateway};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// How long a device waits for its notifications before it counts as missed.
const PATIENCE: Duration = Duration::from_secs(30);
/// Messages each device must receive.
const PER_DEVICE: usize = 2;

/// Connects `thing` and subscribes to its jobs topics; returns the open socket.
async fn device(addr: SocketAddr, thing: String) -> TcpStream {
    let filter = format!("$aws/things/{thing}/jobs/#");
    subscribed_device(addr, &thing, &filter).await
}

/// Waits for the device's notifications: how many of [`PER_DEVICE`] came, and when the last did.
async fn notifications(mut stream: TcpStream) -> (usize, Instant) {
    let mut got = 0;
    let mut last = Instant::now();
    while got < PER_DEVICE {
        match tokio::time::timeout(PATIENCE, read_packet(&mut stream)).await {
            Ok(Ok((header, _))) if header >> 4 == 3 => {
                got += 1;
                last = Instant::now();
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => break,
        }
    }
    (got, last)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let count = env_or("SPRIG_NOTIFY_DEVICES", 10_000);
    raise_nofile(count as u64 + 256);
    let gateway = Gateway::start_bin_with(release_bin(), |config| {
        with_setting(
            &config,
            "max_connections = 1024",
            &format!("max_connections = {}", count + 64),
        )
    });
    let mut op = gateway.operator().await;
    let names: Vec<String> = (0..count).map(|i| format!("fan-{i}")).collect();

    let connecting = Instant::now();
    let mut devices = Vec::with_capacity(count);
    for group in names.chunks(250) {
        let mut joining = JoinSet::new();
        for name in group {
            joining.spawn(device(gateway.addr, name.clone()));
        }
        while let Some(stream) = joining.join_next().await {
            devices.push(stream.unwrap());
        }
    }
    let connected_in = connecting.elapsed();

    let waits: Vec<_> = devices
        .into_iter()
        .map(|stream| tokio::spawn(notifications(stream)))
        .collect();
    let targets: Vec<&str> = names.iter().map(String::as_str).collect();
    let started = Instant::now();
    op.request("CreateJob", create_job("fan", Some("acme"), &targets))
        .await
        .unwrap();
    let accepted_in = started.elapsed();
    let (mut received, mut last) = (0, started);
    for wait in waits {
        let (got, at) = wait.await.unwrap();
        received += got;
        last = last.max(at);
    }

    println!("job notifications, release sprig");
    println!(
        "{:>8}  {:>12}  {:>12}  {:>16}  {:>14}",
        "devices", "connected in", "accepted in", "last message in", "messages"
    );
    println!(
        "{count:>8}  {:>12.2?}  {:>12.2?}  {:>16.2?}  {:>14}",
        connected_in,
        accepted_in,
        last - started,
        format!("{received} of {}", PER_DEVICE * count)
    );
    for needle in ["devices notified", "WARN", "ERROR"] {
        for line in gateway.log_lines(needle).iter().take(20) {
            println!("{line}");
        }
    }
}
