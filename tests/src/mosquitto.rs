//! Debian's mosquitto as the fleet's broker in the uplink's tests: started on a free loopback port with a
//! config of its own, killed when dropped. Tests that need it skip, saying so, when it is not installed
//! (`apt-get install mosquitto`; `.ci/run` does).

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::certs::{self, Issued};
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

/// A mosquitto broker on a loopback port, anonymous; killed when dropped. Started with
/// [`Mosquitto::start_tls`], it has a second listener, on TLS, that requires a client certificate.
pub struct Mosquitto {
    bin: PathBuf,
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// The TLS listener's port, if any; its CA and certificate are in `dir`.
    pub tls_port: Option<u16>,
    /// Lines added to the config (`persistence true`, ...).
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
        Mosquitto::start_in(bin, writable_tempdir(), extra, None)
    }

    /// Without persistence, and with a TLS listener too, whose certificate (for `localhost` and
    /// 127.0.0.1) `ca` signs and which lets in only clients whose certificate `ca` signs; the plain
    /// listener stays (for the fleet's backend in the tests).
    pub fn start_tls(bin: PathBuf, ca: &Issued) -> Mosquitto {
        let dir = writable_tempdir();
        ca.write(dir.path(), "ca");
        certs::server_cert(ca, &["localhost", "127.0.0.1"]).write(dir.path(), "server");
        let tls_port = Some(free_port());
        Mosquitto::start_in(bin, dir, "persistence false\n", tls_port)
    }

    fn start_in(
        bin: PathBuf,
        dir: tempfile::TempDir,
        extra: &str,
        tls_port: Option<u16>,
    ) -> Mosquitto {
        let extra = extra.replace("{dir}", &dir.path().display().to_string());
        // Two free ports asked in turn may be the same one.
        let port = loop {
            let port = free_port();
            if Some(port) != tls_port {
                break port;
            }
        };
        let mut broker = Mosquitto {
            bin,
            dir,
            port,
            tls_port,
            extra,
            child: None,
        };
        broker.spawn();
        broker
    }

    /// `mqtts://localhost:PORT`: the TLS listener.
    pub fn tls_url(&self) -> String {
        let port = self.tls_port.expect("a TLS listener");
        format!("mqtts://localhost:{port}")
    }

    /// Its configuration: the plain listener, the TLS one if any, the extra lines.
    fn conf(&self) -> String {
        let file = |name: &str| self.dir.path().join(name).display().to_string();
        let mut conf = format!(
            "allow_anonymous true\nlog_dest stderr\npersistence_location {}/\n{}listener {} 127.0.0.1\n",
            self.dir.path().display(),
            self.extra,
            self.port
        );
        if let Some(port) = self.tls_port {
            conf += &format!(
                "listener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
                file("ca.pem"),
                file("server.pem"),
                file("server.key")
            );
        }
        conf
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The running broker's process id; `None` while it is stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Starts mosquitto (again, on the same ports) and waits until every listener accepts connections.
    pub fn spawn(&mut self) {
        let conf = self.dir.path().join("mosquitto.conf");
        std::fs::write(&conf, self.conf()).unwrap();
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
        let ports = std::iter::once(self.port).chain(self.tls_port);
        for addr in ports.map(|port| SocketAddr::from(([127, 0, 0, 1], port))) {
            while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
                let exited = self.child.as_mut().unwrap().try_wait().unwrap();
                assert!(
                    exited.is_none() && Instant::now() < deadline,
                    "mosquitto did not start; its log:\n{}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
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

/// A temporary directory that the `mosquitto` user (which mosquitto drops to when run as root) may write
/// its database in.
fn writable_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}
