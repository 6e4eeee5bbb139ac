//! What rumqttd's router forgets about a message between its publisher and its subscribers, carried
//! beside it. rumqttd 0.20 forwards every message at its subscription's QoS (`router/routing.rs`), clears
//! its retain flag, and ignores the subscription options (no local, retain as published) and message expiry
//! of live messages; but it passes a message's MQTT 5 properties through untouched. So sprig's reader
//! attaches an [`Origin`] to every routed publish as one user property, under a key of its own (any user
//! property a client sent under that key is removed first, so it cannot be forged), and the connection
//! that delivers the message (`connection::writer`, `parking`) takes it off again and acts on it: the QoS
//! is the lower of the publish's and the subscription's, a retained flag is restored where the
//! subscription asks for it, a no-local subscriber does not get its own messages back.

use std::time::{SystemTime, UNIX_EPOCH};

use rumqttd::protocol::PublishProperties;

/// The user property's key: `~` starts nothing a client can name in sprig (see `topics::MARKER`).
const KEY: &str = "~sprig";

/// A routed message's publisher and how it was published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    /// The QoS it was published at.
    pub(crate) qos: u8,
    /// Its retain flag as published.
    pub(crate) retain: bool,
    /// When sprig received it, in milliseconds since the Unix epoch (for its Message Expiry Interval).
    pub(crate) received_ms: u64,
    /// The publisher's client id (for no-local subscriptions).
    pub(crate) client_id: String,
}

impl Origin {
    /// The origin of a message received now.
    pub(crate) fn now(qos: u8, retain: bool, client_id: &str) -> Origin {
        Origin {
            qos,
            retain,
            received_ms: unix_ms(SystemTime::now()),
            client_id: client_id.to_owned(),
        }
    }

    /// `props` with this origin attached, and any property a client sent under its key removed.
    pub(crate) fn attach(&self, props: Option<PublishProperties>) -> Option<PublishProperties> {
        let mut props = props.unwrap_or_default();
        props.user_properties.retain(|(key, _)| key != KEY);
        let value = format!(
            "{}{} {} {}",
            self.qos, self.retain as u8, self.received_ms, self.client_id
        );
        props.user_properties.push((KEY.to_owned(), value));
        Some(props)
    }

    /// Takes the origin off `props` (none when no publisher attached one: the gateway's own messages); the
    /// properties become `None` when nothing else was there.
    pub(crate) fn take(props: &mut Option<PublishProperties>) -> Option<Origin> {
        let found = props.as_mut().and_then(|p| {
            let i = p.user_properties.iter().rposition(|(key, _)| key == KEY)?;
            Some(p.user_properties.remove(i).1)
        });
        if props
            .as_ref()
            .is_some_and(|p| *p == PublishProperties::default())
        {
            *props = None;
        }
        Origin::parse(&found?)
    }

    /// The origin attached to `props`, left there.
    pub(crate) fn peek(props: &Option<PublishProperties>) -> Option<Origin> {
        let p = props.as_ref()?;
        let (_, value) = p.user_properties.iter().rev().find(|(key, _)| key == KEY)?;
        Origin::parse(value)
    }

    /// Applies the message's Message Expiry Interval (MQTT 5 §3.3.2.3.3) at delivery: true when it has
    /// expired (not to be sent); else the interval in `props` becomes what is left of it.
    pub(crate) fn expire(&self, props: &mut Option<PublishProperties>, now: SystemTime) -> bool {
        let Some(interval) = props
            .as_mut()
            .and_then(|p| p.message_expiry_interval.as_mut())
        else {
            return false;
        };
        let age_s = (unix_ms(now).saturating_sub(self.received_ms) / 1000) as u32;
        if age_s >= *interval {
            return true;
        }
        *interval -= age_s;
        false
    }

    fn parse(value: &str) -> Option<Origin> {
        let mut parts = value.splitn(3, ' ');
        let flags = parts.next()?.as_bytes();
        let received_ms = parts.next()?.parse().ok()?;
        let client_id = parts.next()?.to_owned();
        let (&[qos, retain], true) = (flags, flags.len() == 2) else {
            return None;
        };
        Some(Origin {
            qos: qos.checked_sub(b'0').filter(|q| *q <= 2)?,
            retain: retain == b'1',
            received_ms,
            client_id,
        })
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_origin_survives_the_trip_and_leaves_the_properties_as_they_were() {
        let origin = Origin::now(0, true, "clean retained");
        let mut props = origin.attach(None);
        assert_eq!(Origin::take(&mut props), Some(origin.clone()));
        assert_eq!(props, None);

        let theirs = PublishProperties {
            user_properties: vec![("a".into(), "2".into())],
            ..Default::default()
        };
        let mut props = origin.attach(Some(theirs.clone()));
        assert_eq!(Origin::take(&mut props), Some(origin));
        assert_eq!(props, Some(theirs));
    }

    #[test]
    fn a_client_cannot_forge_an_origin() {
        let forged = PublishProperties {
            user_properties: vec![(KEY.into(), "20 0 someone-else".into())],
            ..Default::default()
        };
        let origin = Origin::now(1, false, "pump-1");
        let mut props = origin.attach(Some(forged));
        assert_eq!(Origin::take(&mut props), Some(origin));
        assert_eq!(props, None);
        let mut unattached = Some(PublishProperties::default());
        assert_eq!(Origin::take(&mut unattached), None);
        assert_eq!(unattached, None);
    }
}
