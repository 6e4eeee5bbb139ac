//! The local sides under test, each bridging `dt/q0/#` (QoS 0) and `dt/q1/#` (QoS 1) out to the fleet
//! broker under `sites/site-7/`: sprig's release binary with its uplink, or a second Debian mosquitto with
//! a bridge `connection`; each on a free loopback port with a directory of its own, killed when dropped.

use super::*;

/// Which local side, and for mosquitto, which bounds its bridge's queue has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Sprig,
    /// The bridge with the broker's queue unbounded (`max_queued_messages 0`) and sprig's window of 100
    /// in flight: the most it can be asked to keep.
    Mosquitto,
    /// The bridge on the broker's defaults: 1,000 messages queued beyond 20 in flight.
    MosquittoDefaults,
}

impl Kind {
    /// A name of `SPRIG_UPLINK_SIDES`.
    pub(super) fn parse(name: &str) -> Kind {
        match name.trim() {
            "sprig" => Kind::Sprig,
            "mosquitto" => Kind::Mosquitto,
            "mosquitto-default" => Kind::MosquittoDefaults,
            other => panic!(
                "SPRIG_UPLINK_SIDES: `{other}` is none of sprig, mosquitto, mosquitto-default"
            ),
        }
    }

    /// Its name in `SPRIG_UPLINK_SIDES`.
    pub(super) fn name(self) -> &'static str {
        match self {
            Kind::Sprig => "sprig",
            Kind::Mosquitto => "mosquitto",
            Kind::MosquittoDefaults => "mosquitto-default",
        }
    }

    /// The table's column head.
    pub(super) fn label(self) -> &'static str {
        match self {
            Kind::Sprig => "sprig uplink",
            Kind::Mosquitto => "mosquitto bridge, queue unbounded",
            Kind::MosquittoDefaults => "mosquitto bridge, default queue",
        }
    }

    /// What the benchmark sets for this side, as it is written in the side's configuration.
    pub(super) fn config(self, fleet_port: u16, outage: usize) -> String {
        match self {
            Kind::Sprig => format!("{SPRIG_LIMITS}{}", sprig_uplink(fleet_port, outage)),
            Kind::Mosquitto => format!(
                "max_queued_messages 0\nmax_inflight_messages 100\n{}",
                mosquitto_bridge(fleet_port)
            ),
            Kind::MosquittoDefaults => mosquitto_bridge(fleet_port),
        }
    }

    /// A line of the side's log saying the link to the fleet broker was lost.
    fn link_lost(self) -> &'static [&'static str] {
        match self {
            Kind::Sprig => &["uplink: lost the fleet broker"],
            Kind::Mosquitto | Kind::MosquittoDefaults => &[
                "Client local.site-7 closed its connection",
                "Socket error on client local.site-7",
            ],
        }
    }
}

/// sprig's per-connection publish quotas, lifted (a benchmark publishes as fast as it can).
const SPRIG_LIMITS: &str = "max_publishes_per_second = 0\nmax_publish_bytes_per_second = 0\n";
/// Bytes one of the benchmark's messages takes in the spool, with room to spare (99 measured).
const SPOOLED_BYTES: usize = 128;

/// sprig's `[uplink]`, its bridged topics, and the topic rule that lets the publishers use them. The
/// spool holds `outage` messages (its default, 64 MiB, holds some 600,000 of the benchmark's).
fn sprig_uplink(fleet_port: u16, outage: usize) -> String {
    let spool_mb = (outage * SPOOLED_BYTES).div_ceil(1 << 20).max(64);
    let topic = |qos: u8| {
        format!(
            "\n[[uplink.topics]]\npattern = \"dt/q{qos}/#\"\ndirection = \"out\"\nqos = {qos}\n\
             remote_prefix = \"sites/site-7/\"\n"
        )
    };
    format!(
        "\n[uplink]\nurl = \"mqtt://127.0.0.1:{fleet_port}\"\nclient_id = \"site-7\"\n\
         prefix = \"sprig/site-7\"\nspool_mb = {spool_mb}\nreconnect_max_s = 1\n{}{}\n\
         [[auth.topic_rules]]\nthings = [\"*\"]\npublish = [\"dt/#\"]\n",
        topic(0),
        topic(1)
    )
}

/// mosquitto's bridge: a persistent session on the fleet broker (`cleansession false`, the default),
/// a reconnection every second as sprig's `reconnect_max_s = 1`, its state on [`BRIDGE_STATE`].
fn mosquitto_bridge(fleet_port: u16) -> String {
    format!(
        "persistence true\nconnection fleet\naddress 127.0.0.1:{fleet_port}\nremote_clientid site-7\n\
         cleansession false\nrestart_timeout 1\nnotification_topic {BRIDGE_STATE}\n\
         topic dt/q0/# out 0 \"\" sites/site-7/\ntopic dt/q1/# out 1 \"\" sites/site-7/\n"
    )
}

/// A running local side.
pub(super) enum Side {
    Sprig(Gateway),
    Mosquitto(Kind, Mosquitto),
}

impl Side {
    pub(super) fn start(kind: Kind, bins: &Bins, fleet_port: u16, outage: usize) -> Side {
        match kind {
            Kind::Sprig => Side::Sprig(Gateway::start_bin_with(&bins.sprig, |config| {
                without_publish_quotas(&config) + &sprig_uplink(fleet_port, outage)
            })),
            _ => Side::Mosquitto(
                kind,
                Mosquitto::start_with(bins.mosquitto.clone(), &kind.config(fleet_port, outage)),
            ),
        }
    }

    fn kind(&self) -> Kind {
        match self {
            Side::Sprig(_) => Kind::Sprig,
            Side::Mosquitto(kind, _) => *kind,
        }
    }

    pub(super) fn addr(&self) -> SocketAddr {
        match self {
            Side::Sprig(gateway) => gateway.addr,
            Side::Mosquitto(_, broker) => broker.addr(),
        }
    }

    pub(super) fn pid(&self) -> u32 {
        match self {
            Side::Sprig(gateway) => gateway.pid(),
            Side::Mosquitto(_, broker) => broker.pid().expect("the local mosquitto runs"),
        }
    }

    pub(super) fn log(&self) -> String {
        match self {
            Side::Sprig(gateway) => gateway.log(),
            Side::Mosquitto(_, broker) => broker.log(),
        }
    }

    /// Bytes of the spool's files (sprig's `{data_dir}/uplink/`); `None` for mosquitto, whose bridge
    /// queues in memory (saved only at exit or at its `autosave_interval`).
    pub(super) fn spool_bytes(&self) -> Option<u64> {
        let Side::Sprig(gateway) = self else {
            return None;
        };
        let files = std::fs::read_dir(gateway.data_dir().join("uplink")).ok()?;
        Some(
            files
                .flatten()
                .filter_map(|f| f.metadata().ok())
                .map(|m| m.len())
                .sum(),
        )
    }

    /// How many times the log says the link to the fleet broker was lost.
    pub(super) fn links_lost(&self) -> usize {
        let log = self.log();
        let needles = self.kind().link_lost();
        needles
            .iter()
            .map(|needle| log.matches(needle).count())
            .sum()
    }

    /// Waits until the log says the link was lost once more than `before` times; `false` if it did not
    /// within `within`.
    pub(super) async fn link_lost(&self, before: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.links_lost() <= before {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Log lines worth a look after a run: sprig's warnings and errors, mosquitto's drops.
    pub(super) fn notable_log_lines(&self) -> Vec<String> {
        let notable = |line: &&str| match self {
            Side::Sprig(_) => line.contains("WARN") || line.contains("ERROR"),
            Side::Mosquitto(..) => line.contains("dropped") || line.contains("rror"),
        };
        self.log()
            .lines()
            .filter(notable)
            .map(str::to_owned)
            .collect()
    }
}
