"""The Eclipse Paho interoperability scenarios, against sprig and against Debian's mosquitto.

Eclipse's paho.mqtt.testing project has a client test suite (`interoperability/client_test.py` for
MQTT 3.1.1, `client_test5.py` for MQTT 5) that brokers are commonly measured with. This script implements
the same scenarios itself, with the paho-mqtt 2.x client (and, where a scenario needs bytes that no
well-behaved client sends, a few hand-made packets), and checks the same observable outcomes:

* MQTT 3.1.1: basic, retained messages, zero-length client id, offline message queueing, overlapping
  subscriptions, keep-alive, redelivery on reconnect, subscribe failure, `$` topics, unsubscribe;
* MQTT 5: offline message queueing, redelivery on reconnect, session expiry, unsubscribe, keep-alive, and
  those of client_test5.py for what issue 17 fixed: subscribe options, maximum packet size, flow control
  (the server's and the client's Receive Maximum), client topic aliases, will delay, assigned client id, and the suite's
  cleanup client ("clean retained", a client id with a space), user properties, payload format,
  publication expiry, request/response, shared subscriptions, subscription identifiers, server keep-alive,
  server topic aliases: all of client_test5.py's.

Both brokers run as children of this script on free loopback ports: sprig (`sprig run`, through
`sprig_gateway.Gateway`) with a config that adds one topic rule granting devices every topic a rule can
grant, and mosquitto with a minimal config (listener, anonymous clients, no persistence); mosquitto is
installed with apt-get when it is missing and this runs as root. The result is a table per protocol
version, scenario x broker, with the reason of each failure.

A scenario is *required* of sprig when mosquitto passes it and it is not a KNOWN_DIFFERENCE (a conflict
with sprig's identity design, explained there and in the README's "MQTT conformance"). The exit status is
1 when a required scenario fails on sprig or sprig cannot be started, else 0; the last line is
`paho: N passed, M failed` over sprig's required scenarios. When mosquitto cannot be run, the scenarios it
passed when this was written (MOSQUITTO_BASELINE) are the required ones.

Run it through `tests/interop/run.sh`, or alone with paho-mqtt importable and a built `target/debug/sprig`
(`SPRIG_BIN` overrides):

    python3 tests/interop/test_paho_scenarios.py [-v] [-k SUBSTRING] [--broker sprig|mosquitto]

Synchronisation is by events: every step waits on a paho callback (CONNACK, SUBACK, PUBACK/PUBCOMP, a
message arriving) with a bounded timeout and fails with what it waited for. Where a scenario must show that
something does *not* arrive, a marker message is sent after it and awaited on the same connection, then a
short quiet period (QUIET_S) passes. The only other waits are the ones time itself is the subject of:
keep-alive expiry and session expiry.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Callable, Optional

try:
    import paho.mqtt.client as paho
    from paho.mqtt import __version__ as PAHO_VERSION
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    from paho.mqtt.subscribeoptions import SubscribeOptions
except ImportError:
    sys.exit(f"{Path(__file__).name}: paho-mqtt is not importable; run tests/interop/run.sh, or install the "
             "version of tests/interop/requirements.txt (pip install paho-mqtt==2.2.0)")
if not PAHO_VERSION.startswith("2."):
    sys.exit(f"{Path(__file__).name}: needs paho-mqtt 2.x, found {PAHO_VERSION}")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sprig_gateway  # noqa: E402  (tests/interop/sprig_gateway.py, the interop tests' gateway harness)

NAME = Path(__file__).stem

# The topics, filters and client ids of the Paho scenarios.
TOPICS = ("TopicA", "TopicA/B", "Topic/C", "TopicA/C", "/TopicA")
WILDTOPICS = ("TopicA/+", "+/C", "#", "/#", "/+", "+/+", "TopicA/#")
NOSUBSCRIBE_TOPIC = "test/nosubscribe"
CLIENT_A = "myclientid"
CLIENT_B = "myclientid2"
# Markers: topics matched by "+/+" and "#", and by "TopicA/#" and "TopicA/+".
MARKER_TOPIC = "interop/marker"
MARKER_TOPIC_A = "TopicA/marker"

V311 = "3.1.1"
V5 = "5"

STEP_TIMEOUT_S = 5.0  # one protocol exchange (CONNACK, SUBACK, PUBACK, a message) on loopback
QUIET_S = 0.5  # after a marker arrived: how long nothing else may arrive
KEEPALIVE_S = 2  # the keep-alive of the client that goes silent in the keep-alive scenario
# How much later than 1.5 x the keep-alive the will may come. MQTT says "within 1.5 times", but the Paho
# suite allows 15 s for a 5 s keep-alive, and mosquitto 2.0 sweeps keep-alives only every 5 s or so (its
# wills came 5-9 s after a 2 s keep-alive went silent). A late will is noted, not failed.
KEEPALIVE_GRACE_S = 10.0
BROKER_START_TIMEOUT_S = 30.0
APT_TIMEOUT_S = 600.0

# Scenarios sprig fails by design although mosquitto passes them. Only for a true conflict with sprig's
# identity or security design; each entry says why (the README's "MQTT conformance" says the same).
KNOWN_DIFFERENCES: dict[tuple[str, str], str] = {
    # None today. An entry here (a true conflict with sprig's identity or security design, with its reason)
    # makes a scenario that mosquitto passes not required of sprig.
}

# What mosquitto 2.0.11 (Debian 12) passed when this script was written. Used only when mosquitto cannot be
# run here (not installed and not installable), to decide which scenarios are required of sprig.
MOSQUITTO_BASELINE: dict[str, set[str]] = {
    V311: {"basic", "retained messages", "zero-length client id", "offline message queueing",
           "keep-alive", "redelivery on reconnect", "$ topics", "unsubscribe"},
    V5: {"offline message queueing", "redelivery on reconnect", "session expiry", "unsubscribe",
         "keep-alive", "subscribe options", "maximum packet size", "client topic aliases",
         "flow control (client receive maximum)",
         "assigned client id", "client id with a space (clean retained)", "user properties",
         "payload format", "publication expiry", "request/response", "shared subscriptions",
         "subscription identifiers"},
}


class ScenarioFailed(AssertionError):
    """A scenario's expectation was not met; the message says what was expected and what was seen."""


def check(condition: bool, message: str) -> None:
    """Fails the scenario with `message` unless `condition` holds."""
    if not condition:
        raise ScenarioFailed(message)


def unique(label: str) -> bytes:
    """A payload no other message of the run has."""
    return f"{label} {uuid.uuid4().hex[:8]}".encode()


# -- brokers ----------------------------------------------------------------------------------------------


class BrokerUnavailable(Exception):
    """The broker could not be installed or started; the message says why."""


class SprigBroker:
    """`sprig run` with the default config plus one topic rule that grants devices everything it can."""

    name = "sprig"
    # Every topic a topic rule can grant (rules cannot grant `$` topics), to every device. All the clients
    # of the scenarios are anonymous devices on the loopback listener: client id = thing name.
    TOPIC_RULE = '\n[[auth.topic_rules]]\nthings = ["*"]\npublish = ["#"]\nsubscribe = ["#"]\n'

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.gateway: Optional[sprig_gateway.Gateway] = None
        self.label = "sprig"

    def start(self) -> None:
        os.environ.setdefault("SPRIG_INTEROP_RUST_LOG", "debug,rumqttd=info,sled=info")
        self.gateway = sprig_gateway.Gateway(edit=lambda config: config + self.TOPIC_RULE)
        try:
            self.gateway.start()
        except Exception as e:
            self.stop()
            raise BrokerUnavailable(f"sprig did not start: {e}") from e

    @property
    def port(self) -> int:
        assert self.gateway
        return self.gateway.port

    def alive(self) -> bool:
        process = self.gateway._process if self.gateway else None  # noqa: SLF001 (the helper has no API)
        return process is not None and process.poll() is None

    @property
    def log_path(self) -> Path:
        return self.log_dir / "paho-sprig.log"

    def stop(self) -> None:
        if not self.gateway:
            return
        try:
            self.gateway.stop()
        finally:
            if self.gateway.log_path.exists():
                shutil.copyfile(self.gateway.log_path, self.log_path)
            self.gateway.cleanup()
            self.gateway = None


class MosquittoBroker:
    """Debian's mosquitto as a child process with a minimal config on a free loopback port."""

    name = "mosquitto"

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.dir: Optional[Path] = None
        self.port = 0
        self.process: Optional[subprocess.Popen] = None
        self.label = "mosquitto"
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._reader: Optional[threading.Thread] = None

    @staticmethod
    def binary() -> Optional[str]:
        return shutil.which("mosquitto") or next(
            (p for p in ("/usr/sbin/mosquitto", "/usr/bin/mosquitto") if os.access(p, os.X_OK)), None)

    def install(self) -> str:
        """The mosquitto binary, installed with apt-get (as root) if missing."""
        found = self.binary()
        if found:
            return found
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            raise BrokerUnavailable("mosquitto is not installed, and apt-get cannot be run here (not root)")
        print("paho: installing mosquitto (apt-get update && apt-get install -y mosquitto)", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for command in (["apt-get", "update"], ["apt-get", "install", "-y", "mosquitto"]):
            try:
                done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=APT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                raise BrokerUnavailable(f"`{' '.join(command)}` did not finish within {APT_TIMEOUT_S:.0f} s")
            if done.returncode != 0:
                raise BrokerUnavailable(f"`{' '.join(command)}` failed: {done.stderr.strip()[-500:]}")
        found = self.binary()
        if not found:
            raise BrokerUnavailable("apt-get installed mosquitto, but no mosquitto binary was found")
        return found

    @property
    def log_path(self) -> Path:
        return self.log_dir / "paho-mosquitto.log"

    def start(self) -> None:
        binary = self.install()
        self.dir = Path(tempfile.mkdtemp(prefix="paho-mosquitto-"))
        self.port = sprig_gateway.free_port()
        config = self.dir / "mosquitto.conf"
        config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "log_dest stderr\n"
            "log_type all\n"
        )
        config.chmod(0o644)
        self.process = subprocess.Popen(
            [binary, "-c", str(config)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, preexec_fn=sprig_gateway._terminate_with_parent,  # noqa: SLF001
        )
        self._reader = threading.Thread(target=self._read_log, name="mosquitto-log", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + BROKER_START_TIMEOUT_S
        with self._changed:
            while not any(" running" in line for line in self._lines):
                left = deadline - time.monotonic()
                if self.process.poll() is not None or left <= 0:
                    log = "".join(self._lines)
                    self.stop()
                    raise BrokerUnavailable(f"mosquitto did not start (log: {log.strip()[-500:]})")
                self._changed.wait(min(left, 0.5))
            version = next(line for line in self._lines if " running" in line)
        self.label = "mosquitto " + version.split("version", 1)[-1].split("running")[0].strip()

    def _read_log(self) -> None:
        assert self.process and self.process.stdout
        sprig_gateway.copy_log(self.process.stdout, self.log_path, self._lines, self._changed)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        process, self.process = self.process, None
        if process and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._reader:
            self._reader.join(timeout=5)
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


# -- clients ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    properties: Optional[Properties] = None  # MQTT 5


@dataclasses.dataclass
class ConnAck:
    session_present: bool
    reason: paho.ReasonCode
    properties: Optional[Properties]


class _PausableClient(paho.Client):
    """A paho client that can, like the Paho test suite's own client, stop acknowledging: while `paused`,
    an incoming PUBLISH is dropped unseen and unacknowledged (no PUBACK, no PUBREC), so the exchange stays
    incomplete on the broker's side. paho-mqtt has no public switch for that (manual_ack still sends
    PUBREC for QoS 2), hence this override of its packet handler (paho-mqtt 2.2.0, pinned)."""

    paused = False
    dropped: list[tuple[int, bool]]  # (QoS, DUP) of each PUBLISH dropped while paused

    def _handle_publish(self):  # noqa: D401 (paho's own method)
        if not self.paused:
            return super()._handle_publish()
        command = self._in_packet["command"]
        self.dropped.append(((command & 0x06) >> 1, bool(command & 0x08)))
        return paho.MQTTErrorCode.MQTT_ERR_SUCCESS


class Probe:
    """One MQTT connection made with paho-mqtt, every exchange awaited with a bounded timeout.

    `clean` is the 3.1.1 clean-session flag, or MQTT 5's clean start. A Probe is used for one connection:
    reconnecting is a new Probe with the same client id (as a device that restarted would do).
    """

    def __init__(self, scenario: "Scenario", client_id: str, clean: bool = True):
        self.scenario = scenario
        self.client_id = client_id
        self.v5 = scenario.version == V5
        self.clean = clean
        self.client = _PausableClient(
            paho.CallbackAPIVersion.VERSION2, client_id=client_id,
            protocol=paho.MQTTv5 if self.v5 else paho.MQTTv311,
            clean_session=None if self.v5 else clean, reconnect_on_failure=False,
        )
        self.client.dropped = []
        self.messages: list[Message] = []
        self._changed = threading.Condition()
        self._connack: "queue.Queue[ConnAck]" = queue.Queue()
        self._acks: dict[int, list] = {}
        self.disconnected = threading.Event()
        self.disconnect_reason: Optional[paho.ReasonCode] = None
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_ack
        self.client.on_unsubscribe = self._on_ack
        self.client.on_disconnect = self._on_disconnect
        self.client.on_log = self._on_log
        self.connack_log: list[str] = []  # paho's own account of the CONNACKs it received
        self._looping = False
        scenario.probes.append(self)

    # callbacks (paho's network thread)

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        self._connack.put(ConnAck(flags.session_present, reason, properties))

    def _on_message(self, client, userdata, message) -> None:
        with self._changed:
            self.messages.append(Message(message.topic, message.payload, message.qos, bool(message.retain),
                                         bool(message.dup), getattr(message, "properties", None)))
            self._changed.notify_all()

    def _on_ack(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._changed:
            self._acks[mid] = [getattr(code, "value", code) for code in reason_codes]
            self._changed.notify_all()

    def _on_log(self, client, userdata, level, text) -> None:
        if "CONNACK" in text:
            self.connack_log.append(text)

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        self.disconnect_reason = reason
        self.disconnected.set()
        with self._changed:
            self._changed.notify_all()

    # steps

    def connect(self, keepalive: int = 60, will: Optional[tuple[str, bytes]] = None,
                session_expiry: Optional[int] = None, properties: Optional[dict] = None,
                will_properties: Optional[dict] = None) -> ConnAck:
        """Connects and returns the CONNACK, failing the scenario if the broker refuses or stays silent.
        MQTT 5: `properties` are more CONNECT properties by paho's names (e.g. MaximumPacketSize),
        `will_properties` the will's (e.g. WillDelayInterval)."""
        if will:
            props = None
            if will_properties:
                props = Properties(PacketTypes.WILLMESSAGE)
                for name, value in will_properties.items():
                    setattr(props, name, value)
            self.client.will_set(will[0], will[1], qos=0, retain=False, properties=props)
        extra = {}
        if self.v5:
            connect_properties = properties or {}
            properties = None
            if session_expiry is not None or connect_properties:
                properties = Properties(PacketTypes.CONNECT)
            if session_expiry is not None:
                properties.SessionExpiryInterval = session_expiry
            for name, value in connect_properties.items():
                setattr(properties, name, value)
            extra = {"clean_start": self.clean, "properties": properties}
        what = f"{self.client_id!r} (clean {'start' if self.v5 else 'session'} {int(self.clean)})"
        try:
            self.client.connect("127.0.0.1", self.scenario.broker.port, keepalive=keepalive, **extra)
        except OSError as e:
            raise ScenarioFailed(f"connect {what}: TCP connection failed: {e}")
        self.client.loop_start()
        self._looping = True
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while True:
            try:
                ack = self._connack.get(timeout=0.05)
                break
            except queue.Empty:
                if self.disconnected.is_set():
                    # paho answers some refusals itself (e.g. 0x02 for an empty client id) without
                    # calling on_connect: its log line has the CONNACK.
                    seen = f"paho: {self.connack_log[-1]}" if self.connack_log else "no CONNACK"
                    raise ScenarioFailed(f"connect {what}: the connection closed ({self.disconnect_reason}; "
                                         f"{seen})")
                if time.monotonic() > deadline:
                    raise ScenarioFailed(f"connect {what}: no CONNACK within {STEP_TIMEOUT_S:.0f} s")
        if ack.reason.is_failure:
            raise ScenarioFailed(f"connect {what}: CONNACK refused: {ack.reason} (0x{ack.reason.value:02x})")
        return ack

    def _wait_ack(self, mid: int, what: str) -> list[int]:
        with self._changed:
            if not self._changed.wait_for(lambda: mid in self._acks or self.disconnected.is_set(),
                                          STEP_TIMEOUT_S):
                raise ScenarioFailed(f"{what}: no answer within {STEP_TIMEOUT_S:.0f} s")
            if mid not in self._acks:
                raise ScenarioFailed(f"{what}: the connection closed ({self.disconnect_reason})")
            return self._acks[mid]

    def subscribe(self, *filters: tuple[str, int]) -> list[int]:
        """One SUBSCRIBE with these (filter, QoS) pairs; returns the SUBACK's return/reason codes."""
        result, mid = self.client.subscribe(list(filters))
        check(result == paho.MQTT_ERR_SUCCESS, f"subscribe {filters}: paho could not send it ({result})")
        return self._wait_ack(mid, f"SUBACK for {self.client_id} subscribing to {list(filters)}")

    def subscribe_granted(self, *filters: tuple[str, int]) -> list[int]:
        """Subscribes and fails the scenario if any filter is refused."""
        codes = self.subscribe(*filters)
        check(all(code < 0x80 for code in codes),
              f"SUBACK refused {list(filters)} for {self.client_id}: codes {', '.join(f'0x{c:02x}' for c in codes)}")
        return codes

    def subscribe_options(self, topic_filter: str, identifier: Optional[int] = None, **options) -> int:
        """MQTT 5: one SUBSCRIBE of `topic_filter` with these subscription options (paho's SubscribeOptions:
        qos, noLocal, retainAsPublished, retainHandling) and Subscription Identifier; fails the scenario
        unless granted. Returns the granted QoS."""
        properties = None
        if identifier is not None:
            properties = Properties(PacketTypes.SUBSCRIBE)
            properties.SubscriptionIdentifier = identifier
        result, mid = self.client.subscribe([(topic_filter, SubscribeOptions(**options))],
                                            properties=properties)
        check(result == paho.MQTT_ERR_SUCCESS, f"subscribe {topic_filter}: paho could not send it ({result})")
        codes = self._wait_ack(mid, f"SUBACK for {self.client_id} subscribing to {topic_filter} {options}")
        check(codes[0] < 0x80, f"SUBACK refused {topic_filter} {options}: 0x{codes[0]:02x}")
        return codes[0]

    def forget_messages(self) -> None:
        """Forgets the messages received so far (what arrives next is counted afresh)."""
        with self._changed:
            self.messages.clear()

    def unsubscribe(self, *filters: str) -> list[int]:
        result, mid = self.client.unsubscribe(list(filters))
        check(result == paho.MQTT_ERR_SUCCESS, f"unsubscribe {filters}: paho could not send it ({result})")
        return self._wait_ack(mid, f"UNSUBACK for {self.client_id} unsubscribing from {list(filters)}")

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                must_complete: bool = True, properties: Optional[Properties] = None) -> bool:
        """Publishes; for QoS 1 and 2 waits for the PUBACK/PUBCOMP. Returns whether the exchange completed
        (with `must_complete`, an incomplete one fails the scenario)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        check(info.rc == paho.MQTT_ERR_SUCCESS, f"publish to {topic!r}: paho could not send it ({info.rc})")
        if qos == 0:
            return True
        try:
            info.wait_for_publish(timeout=STEP_TIMEOUT_S)
        except (RuntimeError, ValueError) as e:
            raise ScenarioFailed(f"publish QoS {qos} to {topic!r}: {e}")
        done = info.is_published()
        if must_complete:
            check(done, f"publish QoS {qos} to {topic!r}: no {'PUBACK' if qos == 1 else 'PUBCOMP'} "
                        f"within {STEP_TIMEOUT_S:.0f} s")
        return done

    def wait_messages(self, wanted: Callable[[list[Message]], bool], what: str,
                      timeout: float = STEP_TIMEOUT_S) -> list[Message]:
        """Waits until the messages received so far satisfy `wanted`; returns them."""
        with self._changed:
            if not self._changed.wait_for(lambda: wanted(self.messages), timeout):
                raise ScenarioFailed(f"{self.client_id}: {what} not within {timeout:.0f} s; received: "
                                     f"{describe(self.messages)}")
            return list(self.messages)

    def wait_payloads(self, *payloads: bytes, timeout: float = STEP_TIMEOUT_S, what: str = "") -> list[Message]:
        return self.wait_messages(lambda ms: set(payloads) <= {m.payload for m in ms},
                                  what or f"{len(payloads)} expected message(s)", timeout)

    def settle(self, publisher: Optional["Probe"] = None, topic: str = MARKER_TOPIC) -> list[Message]:
        """Sends a marker (from `publisher`, by default this client) on `topic`, which this client must be
        subscribed to, waits for it to arrive here, then lets QUIET_S pass; returns what arrived, without
        markers. What has not arrived by then is taken as never arriving."""
        marker = unique("marker")
        (publisher or self).publish(topic, marker, qos=1)
        self.wait_payloads(marker, what=f"the marker on {topic!r}")
        time.sleep(QUIET_S)  # the bounded quiet period after the marker (see the module docstring)
        with self._changed:
            return [m for m in self.messages if not m.payload.startswith(b"marker ")]

    def pause(self) -> None:
        """From now on incoming PUBLISH packets are dropped unacknowledged (see _PausableClient)."""
        self.client.paused = True

    def go_silent(self) -> None:
        """Stops paho's network thread without a DISCONNECT: the socket stays open, nothing more is sent
        (no PINGREQ), nothing is read."""
        self.client.loop_stop()
        self._looping = False

    def drop_connection(self) -> None:
        """Closes the socket without a DISCONNECT, as a client that lost its network (Paho's terminate); the
        network thread is stopped after (it may take a second to notice)."""
        sock = self.client.socket()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.client.loop_stop()
        self._looping = False
        if sock is not None:
            sock.close()

    def disconnect(self, session_expiry: Optional[int] = None) -> None:
        """Sends DISCONNECT (MQTT 5: with this Session Expiry Interval) and waits for the socket to close."""
        properties = None
        if self.v5 and session_expiry is not None:
            properties = Properties(PacketTypes.DISCONNECT)
            properties.SessionExpiryInterval = session_expiry
        self.client.disconnect(properties=properties)
        if not self.disconnected.wait(STEP_TIMEOUT_S):
            raise ScenarioFailed(f"disconnect {self.client_id}: not done within {STEP_TIMEOUT_S:.0f} s")
        self.close()

    def close(self) -> None:
        """Teardown, whatever the state: stops the network thread and closes the socket."""
        if self._looping:
            if not self.disconnected.is_set():
                try:
                    self.client.disconnect()
                    self.disconnected.wait(1.0)
                except Exception:
                    pass
            self.client.loop_stop()
            self._looping = False
        sock = self.client.socket()
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass


def note_qos(s: "Scenario", message: Message, published: int, granted: int) -> None:
    """Notes a message delivered at another QoS than min(published, the subscription's granted QoS) (MQTT
    3.1.1 3.8.4, MQTT 5 3.8.4): the Paho scenarios do not check it, but it is worth knowing."""
    expected = min(published, granted)
    if message.qos != expected:
        s.notes.append(f"QoS {published} publish to a subscription granted QoS {granted} delivered at QoS "
                       f"{message.qos}, not {expected}")


def describe(messages: list[Message]) -> str:
    """A short list of messages for failure reasons: topic, payload, QoS, retain, dup."""
    if not messages:
        return "nothing"
    parts = []
    for m in messages[:8]:
        flags = "".join(f for f, on in (("r", m.retain), ("d", m.dup)) if on)
        parts.append(f"{m.topic}:{m.payload[:24]!r}/q{m.qos}{'/' + flags if flags else ''}")
    return ", ".join(parts) + (f" (+{len(messages) - 8} more)" if len(messages) > 8 else "")


# -- hand-made packets, for what paho-mqtt refuses to send ------------------------------------------------


def _string(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def connect_packet(version: str, client_id: bytes, clean: bool, protocol_name: bytes = b"MQTT",
                   keepalive: int = 60) -> bytes:
    """A CONNECT packet: no will, no credentials, no properties."""
    body = _string(protocol_name) + bytes([5 if version == V5 else 4, 0x02 if clean else 0x00])
    body += keepalive.to_bytes(2, "big") + (b"\x00" if version == V5 else b"") + _string(client_id)
    return b"\x10" + _remaining_length(len(body)) + body


def publish_packet_v5(topic: bytes, payload: bytes, qos: int = 0, pkid: int = 0,
                      topic_alias: Optional[int] = None) -> bytes:
    """An MQTT 5 PUBLISH, with a Topic Alias property if given (paho-mqtt will not send alias 0, nor an
    empty topic)."""
    properties = b"" if topic_alias is None else b"\x23" + topic_alias.to_bytes(2, "big")
    body = _string(topic) + (pkid.to_bytes(2, "big") if qos else b"")
    body += _remaining_length(len(properties)) + properties + payload
    return bytes([0x30 | (qos << 1)]) + _remaining_length(len(body)) + body


class RawConnection:
    """A plain TCP connection for hand-made packets, with bounded reads."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=STEP_TIMEOUT_S)
        self.buffer = b""

    def __enter__(self) -> "RawConnection":
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        """Reads more bytes; False when the peer closed the connection."""
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = self.sock.recv(4096)
        except socket.timeout:  # a subclass of OSError: the caller's timeout, not a closed connection
            raise
        except OSError:
            return False  # reset by the peer: closed
        self.buffer += data
        return bool(data)

    def read_packet(self, timeout: float = STEP_TIMEOUT_S) -> Optional[tuple[int, bytes]]:
        """The next packet as (first byte, body), or None once the peer closed the connection.
        Raises socket.timeout when nothing complete arrives in time."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buffer) >= 2:
                length, multiplier, i = 0, 1, 1
                while i < len(self.buffer):
                    length += (self.buffer[i] & 0x7F) * multiplier
                    multiplier *= 128
                    if not self.buffer[i] & 0x80:
                        break
                    i += 1
                else:
                    i = None
                if i is not None and len(self.buffer) >= i + 1 + length:
                    first, body = self.buffer[0], self.buffer[i + 1:i + 1 + length]
                    self.buffer = self.buffer[i + 1 + length:]
                    return first, body
            if not self._fill(deadline):
                return None

    def outcome_of_connect(self, timeout: float = STEP_TIMEOUT_S) -> tuple[str, Optional[int]]:
        """After a CONNECT: ("CONNACK", return/reason code) or ("closed", None); ("silent", None) when
        neither happens in time."""
        try:
            packet = self.read_packet(timeout)
        except socket.timeout:
            return "silent", None
        if packet is None:
            return "closed", None
        first, body = packet
        if first >> 4 != 2 or len(body) < 2:
            return f"packet type {first >> 4}", None
        return "CONNACK", body[1]

    def disconnect_reason(self, timeout: float = STEP_TIMEOUT_S) -> Optional[int]:
        """Reads until the server's DISCONNECT and returns its reason code; None when the connection closes
        (or nothing comes in time) without one."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                packet = self.read_packet(max(0.01, deadline - time.monotonic()))
            except socket.timeout:
                return None
            if packet is None:
                return None
            first, body = packet
            if first >> 4 == 14:
                return body[0] if body else 0

    def closed_within(self, timeout: float = STEP_TIMEOUT_S) -> tuple[bool, list[int]]:
        """Whether the peer closes the connection within `timeout`; also the packet types it sent first."""
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            try:
                packet = self.read_packet(max(0.01, deadline - time.monotonic()))
            except socket.timeout:
                return False, seen
            if packet is None:
                return True, seen
            seen.append(packet[0] >> 4)


def said(outcome: str, code: Optional[int]) -> str:
    """What RawConnection.outcome_of_connect saw, for a failure reason: "CONNACK 0x02", "closed"."""
    return outcome + (f" 0x{code:02x}" if code is not None else "")


# -- scenarios --------------------------------------------------------------------------------------------


class Scenario:
    """What a scenario function gets: the broker, the protocol version, its clients (closed at the end)
    and `notes` for observations that are not failures (e.g. "QoS 0 not queued")."""

    def __init__(self, broker, version: str):
        self.broker = broker
        self.version = version
        self.v5 = version == V5
        self.probes: list[Probe] = []
        self.notes: list[str] = []

    def client(self, client_id: str, clean: bool = True) -> Probe:
        return Probe(self, client_id, clean)

    def connect(self, client_id: str, clean: bool = True, **kwargs) -> tuple[Probe, ConnAck]:
        probe = self.client(client_id, clean)
        return probe, probe.connect(**kwargs)

    def teardown(self) -> None:
        for probe in self.probes:
            try:
                probe.close()
            except Exception:
                pass


def clean_slate(s: Scenario) -> None:
    """Ends whatever sessions earlier scenarios left for the two client ids (as the Paho suite's cleanup)."""
    for client_id in (CLIENT_A, CLIENT_B):
        probe, _ = s.connect(client_id, clean=True, session_expiry=0 if s.v5 else None)
        probe.disconnect()


def scenario_basic(s: Scenario) -> None:
    """Connect/disconnect; connect again (no session present); subscribe TopicA at QoS 2 and publish to it
    at QoS 0, 1 and 2: each arrives once. A second CONNECT on a connection, and a CONNECT whose protocol
    name is "hj", are refused (the connection is closed, or the CONNACK refuses)."""
    a, _ = s.connect(CLIENT_A)
    a.disconnect()
    a, ack = s.connect(CLIENT_A)
    check(not ack.session_present, "CONNACK of a clean session says session present")
    granted = a.subscribe_granted((TOPICS[0], 2))[0]
    payloads = [unique(f"qos {qos}") for qos in range(3)]
    for qos, payload in enumerate(payloads):
        a.publish(TOPICS[0], payload, qos)
    a.wait_payloads(*payloads, what="the QoS 0, 1 and 2 messages on TopicA")
    got = a.settle(topic=TOPICS[0])
    for qos, payload in enumerate(payloads):
        copies = [m for m in got if m.payload == payload]
        check(len(copies) == 1, f"the QoS {qos} message arrived {len(copies)} times: {describe(copies)}")
        note_qos(s, copies[0], qos, granted)
    a.disconnect()

    with RawConnection(s.broker.port) as raw:
        raw.send(connect_packet(s.version, CLIENT_A.encode(), clean=True))
        outcome, code = raw.outcome_of_connect()
        check(outcome == "CONNACK" and code == 0, f"raw CONNECT: expected CONNACK 0, got {said(outcome, code)}")
        raw.send(connect_packet(s.version, CLIENT_A.encode(), clean=True))
        closed, seen = raw.closed_within()
        check(closed, f"a second CONNECT on the same connection was accepted: the connection stayed open "
                      f"{STEP_TIMEOUT_S:.0f} s (packets after it: {seen})")
    with RawConnection(s.broker.port) as raw:
        raw.send(connect_packet(s.version, CLIENT_A.encode(), clean=True, protocol_name=b"hj"))
        outcome, code = raw.outcome_of_connect()
        check(outcome == "closed" or (outcome == "CONNACK" and code != 0),
              f"CONNECT with protocol name 'hj' was not refused: {said(outcome, code)}")


def scenario_retained(s: Scenario) -> None:
    """Retained messages at QoS 0, 1 and 2 on TopicA/B, Topic/C, TopicA/C are sent, with the retain flag,
    to a later subscription to +/+; once cleared (empty retained payloads), a new subscription gets none."""
    retained = [(TOPICS[1], 0), (TOPICS[2], 1), (TOPICS[3], 2)]
    try:
        a, ack = s.connect(CLIENT_A, clean=True)
        check(not ack.session_present, "CONNACK of a clean session says session present")
        payloads = {}
        for topic, qos in retained:
            payloads[topic] = unique(f"retained qos {qos}")
            a.publish(topic, payloads[topic], qos, retain=True)
        granted = a.subscribe_granted((WILDTOPICS[5], 2))[0]
        a.wait_payloads(*payloads.values(), what="the three retained messages on subscribing to +/+")
        got = a.settle()
        for topic, qos in retained:
            copies = [m for m in got if m.topic == topic]
            check(len(copies) == 1, f"{topic}: {len(copies)} retained messages: {describe(copies)}")
            check(copies[0].retain, f"{topic}: the retained message arrived without the retain flag")
            note_qos(s, copies[0], qos, granted)
        a.disconnect()

        a, _ = s.connect(CLIENT_A, clean=True)
        for topic, qos in retained:
            a.publish(topic, b"", qos, retain=True)
        a.subscribe_granted((WILDTOPICS[5], 2))
        got = a.settle()
        left = [m for m in got if m.topic in payloads]
        check(not left, f"retained messages still sent after they were cleared: {describe(left)}")
        a.disconnect()
    finally:
        clear_retained(s, [topic for topic, _ in retained])


def clear_retained(s: Scenario, topics: list[str]) -> None:
    """Best effort: empty retained messages on `topics`, so a failed scenario leaves none behind."""
    try:
        probe, _ = s.connect(CLIENT_B, clean=True)
        for topic in topics:
            probe.publish(topic, b"", 1, retain=True, must_complete=False)
        probe.disconnect()
    except Exception:
        pass


def scenario_zero_length_client_id(s: Scenario) -> None:
    """An empty client id is refused with clean session 0 (there would be no session to resume) and
    accepted with clean session 1 (the server assigns one)."""
    with RawConnection(s.broker.port) as raw:
        raw.send(connect_packet(s.version, b"", clean=False))
        outcome, code = raw.outcome_of_connect()
        check(outcome == "closed" or (outcome == "CONNACK" and code != 0),
              f"empty client id with clean session 0: expected a refusal, got {said(outcome, code)}")
    # paho-mqtt answers a refusal of an empty client id itself (it would retry with a random id, or, as
    # here, just close), so the CONNACK's code is read from the wire first.
    with RawConnection(s.broker.port) as raw:
        raw.send(connect_packet(s.version, b"", clean=True))
        outcome, code = raw.outcome_of_connect()
        check(outcome == "CONNACK" and code == 0,
              f"empty client id with clean session 1: expected CONNACK 0 (accepted), got "
              f"{said(outcome, code)}")
    probe, _ = s.connect("", clean=True)
    probe.disconnect()


def scenario_offline_queueing(s: Scenario) -> None:
    """A persistent session subscribed to +/+ gets, when it reconnects, the QoS 1 and 2 messages published
    while it was away (QoS 0 ones too, optionally), each once."""
    # 3.1.1: clean session 0. MQTT 5 (as the Paho suite): clean start 1 with a Session Expiry Interval.
    a, _ = s.connect(CLIENT_A, clean=s.v5, session_expiry=99999 if s.v5 else None)
    granted = a.subscribe_granted((WILDTOPICS[5], 2))[0]
    a.disconnect()

    b, ack = s.connect(CLIENT_B, clean=True)
    check(not ack.session_present, "CONNACK of a clean session says session present")
    payloads = [unique(f"offline qos {qos}") for qos in range(3)]
    for qos, (topic, payload) in enumerate(zip(TOPICS[1:4], payloads)):
        b.publish(topic, payload, qos)
    b.disconnect()

    a, ack = s.connect(CLIENT_A, clean=False, session_expiry=99999 if s.v5 else None)
    if not s.v5:
        check(ack.session_present, "reconnecting to the persistent session: CONNACK session present = 0")
    elif not ack.session_present:
        s.notes.append("CONNACK session present = 0")
    a.wait_payloads(payloads[1], payloads[2], what="the QoS 1 and 2 messages published while away")
    got = a.settle()
    for qos, payload in enumerate(payloads):
        copies = [m for m in got if m.payload == payload]
        check(len(copies) <= 1, f"the QoS {qos} message arrived {len(copies)} times: {describe(copies)}")
        if copies:
            note_qos(s, copies[0], qos, granted)
    s.notes.append("QoS 0 queued" if any(m.payload == payloads[0] for m in got) else "QoS 0 not queued")
    a.disconnect()


def scenario_overlapping(s: Scenario) -> None:
    """With TopicA/# (QoS 2) and TopicA/+ (QoS 1) both matching, a QoS 2 publish arrives either once at
    QoS 2 or once per subscription (QoS 2 and QoS 1)."""
    a, _ = s.connect(CLIENT_A)
    a.subscribe_granted((WILDTOPICS[6], 2), (WILDTOPICS[0], 1))
    payload = unique("overlapping topic filters")
    a.publish(TOPICS[3], payload, 2)
    a.wait_payloads(payload, what="the message matching both subscriptions")
    copies = [m for m in a.settle(topic=MARKER_TOPIC_A) if m.payload == payload]
    qoss = sorted(m.qos for m in copies)
    if len(copies) == 1:
        check(qoss == [2], f"one copy, at QoS {qoss[0]}: expected the highest subscription QoS, 2")
        s.notes.append("one copy")
    else:
        check(qoss == [1, 2], f"{len(copies)} copies at QoS {qoss}: expected one copy at QoS 2, "
                              "or one per subscription at QoS 1 and 2")
        s.notes.append("one copy per subscription")
    a.disconnect()


def scenario_keepalive(s: Scenario) -> None:
    """A client with a keep-alive of KEEPALIVE_S seconds that goes silent (no PINGREQ) is disconnected by
    the broker within 1.5 times that, and its will is published."""
    b, _ = s.connect(CLIENT_B, keepalive=0)
    granted = b.subscribe_granted((TOPICS[4], 2))[0]
    will = unique("keepalive expiry")
    a, ack = s.connect(CLIENT_A, keepalive=KEEPALIVE_S, will=(TOPICS[4], will))
    keepalive = KEEPALIVE_S
    if ack.properties is not None and hasattr(ack.properties, "ServerKeepAlive"):
        keepalive = ack.properties.ServerKeepAlive
        s.notes.append(f"server keep-alive {keepalive} s")
    silent_since = time.monotonic()
    a.go_silent()
    b.wait_payloads(will, timeout=1.5 * keepalive + KEEPALIVE_GRACE_S,
                    what=f"the will of a client silent past 1.5 x its {keepalive} s keep-alive")
    took = time.monotonic() - silent_since
    late = took > 1.5 * keepalive + 1.0
    s.notes.append(f"will after {took:.1f} s" + (f", later than 1.5 x {keepalive} s" if late else ""))
    copies = [m for m in b.settle(topic=TOPICS[4]) if m.payload == will]
    check(len(copies) == 1, f"the will arrived {len(copies)} times")
    note_qos(s, copies[0], 0, granted)
    b.disconnect()


def scenario_redelivery(s: Scenario) -> None:
    """A persistent session that stopped acknowledging (Paho's 'pause') and disconnected with a QoS 1 and
    a QoS 2 delivery incomplete gets both again when it reconnects, each once."""
    expiry = 99999 if s.v5 else None
    b, _ = s.connect(CLIENT_B, clean=False, session_expiry=expiry)
    granted = b.subscribe_granted((WILDTOPICS[6], 2))[0]
    b.pause()
    payloads = [unique("redelivery qos 1"), unique("redelivery qos 2")]
    b.publish(TOPICS[1], payloads[0], 1)
    b.publish(TOPICS[3], payloads[1], 2)
    # The broker should now have sent both and be waiting for PUBACK and PUBREC. Not a requirement of the
    # scenario (a broker may also hold them back), but worth knowing when redelivery fails.
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while len(b.client.dropped) < 2 and time.monotonic() < deadline and not b.disconnected.is_set():
        b.disconnected.wait(0.02)
    if len(b.client.dropped) < 2:
        s.notes.append(f"only {len(b.client.dropped)} of 2 deliveries sent before the disconnect")
    b.disconnect()
    check(not b.messages, f"messages were processed while paused: {describe(b.messages)}")

    b, _ = s.connect(CLIENT_B, clean=False, session_expiry=expiry)
    b.wait_payloads(*payloads, what="redelivery of the unacknowledged QoS 1 and QoS 2 messages")
    got = b.settle(topic=MARKER_TOPIC_A)
    for payload, qos in zip(payloads, (1, 2)):
        copies = [m for m in got if m.payload == payload]
        check(len(copies) == 1, f"the QoS {qos} message arrived {len(copies)} times: {describe(copies)}")
        note_qos(s, copies[0], qos, granted)
    b.disconnect()


def scenario_subscribe_failure(s: Scenario) -> None:
    """A subscription to test/nosubscribe, a filter the broker does not allow, gets SUBACK 0x80."""
    a, _ = s.connect(CLIENT_A)
    codes = a.subscribe((NOSUBSCRIBE_TOPIC, 2))
    check(codes == [0x80], f"SUBACK for {NOSUBSCRIBE_TOPIC!r}: {', '.join(f'0x{c:02x}' for c in codes)}, "
                           "expected 0x80 (the broker allows this filter)")
    a.disconnect()


def scenario_dollar_topics(s: Scenario) -> None:
    """Filters starting with a wildcard do not match topic names starting with $ (MQTT-4.7.2-1).

    As in the Paho suite, a client subscribed to +/+ publishes to $TopicA/B and must not get it back. Here
    the subscription also has #, and a second client publishes too, to $TopicA/B and to
    $aws/things/{its id}/TopicA: that is the one kind of $ topic sprig lets a device publish to (its own
    thing's), so without it the scenario would only show that sprig drops $TopicA/B as not granted. The
    second client's connecting may also make a broker publish $ topics of its own (sprig: presence
    events); none of it may reach the wildcard subscriptions either.
    """
    a, _ = s.connect(CLIENT_A, keepalive=0)
    a.subscribe_granted((WILDTOPICS[5], 2), (WILDTOPICS[2], 2))
    if not a.publish("$" + TOPICS[1], unique("dollar"), 1, must_complete=False):
        s.notes.append(f"no PUBACK for ${TOPICS[1]}")
    b, _ = s.connect(CLIENT_B)
    for topic in ("$" + TOPICS[1], f"$aws/things/{CLIENT_B}/TopicA"):
        if not b.publish(topic, unique("dollar"), 1, must_complete=False):
            s.notes.append(f"no PUBACK for {topic}")
    got = a.settle(publisher=b)
    dollar = [m for m in got if m.topic.startswith("$")]
    check(not dollar, f"+/+ and # matched $ topics: {describe(dollar)}")
    b.disconnect()
    a.disconnect()


def scenario_unsubscribe(s: Scenario) -> None:
    """After subscribing to TopicA, TopicA/B and Topic/C and unsubscribing from TopicA, a client gets what
    is published to TopicA/B and Topic/C, but not to TopicA."""
    b, _ = s.connect(CLIENT_B)
    for topic in TOPICS[:3]:
        granted = b.subscribe_granted((topic, 2))[0]
    b.unsubscribe(TOPICS[0])
    a, _ = s.connect(CLIENT_A)
    payloads = {topic: unique(f"unsubscribe {topic}") for topic in TOPICS[:3]}
    for topic, payload in payloads.items():
        a.publish(topic, payload, 1)
    b.wait_payloads(payloads[TOPICS[1]], payloads[TOPICS[2]], what="the messages on TopicA/B and Topic/C")
    got = [m for m in b.settle(publisher=a, topic=TOPICS[2]) if m.payload in payloads.values()]
    check(sorted(m.topic for m in got) == sorted(TOPICS[1:3]),
          f"expected one message each on TopicA/B and Topic/C, got {describe(got)}")
    note_qos(s, got[0], 1, granted)
    a.disconnect()
    b.disconnect()


def scenario_session_expiry(s: Scenario) -> None:
    """MQTT 5 Session Expiry Interval: 0 ends the session at disconnect; N keeps it N seconds and no longer;
    a DISCONNECT may set a new interval (longer, or 0 to end it at once)."""
    def reconnect(expiry: int) -> tuple[Probe, bool]:
        probe, ack = s.connect(CLIENT_A, clean=False, session_expiry=expiry)
        return probe, ack.session_present

    a, ack = s.connect(CLIENT_A, clean=True, session_expiry=0)
    check(not ack.session_present, "clean start: CONNACK session present = 1")
    a.subscribe_granted((TOPICS[0], 2))
    a.disconnect()
    a, present = reconnect(0)
    check(not present, "session expiry 0: the session outlived its connection (session present = 1)")
    a.disconnect()

    a, _ = s.connect(CLIENT_A, clean=True, session_expiry=2)
    a.subscribe_granted((TOPICS[0], 2))
    a.disconnect()
    a, present = reconnect(2)
    check(present, "session expiry 2 s: no session present right after the disconnect")
    a.disconnect()
    time.sleep(2 + 1.5)  # the subject of the test: past the session's expiry interval
    a, present = reconnect(2)
    check(not present, "session expiry 2 s: the session was still present 3.5 s after the disconnect")
    a.disconnect()

    a, _ = s.connect(CLIENT_A, clean=True, session_expiry=1)
    a.subscribe_granted((TOPICS[0], 2))
    a.disconnect(session_expiry=4)
    time.sleep(1 + 0.5)  # past the CONNECT's interval (1 s), within the DISCONNECT's (4 s)
    a, present = reconnect(1)
    check(present, "DISCONNECT with session expiry 4 s (CONNECT: 1 s): no session present after 1.5 s")
    a.disconnect(session_expiry=0)
    a, present = reconnect(1)
    check(not present, "DISCONNECT with session expiry 0: the session was still present")
    a.disconnect()


def scenario_subscribe_options(s: Scenario) -> None:
    """MQTT 5 subscription options (client_test5's test_subscribe_options): No Local (a publisher does not
    get its own message back), Retain As Published (a live message keeps its retain flag), Retain Handling
    0 (retained messages on every SUBSCRIBE), 1 (only on a new subscription) and 2 (never)."""
    a, _ = s.connect(CLIENT_A)
    b, _ = s.connect(CLIENT_B)
    for probe in (a, b):
        probe.subscribe_options(TOPICS[0], qos=2, noLocal=True)
    payload = unique("noLocal")
    a.publish(TOPICS[0], payload, 1)
    b.wait_payloads(payload, what="the other client's message on a noLocal subscription")
    own = [m for m in a.settle(publisher=b, topic=TOPICS[0]) if m.payload == payload]
    check(not own, f"noLocal: the publisher got its own message back: {describe(own)}")
    a.disconnect()
    b.disconnect()

    a, _ = s.connect(CLIENT_A)
    try:
        a.subscribe_options(TOPICS[0], qos=2, retainAsPublished=True)
        plain, retained = unique("retain as published false"), unique("retain as published true")
        a.publish(TOPICS[0], plain, 1, retain=False)
        a.publish(TOPICS[0], retained, 1, retain=True)
        got = {m.payload: m.retain for m in a.wait_payloads(plain, retained, what="both messages")}
        check(got[plain] is False and got[retained] is True,
              f"retainAsPublished: retain flags {got[plain]} and {got[retained]}, expected False and True")
        a.disconnect()

        retained_messages = [(TOPICS[1], 0), (TOPICS[2], 1), (TOPICS[3], 2)]
        a, _ = s.connect(CLIENT_A)
        payloads = {topic: unique(f"retain handling qos {qos}") for topic, qos in retained_messages}
        for topic, qos in retained_messages:
            a.publish(topic, payloads[topic], qos, retain=True)

        def after_subscribing(probe: Probe, handling: int) -> list[Message]:
            probe.forget_messages()
            granted = probe.subscribe_options(WILDTOPICS[5], qos=2, retainHandling=handling)
            got = [m for m in probe.settle() if m.payload in payloads.values()]
            for m in got:
                check(m.retain, f"retainHandling {handling}: {m.topic} arrived without the retain flag")
                note_qos(s, m, dict(retained_messages)[m.topic], granted)
            return got

        for handling, connection, expected in ((1, a, 3), (1, a, 0), (2, None, 0), (2, "same", 0),
                                               (0, None, 3), (0, "same", 3)):
            if connection is None:
                a.disconnect()
                a, _ = s.connect(CLIENT_A)
            got = after_subscribing(a, handling)
            check(len(got) == expected, f"retainHandling {handling}: {len(got)} retained messages on "
                                        f"subscribing, expected {expected}: {describe(got)}")
        a.disconnect()
    finally:
        clear_retained(s, [TOPICS[0], TOPICS[1], TOPICS[2], TOPICS[3]])


def scenario_maximum_packet_size(s: Scenario) -> None:
    """MQTT 5 Maximum Packet Size set by the client (client_test5's test_maximum_packet_size): with 64
    bytes, a message that fits arrives, a larger one is not sent (nor anything else in its place)."""
    a, _ = s.connect(CLIENT_A, properties={"MaximumPacketSize": 64})
    a.subscribe_granted((TOPICS[0], 2))
    small, large = b"." * 32, b"," * 64
    a.publish(TOPICS[0], small, 0)
    a.wait_payloads(small, what="the message that fits in 64 bytes")
    a.publish(TOPICS[0], large, 1)
    got = [m for m in a.settle(topic=TOPICS[0]) if m.payload == large]
    check(not got, f"a PUBLISH larger than the client's Maximum Packet Size was sent: {describe(got)}")
    a.disconnect()


def scenario_flow_control(s: Scenario) -> None:
    """MQTT 5 Receive Maximum of the server (client_test5's test_flow_control2): a client that sends one QoS 2
    publish more than the CONNACK's Receive Maximum, none completed, gets DISCONNECT 0x93."""
    a, ack = s.connect(CLIENT_A)
    receive_maximum = getattr(ack.properties, "ReceiveMaximum", 65535)
    a.disconnect()
    with RawConnection(s.broker.port) as raw:
        raw.send(connect_packet(s.version, CLIENT_A.encode(), clean=True))
        outcome, code = raw.outcome_of_connect()
        check(outcome == "CONNACK" and code == 0, f"raw CONNECT: expected CONNACK 0, got {said(outcome, code)}")
        raw.send(b"".join(publish_packet_v5(TOPICS[0].encode(), b"flow control", qos=2, pkid=pkid)
                          for pkid in range(1, receive_maximum + 2)))
        reason = raw.disconnect_reason(timeout=max(STEP_TIMEOUT_S, receive_maximum / 50))
        seen = "no DISCONNECT" if reason is None else f"DISCONNECT 0x{reason:02x}"
        check(reason == 0x93, f"{receive_maximum + 1} QoS 2 publishes with a Receive Maximum of "
                              f"{receive_maximum}: {seen}, expected DISCONNECT 0x93")


def scenario_client_topic_alias(s: Scenario) -> None:
    """MQTT 5 topic aliases sent by the client (client_test5's test_client_topic_alias): alias 0 ends the
    connection; within the CONNACK's Topic Alias Maximum a PUBLISH with a topic sets an alias and one
    with an empty topic uses it; aliases end with the connection."""
    with RawConnection(s.broker.port) as raw:
        raw.send(connect_packet(s.version, CLIENT_A.encode(), clean=True))
        raw.outcome_of_connect()
        raw.send(publish_packet_v5(TOPICS[0].encode(), b"topic alias 0", qos=1, pkid=1, topic_alias=0))
        closed, seen = raw.closed_within()
        check(closed and 4 not in seen, f"topic alias 0 was accepted (packets after it: {seen})")
    a, ack = s.connect(CLIENT_A)
    maximum = getattr(ack.properties, "TopicAliasMaximum", 0)
    a.disconnect()
    if maximum == 0:
        s.notes.append("no topic aliases offered")
        return
    b, _ = s.connect(CLIENT_B)
    b.subscribe_granted((TOPICS[0], 2))
    named, aliased = unique("topic alias 1"), unique("topic alias 2")
    with RawConnection(s.broker.port) as raw:
        raw.send(connect_packet(s.version, CLIENT_A.encode(), clean=True))
        raw.outcome_of_connect()
        raw.send(publish_packet_v5(TOPICS[0].encode(), named, topic_alias=1))
        raw.send(publish_packet_v5(b"", aliased, topic_alias=1))
        got = b.wait_payloads(named, aliased, what="the messages published with a topic alias")
        check(all(m.topic == TOPICS[0] for m in got if m.payload in (named, aliased)),
              f"aliased messages on the wrong topic: {describe(got)}")
    with RawConnection(s.broker.port) as raw:
        raw.send(connect_packet(s.version, CLIENT_A.encode(), clean=False))
        raw.outcome_of_connect()
        raw.send(publish_packet_v5(b"", unique("topic alias 4"), topic_alias=1))
        closed, seen = raw.closed_within()
        check(closed, "an alias of an earlier connection was accepted (the connection stayed open)")
    b.disconnect()


def scenario_will_delay(s: Scenario) -> None:
    """MQTT 5 Will Delay Interval (client_test5's test_will_delay): a client whose connection drops gets its
    will published after the delay or when its session ends, whichever comes first: delay 3 s and session
    expiry 5 s, after about 3 s (the suite allows 4 +- 1 s); delay 5 s and expiry 0, at once; delay 5 s
    and expiry 2 s, after about 2 s (the suite: 3 +- 1 s)."""
    b, _ = s.connect(CLIENT_B)
    b.subscribe_granted((TOPICS[0], 2))
    for delay, expiry, expected, margin in ((3, 5, 4, 1), (5, 0, 1, 1), (5, 2, 3, 1)):
        will = unique(f"will delay {delay} expiry {expiry}")
        a, ack = s.connect(CLIENT_A, session_expiry=expiry, will=(TOPICS[0], will),
                           will_properties={"WillDelayInterval": delay})
        b.forget_messages()
        lost = time.monotonic()
        threading.Thread(target=a.drop_connection, daemon=True).start()
        b.wait_payloads(will, timeout=expected + margin + STEP_TIMEOUT_S,
                        what=f"the will (delay {delay} s, session expiry {expiry} s)")
        took = time.monotonic() - lost
        s.notes.append(f"will after {took:.1f} s (delay {delay}, expiry {expiry})")
        check(abs(took - expected) <= margin, f"delay {delay} s, session expiry {expiry} s: the will came "
                                              f"after {took:.1f} s, expected {expected} +- {margin} s")
        a, _ = s.connect(CLIENT_A, session_expiry=0)
        a.disconnect()
    b.disconnect()


def scenario_assigned_client_id(s: Scenario) -> None:
    """MQTT 5 (client_test5's test_assigned_clientid): a CONNECT with an empty client id and clean start is
    accepted, and the CONNACK's Assigned Client Identifier says the id the server gave it."""
    probe, ack = s.connect("", clean=True)
    assigned = getattr(ack.properties, "AssignedClientIdentifier", "")
    check(assigned != "", "CONNACK without an Assigned Client Identifier")
    s.notes.append(f"assigned {assigned[:5]}...")
    probe.disconnect()


def scenario_clean_retained(s: Scenario) -> None:
    """client_test5's cleanup (cleanRetained): a client whose id has a space, "clean retained", subscribes
    to # and clears the retained messages it is sent with empty retained publishes."""
    setter, _ = s.connect(CLIENT_B)
    payload = unique("left behind")
    setter.publish(TOPICS[1], payload, 1, retain=True)
    setter.disconnect()
    cleaner, _ = s.connect("clean retained")
    cleaner.subscribe_granted(("#", 0))
    got = cleaner.wait_payloads(payload, what="the retained message, on subscribing to #")
    for message in got:
        if message.retain:
            cleaner.publish(message.topic, b"", 0, retain=True)
    cleaner.forget_messages()
    cleaner.subscribe_granted((TOPICS[1], 0))
    left = [m for m in cleaner.settle(topic=MARKER_TOPIC) if m.payload == payload]
    check(not left, f"the retained message is still there after clearing it: {describe(left)}")
    cleaner.disconnect()


def publish_properties(**values) -> Properties:
    """PUBLISH properties by paho's names (UserProperty takes a list of pairs)."""
    properties = Properties(PacketTypes.PUBLISH)
    for name, value in values.items():
        if name == "UserProperty":
            for pair in value:
                properties.UserProperty = pair
        else:
            setattr(properties, name, value)
    return properties


def scenario_properties(s: Scenario, values: dict, check_received: Callable[[Properties], Optional[str]]) -> None:
    """client_test5's test_user_properties and test_payload_format: a client subscribed to TopicA (QoS 2)
    publishes to it at QoS 0, 1 and 2 with these properties; each message arrives with them, at the lower
    of its QoS and the granted one."""
    a, _ = s.connect(CLIENT_A)
    granted = a.subscribe_granted((TOPICS[0], 2))[0]
    payloads = [unique(f"properties qos {qos}") for qos in range(3)]
    for qos, payload in enumerate(payloads):
        a.publish(TOPICS[0], payload, qos, properties=publish_properties(**values))
    got = {m.payload: m for m in a.wait_payloads(*payloads, what="the three messages")}
    for qos, payload in enumerate(payloads):
        message = got[payload]
        check(message.properties is not None, f"QoS {qos}: no properties")
        problem = check_received(message.properties)
        check(problem is None, f"QoS {qos}: {problem}")
        check(message.qos == min(qos, granted), f"QoS {qos} publish to a subscription granted {granted} "
                                                 f"arrived at QoS {message.qos}")
    a.disconnect()


def scenario_user_properties(s: Scenario) -> None:
    pairs = [("a", "2"), ("c", "3")]

    def received(properties: Properties) -> Optional[str]:
        got = getattr(properties, "UserProperty", [])
        return None if sorted(got) == pairs else f"user properties {got}, expected {pairs}"
    scenario_properties(s, {"UserProperty": pairs}, received)


def scenario_payload_format(s: Scenario) -> None:
    def received(properties: Properties) -> Optional[str]:
        got = (getattr(properties, "PayloadFormatIndicator", None), getattr(properties, "ContentType", None))
        return None if got == (1, "My name") else f"payload format and content type {got}, expected (1, 'My name')"
    scenario_properties(s, {"PayloadFormatIndicator": 1, "ContentType": "My name"}, received)


def scenario_publication_expiry(s: Scenario) -> None:
    """client_test5's test_publication_expiry: messages published while a persistent session is away, with
    a Message Expiry Interval of 1 s and of 6 s: after 3 s, the session gets only the 6 s ones, each with
    less than 6 s left."""
    b, _ = s.connect(CLIENT_B, session_expiry=99999)
    b.subscribe_granted((TOPICS[0], 2))
    b.disconnect(session_expiry=999999999)
    a, _ = s.connect(CLIENT_A)
    expire = [unique("qos 1 - expire"), unique("qos 2 - expire")]
    stay = [unique("qos 1 - don't expire"), unique("qos 2 - don't expire")]
    for payloads, interval in ((expire, 1), (stay, 6)):
        for qos, payload in zip((1, 2), payloads):
            a.publish(TOPICS[0], payload, qos, properties=publish_properties(MessageExpiryInterval=interval))
    a.disconnect()
    time.sleep(3)  # the subject of the test: past the first messages' expiry
    b, _ = s.connect(CLIENT_B, clean=False, session_expiry=99999)
    b.wait_payloads(*stay, what="the messages that had not expired")
    a, _ = s.connect(CLIENT_A)
    got = [m for m in b.settle(publisher=a, topic=TOPICS[0]) if m.payload in expire + stay]
    check(not [m for m in got if m.payload in expire], f"expired messages were delivered: {describe(got)}")
    for m in got:
        left = getattr(m.properties, "MessageExpiryInterval", None)
        check(left is not None and left < 6, f"{m.payload!r}: Message Expiry Interval {left}, expected < 6")
    a.disconnect()
    b.disconnect(session_expiry=0)


def scenario_request_response(s: Scenario) -> None:
    """client_test5's test_request_response: a request with a Response Topic and Correlation Data arrives
    with both; the responder publishes its response there, with the request's properties, and the
    requester gets it (both subscribed with noLocal)."""
    a, _ = s.connect(CLIENT_A)
    b, _ = s.connect(CLIENT_B)
    for probe in (a, b):
        probe.subscribe_options(TOPICS[0], qos=2, noLocal=True)
    request = unique("request")
    a.publish(TOPICS[0], request, 1, properties=publish_properties(ResponseTopic=TOPICS[0],
                                                                   CorrelationData=b"334"))
    got = [m for m in b.wait_payloads(request, what="the request") if m.payload == request][0]
    props = got.properties
    check(getattr(props, "ResponseTopic", None) == TOPICS[0] and getattr(props, "CorrelationData", None) == b"334",
          f"the request arrived with Response Topic {getattr(props, 'ResponseTopic', None)!r} and Correlation "
          f"Data {getattr(props, 'CorrelationData', None)!r}")
    response = unique("response")
    reply = publish_properties(CorrelationData=props.CorrelationData)
    b.publish(props.ResponseTopic, response, 1, properties=reply)
    answer = [m for m in a.wait_payloads(response, what="the response") if m.payload == response][0]
    check(getattr(answer.properties, "CorrelationData", None) == b"334", "the response lost its Correlation Data")
    a.disconnect()
    b.disconnect()


def scenario_shared_subscriptions(s: Scenario) -> None:
    """client_test5's test_shared_subscriptions: two clients subscribed to $share/sharename/x and to TopicA
    each get a message on TopicA, and only one of them a message on x."""
    a, _ = s.connect(CLIENT_A)
    b, _ = s.connect(CLIENT_B)
    for probe in (a, b):
        probe.subscribe_granted(("$share/sharename/x", 2), (TOPICS[0], 2))
    everyone = unique("to both")
    b.publish(TOPICS[0], everyone, 0)
    for probe in (a, b):
        probe.wait_payloads(everyone, what="the message on TopicA")
    shared = unique("to one")
    b.publish("x", shared, 1)
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while time.monotonic() < deadline and not any(m.payload == shared for p in (a, b) for m in p.messages):
        time.sleep(0.05)
    a.settle(publisher=b, topic=TOPICS[0])
    copies = [m for p in (a, b) for m in p.messages if m.payload == shared]
    check(len(copies) == 1, f"the message on the shared subscription arrived {len(copies)} times")
    a.disconnect()
    b.disconnect()


def scenario_server_keep_alive(s: Scenario) -> None:
    """client_test5's test_server_keep_alive, for a keep-alive above what the broker allows: the suite's
    broker is configured with a most of 60 s and asked for 120; here 3600 s is asked of the broker as it
    is configured, and the CONNACK must say what it gives instead (Server Keep Alive)."""
    a, ack = s.connect(CLIENT_A, keepalive=3600)
    given = getattr(ack.properties, "ServerKeepAlive", None)
    check(given is not None and given < 3600, f"keep-alive 3600 s asked: Server Keep Alive {given}")
    s.notes.append(f"server keep-alive {given} s")
    a.disconnect()


def scenario_client_receive_maximum(s: Scenario) -> None:
    """client_test5's test_flow_control1: a client with a Receive Maximum of 2, subscribed to TopicA,
    publishes three QoS 1 messages there and acknowledges none of what it gets: all three PUBACKs come,
    and two PUBLISHes, not the third, until it acknowledges the first."""
    properties = b"\x21" + (2).to_bytes(2, "big")  # Receive Maximum 2
    body = _string(b"MQTT") + bytes([5, 0x02]) + (60).to_bytes(2, "big")
    body += _remaining_length(len(properties)) + properties + _string(CLIENT_A.encode())
    with RawConnection(s.broker.port) as raw:
        raw.send(b"\x10" + _remaining_length(len(body)) + body)
        outcome, code = raw.outcome_of_connect()
        check(outcome == "CONNACK" and code == 0, f"raw CONNECT: expected CONNACK 0, got {said(outcome, code)}")
        subscribe = (1).to_bytes(2, "big") + b"\x00" + _string(TOPICS[0].encode()) + b"\x02"
        raw.send(b"\x82" + _remaining_length(len(subscribe)) + subscribe)
        packet = raw.read_packet()
        check(packet is not None and packet[0] >> 4 == 9, f"SUBACK expected, got {packet}")
        raw.send(b"".join(publish_packet_v5(TOPICS[0].encode(), unique(f"flow {i}"), qos=1, pkid=i)
                          for i in (1, 2, 3)))
        publishes, acks = [], 0
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while (acks < 3 or len(publishes) < 2) and time.monotonic() < deadline:
            packet = raw.read_packet(max(0.01, deadline - time.monotonic()))
            check(packet is not None, "the connection closed")
            if packet[0] >> 4 == 3:
                publishes.append(packet)
            elif packet[0] >> 4 == 4:
                acks += 1
        check(acks == 3 and len(publishes) == 2, f"{acks} PUBACKs and {len(publishes)} PUBLISHes, "
                                                  "expected 3 and 2")
        try:
            extra = raw.read_packet(timeout=1.0)  # the subject: nothing more within a second
        except socket.timeout:
            extra = None
        check(extra is None, f"a third PUBLISH beyond the Receive Maximum of 2: {extra}")
        first = publishes[0][1]
        topic_length = int.from_bytes(first[:2], "big")
        pkid = first[2 + topic_length:4 + topic_length]
        raw.send(b"\x40\x02" + pkid)
        packet = raw.read_packet()
        check(packet is not None and packet[0] >> 4 == 3, f"the third PUBLISH after the PUBACK: got {packet}")


def scenario_subscription_identifiers(s: Scenario) -> None:
    """client_test5's test_subscribe_identifiers: a message carries the Subscription Identifier of the
    subscription it came for. With two of a client's subscriptions matching (ids 2 and 3), the suite
    expects one copy with both; MQTT 5 §3.3.4 allows one copy per subscription too, each with its own id,
    which is what rumqttd's router sends: either is a pass."""
    a, _ = s.connect(CLIENT_A)
    a.subscribe_options(TOPICS[0], identifier=456789, qos=2)
    b, _ = s.connect(CLIENT_B)
    b.subscribe_options(TOPICS[0], identifier=2, qos=2)
    b.subscribe_options(TOPICS[0] + "/#", identifier=3, qos=2)
    payload = unique("sub identifier test")
    b.publish(TOPICS[0], payload, 1)
    got = [m for m in a.wait_payloads(payload, what="the message") if m.payload == payload]
    ids = getattr(got[0].properties, "SubscriptionIdentifier", None)
    check(ids == [456789], f"Subscription Identifier {ids}, expected [456789]")
    b.wait_payloads(payload, what="the message")
    copies = [m for m in b.settle(publisher=a, topic=TOPICS[0]) if m.payload == payload]
    seen = sorted(sorted(getattr(m.properties, "SubscriptionIdentifier", [])) for m in copies)
    check(seen in ([[2, 3]], [[2], [3]]), f"copies with Subscription Identifiers {seen}: expected one copy "
                                          "with [2, 3], or one per subscription with [2] and [3]")
    s.notes.append("one copy per subscription" if len(copies) == 2 else "one copy")
    a.disconnect()
    b.disconnect()


def scenario_server_topic_alias(s: Scenario) -> None:
    """client_test5's test_server_topic_alias: a client with a Topic Alias Maximum of 1 gets its messages
    on TopicA with an alias: the first with the topic too, the next ones with an empty topic; a client with
    none gets no alias."""
    a, _ = s.connect(CLIENT_A, properties={"TopicAliasMaximum": 1})
    a.subscribe_granted((TOPICS[0], 2))
    payloads = [unique(f"topic alias qos {qos}") for qos in range(3)]
    for qos, payload in enumerate(payloads):
        a.publish(TOPICS[0], payload, qos)
    got = a.wait_messages(lambda ms: len([m for m in ms if m.payload in payloads]) == 3, "the three messages")
    got = [m for m in got if m.payload in payloads]
    aliases = [getattr(m.properties, "TopicAlias", None) for m in got]
    check(aliases[0] is not None and aliases[0] > 0 and got[0].topic == TOPICS[0],
          f"first message: topic {got[0].topic!r}, alias {aliases[0]}: expected {TOPICS[0]!r} with an alias")
    check(aliases[1:] == [aliases[0]] * 2 and [m.topic for m in got[1:]] == ["", ""],
          f"next messages: topics {[m.topic for m in got[1:]]}, aliases {aliases[1:]}: expected empty "
          f"topics with alias {aliases[0]}")
    a.disconnect()
    a, _ = s.connect(CLIENT_A)
    a.subscribe_granted((TOPICS[0], 2))
    payload = unique("no topic alias")
    a.publish(TOPICS[0], payload, 1)
    got = [m for m in a.wait_payloads(payload, what="the message") if m.payload == payload]
    check(getattr(got[0].properties, "TopicAlias", None) is None, "a topic alias for a client that takes none")
    a.disconnect()


SCENARIOS: dict[str, list[tuple[str, Callable[[Scenario], None]]]] = {
    V311: [
        ("basic", scenario_basic),
        ("retained messages", scenario_retained),
        ("zero-length client id", scenario_zero_length_client_id),
        ("offline message queueing", scenario_offline_queueing),
        ("overlapping subscriptions", scenario_overlapping),
        ("keep-alive", scenario_keepalive),
        ("redelivery on reconnect", scenario_redelivery),
        ("subscribe failure", scenario_subscribe_failure),
        ("$ topics", scenario_dollar_topics),
        ("unsubscribe", scenario_unsubscribe),
    ],
    V5: [
        ("offline message queueing", scenario_offline_queueing),
        ("redelivery on reconnect", scenario_redelivery),
        ("session expiry", scenario_session_expiry),
        ("unsubscribe", scenario_unsubscribe),
        ("keep-alive", scenario_keepalive),
        ("subscribe options", scenario_subscribe_options),
        ("maximum packet size", scenario_maximum_packet_size),
        ("flow control (server receive maximum)", scenario_flow_control),
        ("flow control (client receive maximum)", scenario_client_receive_maximum),
        ("client topic aliases", scenario_client_topic_alias),
        ("will delay", scenario_will_delay),
        ("assigned client id", scenario_assigned_client_id),
        ("client id with a space (clean retained)", scenario_clean_retained),
        ("user properties", scenario_user_properties),
        ("payload format", scenario_payload_format),
        ("publication expiry", scenario_publication_expiry),
        ("request/response", scenario_request_response),
        ("shared subscriptions", scenario_shared_subscriptions),
        ("subscription identifiers", scenario_subscription_identifiers),
        ("server keep-alive", scenario_server_keep_alive),
        ("server topic aliases", scenario_server_topic_alias),
    ],
}


# -- running and reporting --------------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    passed: bool
    reason: str = ""
    notes: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0


def run_scenario(broker, version: str, name: str, function, verbose: bool) -> Result:
    """Runs one scenario on a fresh slate; any exception is the scenario's failure."""
    if not broker.alive():
        return Result(False, f"{broker.name} is not running (it exited earlier)")
    s = Scenario(broker, version)
    start = time.monotonic()
    try:
        try:
            clean_slate(s)
        except ScenarioFailed as e:
            raise ScenarioFailed(f"clean slate before the scenario: {e}")
        s.teardown()
        s.probes.clear()
        function(s)
        result = Result(True, notes=s.notes)
    except ScenarioFailed as e:
        result = Result(False, str(e), s.notes)
    except Exception as e:  # a bug or an unexpected client error: still this scenario's failure
        if verbose:
            traceback.print_exc()
        result = Result(False, f"{type(e).__name__}: {e}", s.notes)
    finally:
        s.teardown()
    if not result.passed and not broker.alive():
        result.reason += f" ({broker.name} exited)"
    result.seconds = time.monotonic() - start
    if verbose:
        status = "pass" if result.passed else f"FAIL: {result.reason}"
        print(f"  [{broker.name} MQTT {version}] {name}: {status} ({result.seconds:.1f} s)", flush=True)
    return result


def run_broker(broker, selected: Callable[[str], bool], verbose: bool
               ) -> tuple[dict[tuple[str, str], Result], Optional[str]]:
    """Starts `broker`, runs the selected scenarios of both versions on it, stops it. Returns the results
    and, when the broker could not be started, why."""
    results: dict[tuple[str, str], Result] = {}
    try:
        broker.start()
    except BrokerUnavailable as e:
        return results, str(e)
    try:
        for version, scenarios in SCENARIOS.items():
            for name, function in scenarios:
                if selected(name):
                    results[(version, name)] = run_scenario(broker, version, name, function, verbose)
    finally:
        broker.stop()
    return results, None


def shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


def cell(result: Optional[Result], unavailable: Optional[str]) -> str:
    """A table cell: pass (* when there are notes), or FAIL with the reason."""
    if result is None:
        return "not run" if not unavailable else "unavailable"
    if result.passed:
        return "pass" + (" *" if result.notes else "")
    return "FAIL: " + result.reason


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="print each scenario as it ends")
    parser.add_argument("-k", metavar="SUBSTRING", help="run only the scenarios whose name contains this")
    parser.add_argument("--broker", choices=["sprig", "mosquitto"], help="run against one broker only")
    args = parser.parse_args()
    selected = (lambda name: args.k.lower() in name.lower()) if args.k else (lambda name: True)

    log_dir = Path(os.environ.get("SPRIG_INTEROP_LOG_DIR", sprig_gateway.target_dir() / "interop-logs"))
    log_dir.mkdir(parents=True, exist_ok=True)
    brokers = [b for b in (SprigBroker(log_dir), MosquittoBroker(log_dir))
               if args.broker in (None, b.name)]
    started = time.monotonic()
    results: dict[str, dict[tuple[str, str], Result]] = {}
    unavailable: dict[str, Optional[str]] = {}
    for broker in brokers:
        results[broker.name], unavailable[broker.name] = run_broker(broker, selected, args.verbose)
        if unavailable[broker.name]:
            print(f"paho: {broker.name} unavailable: {unavailable[broker.name]}", flush=True)

    sprig = results.get("sprig", {})
    mosquitto = results.get("mosquitto", {})
    mosquitto_ran = "mosquitto" in results and not unavailable.get("mosquitto")
    mosquitto_label = next((b.label for b in brokers if b.name == "mosquitto"), "mosquitto")

    def mosquitto_passes(key: tuple[str, str]) -> bool:
        if mosquitto_ran:
            return key in mosquitto and mosquitto[key].passed
        return key[1] in MOSQUITTO_BASELINE[key[0]]

    required_passed = required_failed = 0
    failures: list[str] = []
    width = max(27, *(len(name) for scenarios in SCENARIOS.values() for name, _ in scenarios))
    for version, scenarios in SCENARIOS.items():
        names = [name for name, _ in scenarios if selected(name)]
        if not names:
            continue
        print()
        print(f"MQTT {version:<{width - 5}} {'sprig':<44} {mosquitto_label:<38} required of sprig")
        for name in names:
            key = (version, name)
            if key in KNOWN_DIFFERENCES:
                required = "no: known difference"
            elif not mosquitto_passes(key):
                required = "no: mosquitto fails it"
            else:
                required = "yes" + ("" if mosquitto_ran else " (baseline)")
            ours = sprig.get(key)
            theirs = mosquitto.get(key)
            print(f"{name:<{width}} {shorten(cell(ours, unavailable.get('sprig')), 44):<44} "
                  f"{shorten(cell(theirs, unavailable.get('mosquitto')), 38):<38} {required}")
            if required.startswith("yes") and "sprig" in results:
                if ours is not None and ours.passed:
                    required_passed += 1
                else:
                    required_failed += 1
            for broker_name, result in (("sprig", ours), ("mosquitto", theirs)):
                if result is not None and not result.passed:
                    failures.append(f"  {broker_name}, MQTT {version}, {name}: {result.reason}")
    if failures:
        print("\nfailures:")
        print("\n".join(failures))
    notes = [f"  {broker_name}, MQTT {version}, {name}: {'; '.join(result.notes)}"
             for broker_name, by_key in results.items() for (version, name), result in by_key.items()
             if result.notes]
    notes = [line for i, line in enumerate(notes) if line not in notes[:i]]
    if notes:
        print("\n* notes (not failures):")
        print("\n".join(notes))
    for key, why in KNOWN_DIFFERENCES.items():
        if selected(key[1]):
            print(f"known difference, MQTT {key[0]} {key[1]}: {why}")
    if not mosquitto_ran and "sprig" in results:
        print("mosquitto did not run: the scenarios required of sprig are MOSQUITTO_BASELINE's")
    logs = [str(b.log_path) for b in brokers if b.log_path.exists()]
    print(f"logs: {', '.join(logs) or 'none'}; {time.monotonic() - started:.0f} s")
    broken = [name for name, why in unavailable.items() if why and name == "sprig"]
    total = required_passed + required_failed
    print(f"  {NAME}: {required_passed}/{total} runs passed (sprig's required scenarios)")
    print(f"paho: {required_passed} passed, {required_failed} failed")
    return 1 if required_failed or broken else 0


def _stop_on_sigterm(signum, frame) -> None:
    """SIGTERM (e.g. run.sh's timeout) unwinds like Ctrl-C, so both brokers are stopped on the way out
    (mosquitto drops root for its own user, which clears the parent-death signal that would stop it)."""
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        sys.exit(main())
    except KeyboardInterrupt as interrupt:
        print(f"paho: interrupted ({interrupt or 'Ctrl-C'}); brokers stopped", file=sys.stderr)
        sys.exit(130)
