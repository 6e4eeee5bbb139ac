"""Harness for sprig's interoperability tests: the real `sprig` binary, driven by real third-party clients.

This is the Python counterpart of `tests/src/lib.rs`:

* :func:`config_for` derives a config from `config/gateway.toml` exactly as `config_for` in the Rust harness
  does (the listen line and `data_dir` replaced), and :func:`with_setting` changes one more line, failing
  loudly if `config/gateway.toml` no longer has it.
* :class:`Pki` makes a throwaway CA, a server certificate for 127.0.0.1/localhost and device certificates
  (subject CN = thing name) with the `openssl` command line tool.
* :class:`Gateway` runs `sprig run --config FILE` on free ports with a temporary data dir, waits for its
  "ready" log line, runs the real `sprig` CLI for operator actions, and stops the gateway with SIGTERM.
* :class:`PresenceWatcher` is an operator MQTT client (paho-mqtt) that follows a thing's AWS IoT lifecycle
  events, so a test can wait until the gateway has seen a device go away.

Every wait is bounded and fails with a :class:`StepFailed` that names what was being waited for.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "config" / "gateway.toml"
# How long the gateway may take to start, and to stop after SIGTERM.
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
CLI_TIMEOUT_S = 30.0
# The line `sprig run` logs once every listener is bound: "sprig 0.1.0 ready listen=... data_dir=...".
READY = re.compile(r"\bsprig \S+ ready\b")


class StepFailed(Exception):
    """A step of a test did not happen: `step` names it, the message says what was seen instead."""

    def __init__(self, step: str, message: str):
        super().__init__(f"step '{step}': {message}")
        self.step = step


def target_dir() -> Path:
    """Cargo's target directory (`CARGO_TARGET_DIR`, else `target/` in the workspace)."""
    return Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))


def sprig_bin() -> Path:
    """The `sprig` binary: `$SPRIG_BIN`, else `target/debug/sprig` (tests/interop/run.sh builds it)."""
    path = Path(os.environ.get("SPRIG_BIN", target_dir() / "debug" / "sprig"))
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: build it with `cargo build -p sprig-gateway --bin sprig` "
            "or run the tests through tests/interop/run.sh"
        )
    return path


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_setting(config: str, old: str, new: str) -> str:
    """`config` with the line `old` (as `config/gateway.toml` writes it) replaced by `new`."""
    if old not in config:
        raise AssertionError(f"config/gateway.toml has no `{old}`")
    return config.replace(old, new)


def config_for(listen: str, data_dir: Path) -> str:
    """The default config listening on `listen` only, with its data in `data_dir` (as tests/src/lib.rs)."""
    config = DEFAULT_CONFIG.read_text()
    config = with_setting(config, 'listen = ["127.0.0.1:1883"]', f'listen = ["{listen}"]')
    # The HTTP API on a free port too: tests run gateways side by side.
    config = with_setting(config, 'listen = ["127.0.0.1:8080"]', f'listen = ["127.0.0.1:{free_port()}"]')
    config = with_setting(config, 'listen = ["127.0.0.1:9464"]', f'listen = ["127.0.0.1:{free_port()}"]')
    return with_setting(config, 'data_dir = "./sprig-data"', f"data_dir = {json.dumps(str(data_dir))}")


def _terminate_with_parent() -> None:
    """In the gateway's process before exec: Linux sends it SIGTERM if the test process dies (even killed)."""
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the context manager's stop() is the only guard


class Pki:
    """A throwaway certificate authority in `directory`, made with the `openssl` CLI.

    `ca` signs the server certificate (`server_cert`/`server_key`, SAN IP:127.0.0.1 and DNS:localhost) and
    the device certificates made by :meth:`device` (subject CN = thing name, as AWS IoT devices have).
    Keys are EC P-256 in PKCS#8.
    """

    def __init__(self, directory: Path):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca = self.dir / "ca.pem"
        self.ca_key = self.dir / "ca.key"
        self._openssl(
            "req", "-x509", "-new", *self._new_key(self.ca_key), "-out", str(self.ca),
            "-days", "2", "-subj", "/CN=sprig interop test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )
        self.server_cert, self.server_key = self._leaf(
            "server", "localhost",
            ["subjectAltName=IP:127.0.0.1,DNS:localhost", "extendedKeyUsage=serverAuth"],
        )

    def device(self, thing_name: str) -> tuple[Path, Path]:
        """A device certificate and key for `thing_name`: (certificate path, key path)."""
        return self._leaf(f"device-{thing_name}", thing_name, ["extendedKeyUsage=clientAuth"])

    @staticmethod
    def _new_key(path: Path) -> list[str]:
        return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(path)]

    def _leaf(self, name: str, common_name: str, extensions: list[str]) -> tuple[Path, Path]:
        key, csr, cert, ext = (self.dir / f"{name}.{s}" for s in ("key", "csr", "pem", "ext"))
        ext.write_text(
            "\n".join(["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature", *extensions])
            + "\n"
        )
        self._openssl("req", "-new", *self._new_key(key), "-out", str(csr), "-subj", f"/CN={common_name}")
        self._openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey", str(self.ca_key),
            "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", "2", "-sha256",
            "-extfile", str(ext), "-out", str(cert),
        )
        return cert, key

    @staticmethod
    def _openssl(*args: str) -> None:
        done = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"openssl {' '.join(args)} failed:\n{done.stderr}")


def copy_log(stream, path: Path, lines: list[str], changed: threading.Condition) -> None:
    """Copies a child process's output, line by line until it ends, to the file `path` and to `lines`,
    notifying `changed` after each line (what the waits on the log are woken by)."""
    with open(path, "w", encoding="utf-8") as log:
        for raw in stream:
            line = raw.decode("utf-8", "replace")
            log.write(line)
            log.flush()
            with changed:
                lines.append(line)
                changed.notify_all()


class Gateway:
    """A `sprig run --config FILE` of its own: free ports, a temporary data dir, stopped with SIGTERM.

    Use it as a context manager (`with Gateway(pki) as gateway:`) so it is stopped even when the test
    fails. With a :class:`Pki`, it also has an MQTT-over-TLS listener (`tls_port`) that asks devices for a
    certificate signed by the PKI's CA. Everything the gateway logs is kept (`log_lines()`, `log_path`).
    """

    def __init__(self, pki: Optional[Pki] = None, workdir: Optional[Path] = None,
                 edit: Callable[[str], str] = lambda config: config):
        self._own_workdir = workdir is None
        self.dir = Path(tempfile.mkdtemp(prefix="sprig-interop-")) if workdir is None else workdir
        self.port = free_port()
        self.tls_port = free_port() if pki else None
        self.data_dir = self.dir / "data"
        self.config_path = self.dir / "gateway.toml"
        self.log_path = self.dir / "sprig.log"
        config = config_for(f"127.0.0.1:{self.port}", self.data_dir)
        # The HTTP API's port, as config_for chose it.
        api = config[config.index("\n[api]\n"):]
        self.api_port = int(re.search(r'\nlisten = \["127\.0\.0\.1:(\d+)"\]', api).group(1))
        if pki:
            config = with_setting(config, '# tls_listen = ["0.0.0.0:8883"]', f'tls_listen = ["127.0.0.1:{self.tls_port}"]')
            config = with_setting(config, '# tls_cert = "tls/server.pem"', f"tls_cert = {json.dumps(str(pki.server_cert))}")
            config = with_setting(config, '# tls_key = "tls/server.key"', f"tls_key = {json.dumps(str(pki.server_key))}")
            config = with_setting(config, '# tls_client_ca = "tls/devices-ca.pem"', f"tls_client_ca = {json.dumps(str(pki.ca))}")
        config = edit(config)
        self.config_path.write_text(config)
        # The API's TLS listener, if the edit gave it one.
        tls = re.search(r'\ntls_listen = \["127\.0\.0\.1:(\d+)"\]', config[config.index("\n[api]\n"):])
        self.api_tls_port = int(tls.group(1)) if tls else None
        self._process: Optional[subprocess.Popen] = None
        self._lines: list[str] = []
        self._eof = False
        self._changed = threading.Condition()
        self._reader: Optional[threading.Thread] = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> "Gateway":
        """Starts `sprig run` and waits (at most START_TIMEOUT_S) for its "sprig ... ready" log line."""
        env = dict(os.environ, RUST_LOG=os.environ.get("SPRIG_INTEROP_RUST_LOG", "info,rumqttd=warn"))
        self._process = subprocess.Popen(
            [str(sprig_bin()), "run", "--config", str(self.config_path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
            preexec_fn=_terminate_with_parent,
        )
        self._reader = threading.Thread(target=self._read_log, name="sprig-log", daemon=True)
        self._reader.start()
        self.wait_for_log(lambda line: READY.search(line) is not None,
                          "gateway start: the 'sprig VERSION ready' log line", START_TIMEOUT_S)
        return self

    def stop(self) -> Optional[int]:
        """SIGTERM, then waits (at most STOP_TIMEOUT_S) for the gateway to exit; returns its exit code.

        A gateway that does not stop in time is killed (SIGKILL) and :class:`StepFailed` is raised.
        """
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise StepFailed("gateway stop", f"sprig did not exit within {STOP_TIMEOUT_S:.0f} s of SIGTERM")
        finally:
            if self._reader:
                self._reader.join(timeout=5)
        return code

    def cleanup(self) -> None:
        """Removes the temporary directory (config, data, log) if this object made it."""
        if self._own_workdir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Gateway":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            self.cleanup()

    # -- the log -----------------------------------------------------------------------------------

    def _read_log(self) -> None:
        assert self._process and self._process.stdout
        copy_log(self._process.stdout, self.log_path, self._lines, self._changed)
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def log_lines(self, needle: str = "") -> list[str]:
        """The lines logged so far that contain `needle`."""
        with self._changed:
            return [line.rstrip("\n") for line in self._lines if needle in line]

    def log_mark(self) -> int:
        """A position in the log, for :meth:`log_since`."""
        with self._changed:
            return len(self._lines)

    def log_since(self, mark: int) -> list[str]:
        """The lines logged after `mark`."""
        with self._changed:
            return [line.rstrip("\n") for line in self._lines[mark:]]

    def wait_for_log(self, wanted: Callable[[str], bool], step: str, timeout: float) -> str:
        """Waits until a logged line satisfies `wanted` and returns it; fails on timeout or if sprig exits."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self._lines[seen:]:
                    if wanted(line):
                        return line.rstrip("\n")
                seen = len(self._lines)
                if self._eof:
                    code = self._process.wait() if self._process else None
                    raise StepFailed(step, f"sprig exited (status {code}); log:\n" + "".join(self._lines))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StepFailed(step, f"not within {timeout:.0f} s; log:\n" + "".join(self._lines))
                self._changed.wait(left)

    # -- operators: the real CLI --------------------------------------------------------------------

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        """Runs `sprig ARGS --config FILE` (the CLI then finds the local operator credential)."""
        return subprocess.run(
            [str(sprig_bin()), *args, "--config", str(self.config_path)],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
        )

    def cli_json(self, step: str, *args: str) -> dict:
        """Runs the CLI and returns its JSON output; fails the step on a non-zero exit."""
        try:
            done = self.cli(*args)
        except subprocess.TimeoutExpired:
            raise StepFailed(step, f"`sprig {' '.join(args)}` did not finish within {CLI_TIMEOUT_S:.0f} s")
        if done.returncode != 0:
            raise StepFailed(step, f"`sprig {' '.join(args)}` exited {done.returncode}: {done.stderr.strip()}")
        return json.loads(done.stdout) if done.stdout.strip() else {}

    def create_job(self, job_id: str, thing: str, document: dict) -> dict:
        """`sprig create-job` for one thing."""
        return self.cli_json(f"create-job {job_id}", "create-job", "--job-id", job_id, "--targets", thing,
                             "--document", json.dumps(document))

    def execution_status(self, job_id: str, thing: str) -> str:
        """The execution's status as `sprig describe-job-execution` prints it."""
        reply = self.cli_json(f"describe-job-execution {job_id}", "describe-job-execution",
                              "--job-id", job_id, "--thing-name", thing)
        return reply["execution"]["status"]

    def local_operator(self) -> tuple[str, str]:
        """The local operator's username and password, as `sprig run` wrote them."""
        credential = json.loads((self.data_dir / "local-operator.json").read_text())
        return credential["username"], credential["password"]


class PresenceWatcher:
    """An operator (paho-mqtt, MQTT 3.1.1) following `$aws/events/presence/+/{thing}` on the plain listener.

    `wait(event_type, after)` waits for the first `connected`/`disconnected` event numbered `after` or
    later (events are numbered from 0 in arrival order; `count()` tells how many arrived so far).
    """

    def __init__(self, gateway: Gateway, thing: str, timeout: float = 10.0):
        import paho.mqtt.client as paho

        self.thing = thing
        self._events: list[dict] = []
        self._changed = threading.Condition()
        self._subscribed: "queue.Queue[list]" = queue.Queue()
        username, password = gateway.local_operator()
        self._client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"interop-presence-{os.getpid()}",
                                   protocol=paho.MQTTv311)
        self._client.username_pw_set(username, password)
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda client, userdata, mid, codes, props: self._subscribed.put(codes)
        connected: "queue.Queue[object]" = queue.Queue()
        self._client.on_connect = lambda client, userdata, flags, code, props: connected.put(code)
        self._client.connect("127.0.0.1", gateway.port, keepalive=30)
        self._client.loop_start()
        try:
            code = connected.get(timeout=timeout)
            if code.is_failure:
                raise StepFailed("presence watcher connect", f"CONNACK {code}")
            self._client.subscribe(f"$aws/events/presence/+/{thing}", qos=1)
            codes = self._subscribed.get(timeout=timeout)
            if any(c.is_failure for c in codes):
                raise StepFailed("presence watcher subscribe", f"SUBACK {codes}")
        except queue.Empty:
            self.close()
            raise StepFailed("presence watcher", f"no CONNACK/SUBACK within {timeout:.0f} s")
        except BaseException:
            self.close()
            raise

    def _on_message(self, client, userdata, message) -> None:
        event = json.loads(message.payload)
        with self._changed:
            self._events.append(event)
            self._changed.notify_all()

    def count(self) -> int:
        """How many presence events arrived so far."""
        with self._changed:
            return len(self._events)

    def wait(self, event_type: str, after: int, step: str, timeout: float) -> dict:
        """The first `event_type` event numbered `after` or later; fails the step after `timeout`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for event in self._events[after:]:
                    if event.get("eventType") == event_type:
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StepFailed(step, f"no '{event_type}' presence event for {self.thing} within "
                                           f"{timeout:.0f} s (events: {self._events[after:]})")
                self._changed.wait(left)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
