//! Debian's mosquitto as the fleet's broker in the uplink's tests: started on a free loopback port with a
//! config of its own, killed when dropped. Tests that need it skip, saying so, when it is not installed
//! (`apt-get install mosquitto`; `.ci/run` does).

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// The mosquitto binary, if installed.
pub fn bin() -> Option<PathBuf> {
    [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// The mosquitto binary, or a loud skip: `test` cannot run without a fleet broker.
pub fn bin_or_skip(test: &str) -> Option<PathBuf> {
    let bin = bin();
    if bin.is_none() {
        eprintln!(
            "SKIPPED {test}: no mosquitto binary (/usr/sbin/mosquitto); install it with \
             `apt-get install mosquitto` (.ci/run does) to run the uplink's end-to-end tests"
        );
    }
    bin
}

/// A mosquitto broker on a loopback port, anonymous; killed when dropped.
pub struct Mosquitto {
    bin: PathBuf,
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// Lines added to the config (`persistence true`, another listener, ...).
    extra: String,
    child: Option<Child>,
}

impl Mosquitto {
    /// Without persistence: a restart forgets every session.
    pub fn start(bin: PathBuf) -> Mosquitto {
        Mosquitto::start_with(bin, "persistence false\n")
    }

    /// With persistence in its directory (saved when it is stopped with [`Mosquitto::stop`]), and no
    /// bound on the messages it queues for an absent persistent session: a fleet that loses nothing.
    pub fn start_persistent(bin: PathBuf) -> Mosquitto {
        Mosquitto::start_with(bin, "persistence true\nmax_queued_messages 0\n")
    }

    /// With `extra` config lines (`{dir}` in them is its directory).
    pub fn start_with(bin: PathBuf, extra: &str) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        // Run as root, mosquitto drops to its own user, which must be able to save its database here.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let extra = extra.replace("{dir}", &dir.path().display().to_string());
        let mut broker = Mosquitto {
            bin,
            dir,
            port: free_port(),
            extra,
            child: None,
        };
        broker.spawn();
        broker
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Starts mosquitto (again, on the same port) and waits until it accepts connections.
    pub fn spawn(&mut self) {
        let conf = self.dir.path().join("mosquitto.conf");
        let dir = self.dir.path().display();
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\nallow_anonymous true\nlog_dest stderr\n\
                 persistence_location {dir}/\n{}",
                self.port, self.extra
            ),
        )
        .unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("mosquitto.log"))
            .unwrap();
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn mosquitto");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&self.addr(), Duration::from_millis(100)).is_err() {
            let exited = self.child.as_mut().unwrap().try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "mosquitto did not start; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: gone at once, nothing saved.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and waits for it to exit: a persistent mosquitto saves its sessions and queues.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}
