//! AWS IoT lifecycle events: `$aws/events/presence/{connected|disconnected}/{clientId}`.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rand::Rng;

use crate::auth::{Principal, PRESENCE_PREFIX};

/// Why a connection ended, in AWS IoT's `disconnectReason` vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DisconnectReason {
    ClientInitiated,
    ConnectionLost,
    DuplicateClientId,
    KeepAliveTimeout,
    ServerInitiated,
    AuthorizationError,
    ClientError,
}

impl DisconnectReason {
    /// AWS's name for the reason (the presence event's `disconnectReason`).
    pub(crate) fn as_aws(self) -> &'static str {
        match self {
            DisconnectReason::ClientInitiated => "CLIENT_INITIATED_DISCONNECT",
            DisconnectReason::ConnectionLost => "CONNECTION_LOST",
            DisconnectReason::DuplicateClientId => "DUPLICATE_CLIENTID",
            DisconnectReason::KeepAliveTimeout => "MQTT_KEEP_ALIVE_TIMEOUT",
            DisconnectReason::ServerInitiated => "SERVER_INITIATED_DISCONNECT",
            DisconnectReason::AuthorizationError => "AUTHORIZATION_ERROR",
            DisconnectReason::ClientError => "CLIENT_ERROR",
        }
    }
}

/// What identifies one connection in its two lifecycle events.
pub(crate) struct PresenceInfo {
    pub client_id: String,
    pub principal: String,
    pub ip: IpAddr,
    pub session: String,
}

impl PresenceInfo {
    pub(crate) fn new(client_id: &str, principal: &Principal, ip: IpAddr) -> PresenceInfo {
        let principal = match principal {
            Principal::Device { thing_name } => thing_name.clone(),
            Principal::Operator(op) => op.username.clone(),
            Principal::Client { client_id } => client_id.clone(),
        };
        PresenceInfo {
            client_id: client_id.to_owned(),
            principal,
            ip,
            session: session_identifier(),
        }
    }

    /// The event's topic and JSON body; `reason` is `None` for the connected event.
    pub(crate) fn event(&self, reason: Option<DisconnectReason>) -> (String, Bytes) {
        let kind = if reason.is_some() {
            "disconnected"
        } else {
            "connected"
        };
        let mut body = serde_json::json!({
            "clientId": self.client_id,
            "timestamp": epoch_millis(),
            "eventType": kind,
            "sessionIdentifier": self.session,
            "principalIdentifier": self.principal,
            "versionNumber": 0,
            "ipAddress": self.ip.to_string(),
        });
        if let (Some(reason), Some(map)) = (reason, body.as_object_mut()) {
            map.insert(
                "clientInitiatedDisconnect".into(),
                (reason == DisconnectReason::ClientInitiated).into(),
            );
            map.insert("disconnectReason".into(), reason.as_aws().into());
        }
        let topic = format!("{PRESENCE_PREFIX}{kind}/{}", self.client_id);
        (topic, Bytes::from(body.to_string()))
    }
}

fn epoch_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A random version-4 UUID string, as AWS uses for `sessionIdentifier`.
fn session_identifier() -> String {
    let mut b: [u8; 16] = rand::thread_rng().gen();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_carry_the_aws_fields() {
        let info = PresenceInfo::new(
            "d1",
            &Principal::Device {
                thing_name: "d1".into(),
            },
            "127.0.0.1".parse().unwrap(),
        );
        let (topic, body) = info.event(Some(DisconnectReason::ConnectionLost));
        assert_eq!(topic, "$aws/events/presence/disconnected/d1");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["disconnectReason"], "CONNECTION_LOST");
        assert_eq!(v["eventType"], "disconnected");
        assert_eq!(v["principalIdentifier"], "d1");
        assert_eq!(v["sessionIdentifier"].as_str().unwrap().len(), 36);
        let (topic, body) = info.event(None);
        assert_eq!(topic, "$aws/events/presence/connected/d1");
        assert!(!String::from_utf8_lossy(&body).contains("disconnectReason"));
    }
}
