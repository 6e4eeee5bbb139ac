//! The handshake: a connection's CONNECT checked (client id, credentials, certificate), its session opened
//! or resumed (with its router link, when the session has filters the router serves), and the CONNACK
//! written, or a refusal with each version's code. It ends
//! where the connection starts carrying packets ([`Client`]): kept apart because it is the one part that
//! waits on authentication (argon2 on a blocking thread, a few at a time) and the one that decides who the
//! client is, which everything after only reads.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rumqttd::local::LinkRx;
use rumqttd::protocol::{
    ConnAck, ConnAckProperties, Connect, ConnectReturnCode, LastWill, LastWillProperties, Login,
    Packet,
};

use super::{Client, LastWords, LinkGuard, SessionGuard, SharedCopies, SharedInflight};
use crate::auth::{AuthError, Principal, VerifiedCertificate};
use crate::broker::admission::Slot;
use crate::broker::codec::{PacketReader, PacketWriter, Version};
use crate::broker::direct::{self, Resumed, SessionRequest};
use crate::broker::internal::disconnect_now;
use crate::broker::options::ConnectionOptions;
use crate::broker::parking::{restore_filters, Link};
use crate::broker::presence::PresenceInfo;
use crate::broker::quota::PublishQuota;
use crate::broker::routed::Deliverable;
use crate::broker::topics::{is_reserved, served_directly};
use crate::broker::wills::Will;
use crate::broker::wire::Wire;
use crate::broker::{ReadHalf, Shared, WriteHalf};
use crate::config::BrokerConfig;
use tokio::net::tcp::OwnedWriteHalf;

pub(super) struct ConnectRequest {
    pub(super) connect: Connect,
    /// MQTT 5's Session Expiry Interval (absent: 0, the session ends with the connection).
    pub(super) session_expiry_s: Option<u32>,
    /// MQTT 5: the largest packet the client accepts.
    pub(super) max_packet_size: Option<u32>,
    /// MQTT 5: how many QoS 1 and 2 publishes the client takes unacknowledged (absent: 65535).
    pub(super) receive_maximum: Option<u16>,
    /// MQTT 5: how many topic aliases the client takes from the server (absent: none).
    pub(super) topic_alias_max: Option<u16>,
    pub(super) will: Option<LastWill>,
    pub(super) will_props: Option<LastWillProperties>,
    pub(super) login: Option<Login>,
    pub(super) peer: SocketAddr,
    /// The listener's address. Anonymous devices are allowed only on loopback listeners (decided by the
    /// listener, not the peer).
    pub(super) listener: SocketAddr,
    pub(super) certificate: Option<VerifiedCertificate>,
    /// The plain TCP socket's writing half, for direct deliveries (see `wire`).
    pub(super) socket: Option<Arc<OwnedWriteHalf>>,
}

/// Why a CONNECT was refused, mapped to each version's CONNACK code.
#[derive(Debug, Clone, Copy)]
pub(super) enum Refusal {
    BadCredentials,
    NotAuthorized,
    BadClientId,
    Unavailable,
}

impl Refusal {
    /// Its name in the refused-logins metric.
    fn label(self) -> &'static str {
        match self {
            Refusal::BadCredentials => "bad_credentials",
            Refusal::NotAuthorized => "not_authorized",
            Refusal::BadClientId => "bad_client_id",
            Refusal::Unavailable => "unavailable",
        }
    }

    pub(super) fn code(self, version: Version) -> ConnectReturnCode {
        match (self, version) {
            (Refusal::BadCredentials, _) => ConnectReturnCode::BadUserNamePassword,
            (Refusal::NotAuthorized, _) => ConnectReturnCode::NotAuthorized,
            (Refusal::BadClientId, _) => ConnectReturnCode::ClientIdentifierNotValid,
            (Refusal::Unavailable, Version::V311) => ConnectReturnCode::ServiceUnavailable,
            (Refusal::Unavailable, Version::V5) => ConnectReturnCode::ServerUnavailable,
        }
    }
}

pub(super) fn connack(code: ConnectReturnCode) -> Packet {
    Packet::ConnAck(
        ConnAck {
            session_present: false,
            code,
        },
        None,
    )
}

/// Authenticates a CONNECT, answers it, and on success returns the connected client.
pub(super) async fn accept(
    shared: &Arc<Shared>,
    mut request: ConnectRequest,
    mut writer: PacketWriter<WriteHalf>,
    reader: &mut PacketReader<ReadHalf>,
    slot: Slot,
) -> Option<(Client, PacketWriter<WriteHalf>, Option<LinkRx>)> {
    let version = writer.version();
    let assigned = assign_client_id(&mut request);
    let client_id = request.connect.client_id.clone();
    let peer = request.peer;
    let refuse = |refusal: Refusal, reason: String| {
        crate::metrics::get().refused(refusal.label());
        // Failed passwords are logged per address and burst (see `admission`), not one by one.
        if matches!(refusal, Refusal::BadCredentials) {
            tracing::debug!(client_id, %peer, "refused a connection: {reason}");
        } else {
            tracing::warn!(client_id, %peer, "refused a connection: {reason}");
        }
        connack(refusal.code(version))
    };
    // A client that leaves while its login waits for its turn is not checked at all.
    let checked = tokio::select! {
        // A check that needs no wait (no password) is decided before the socket is looked at.
        biased;
        checked = check_connect(shared, &request) => checked,
        () = reader.until_closed(WAITING_LOGIN_BUFFER) => {
            shared.logins.abandoned(peer.ip());
            return None;
        }
    };
    let principal = match checked {
        Ok(principal) => principal,
        Err((refusal, reason)) => {
            let _ = writer.send(refuse(refusal, reason)).await;
            return None;
        }
    };
    if slot.is_reserved() && !matches!(principal, Principal::Operator(_)) {
        let reason = "the remaining connections are kept for operators".to_owned();
        let _ = writer.send(refuse(Refusal::Unavailable, reason)).await;
        return None;
    }
    let number = shared.sessions.next_number();
    let (direct_tx, direct_rx) = flume::bounded(direct::QUEUE);
    // MQTT 5 §3.1.2.11.4: nothing larger is sent to the client.
    let most = request
        .max_packet_size
        .and_then(|n| usize::try_from(n).ok());
    let wire = Wire::new(direct_tx, request.socket.take(), version, most);
    let wire = Arc::new(wire);
    let asked = session_request(&request, version, &shared.config);
    let owner = principal.identity();
    // MQTT 3.1.4: a client id in use ends its older connection first. That one reads what its client
    // sent before this CONNECT (a DISCONNECT changes what the session is) and leaves the session to us.
    (shared.sessions)
        .take_over(&client_id, &owner, TAKEOVER_WAIT)
        .await;
    // Before the session is opened, so that nothing the parked link takes in is left behind.
    let parked = shared.parked.unpark(&client_id, &owner).await;
    let resumed = match (shared.outlets).open(&client_id, number, &owner, asked, wire.clone()) {
        Ok(resumed) => resumed,
        Err(holder) => {
            let reason = format!("the client id is held by {holder}, not {owner}");
            let _ = writer.send(refuse(Refusal::NotAuthorized, reason)).await;
            return None;
        }
    };
    let taken_over = shared
        .sessions
        .register(&client_id, number, principal.clone());
    // MQTT 5: a will held back for the client id is cancelled (or sent, if the session it was for ends).
    (shared.wills).connected(&client_id, request.connect.clean_session);
    let session = SessionGuard {
        shared: shared.clone(),
        client_id: client_id.clone(),
        number,
    };
    let (link, link_rx) = match router_session(shared, &resumed, parked).await {
        Ok(Some((link, link_rx))) => (Some(Box::new(link)), Some(link_rx)),
        Ok(None) => (None, None),
        Err(e) => {
            let _ = writer
                .send(refuse(Refusal::Unavailable, e.to_string()))
                .await;
            return None;
        }
    };
    // The session is sprig's to judge (it survives restarts and expires; the router's does neither), and
    // so is the CONNACK: most connections have no router link to answer it.
    let ack = ConnAck {
        session_present: resumed.filters.is_some(),
        code: ConnectReturnCode::Success,
    };
    let granted_s = asked.expiry.map_or(0, |e| e.as_secs() as u32);
    let props = (version == Version::V5).then(|| ConnAckProperties {
        // MQTT 5: the server says so when it keeps a session for less than the client asked.
        session_expiry_interval: request
            .session_expiry_s
            .filter(|s| *s != granted_s)
            .map(|_| granted_s),
        assigned_client_identifier: assigned.then(|| client_id.clone()),
        // MQTT 5 §3.2.2.3.14: a keep-alive above the most sprig allows is answered with that most.
        server_keep_alive: (request.connect.keep_alive > MAX_KEEP_ALIVE_S)
            .then_some(MAX_KEEP_ALIVE_S),
        // Topics are authorized by name: the reader resolves aliases first.
        topic_alias_max: Some(super::TOPIC_ALIAS_MAX),
        max_packet_size: u32::try_from(shared.config.max_payload_size).ok(),
        // How many unacknowledged QoS 1/2 publishes the client may send (0 would be a protocol error).
        receive_max: u16::try_from(shared.config.max_inflight_count)
            .ok()
            .filter(|n| *n > 0),
        ..ConnAckProperties::default()
    });
    writer.set_max_packet_size(most);
    writer.set_topic_alias_max(request.topic_alias_max.unwrap_or(0));
    if writer.send(Packet::ConnAck(ack, props)).await.is_err() {
        return None;
    }
    if let Some(filters) = &resumed.filters {
        let waiting = resumed.backlog.len();
        tracing::debug!(
            client_id,
            filters = filters.len(),
            waiting,
            "session resumed"
        );
    }
    let presence = PresenceInfo::new(&client_id, &principal, peer.ip());
    tracing::info!(client_id, %peer, principal = %presence.principal, "client connected");
    let (topic, body) = presence.event(None);
    shared.publish_presence(&topic, body);
    let will = last_words(
        shared,
        &principal,
        &client_id,
        request.will,
        request.will_props,
    );
    let kind = match principal {
        Principal::Operator(_) => "operator",
        Principal::Device { .. } => "device",
        Principal::Client { .. } => "client",
    };
    let client = Client {
        shared: shared.clone(),
        client_id,
        principal,
        version,
        keep_alive: match version {
            Version::V5 => request.connect.keep_alive.min(MAX_KEEP_ALIVE_S),
            // A 3.1.1 client cannot be told: its keep-alive stands.
            Version::V311 => request.connect.keep_alive,
        },
        direct: Some(direct_rx),
        wire,
        inflight: SharedInflight::default(),
        settled: Arc::default(),
        options: Arc::new(std::sync::Mutex::new(ConnectionOptions::resumed(
            resumed.options.clone(),
        ))),
        receiving: Arc::default(),
        window: Arc::default(),
        receive_maximum: request
            .receive_maximum
            .filter(|n| *n > 0)
            .unwrap_or(u16::MAX),
        aliases: HashMap::new(),
        shared_filters: Vec::new(),
        resumed: Some(Box::new(resumed)),
        will: will.map(Box::new),
        session_expiry: asked.expiry,
        link,
        router_owed: Arc::default(),
        unlink_wanted: false,
        gateway_qos2: HashSet::new(),
        quota: PublishQuota::new(
            shared.config.max_publishes_per_second,
            shared.config.max_publish_bytes_per_second,
            shared.config.max_payload_size,
        ),
        copies: SharedCopies::default(),
        deliverable: Deliverable::default(),
        _counted: crate::metrics::get().connection_opened(kind, &request.listener.to_string()),
        presence,
        taken_over: Some(taken_over),
        session,
        _slot: slot,
    };
    Some((client, writer, link_rx))
}

/// The will of a CONNECT, checked against the topic rules now: one the client may not publish is logged
/// (and again when it would have been sent), not silently dropped.
fn last_words(
    shared: &Shared,
    principal: &Principal,
    client_id: &str,
    will: Option<LastWill>,
    props: Option<LastWillProperties>,
) -> Option<LastWords> {
    let will = will?;
    let topic = String::from_utf8_lossy(&will.topic).into_owned();
    if is_reserved(&topic) || !shared.auth.may_publish(principal, client_id, &topic) {
        tracing::warn!(
            client_id,
            topic,
            "last will on a topic the topic rules do not let this client publish to: it will not be sent"
        );
        return Some(LastWords::Denied(topic));
    }
    Some(LastWords::Will(Will::new(client_id, &topic, will, props)))
}

/// The longest keep-alive an MQTT 5 client gets (AWS IoT Core's most, 1200 s): one that asks for more is
/// told this in the CONNACK's Server Keep Alive, and held to it. A client silent for one and a half of it
/// is gone; a longer wait would keep a dead connection's slot, session and will for hours.
pub(crate) const MAX_KEEP_ALIVE_S: u16 = 1200;

/// How long a newcomer waits for the connection it takes over to leave the session (its drain, then its
/// writer's last words, at most a second).
const TAKEOVER_WAIT: Duration = Duration::from_secs(2);

/// What a client whose login waits may send meanwhile before sprig stops reading from it.
const WAITING_LOGIN_BUFFER: usize = 64 * 1024;

/// Gives a CONNECT with an empty client id and a clean session one of its own, as MQTT lets a server do
/// (with a persistent session it is refused: there would be no way back to it): the thing name its client
/// certificate certifies, else its username (a device's thing name, an operator's name), else a fresh one
/// (a valid thing name, so an anonymous client becomes a device of that name). True when it assigned one.
fn assign_client_id(request: &mut ConnectRequest) -> bool {
    let connect = &mut request.connect;
    if !connect.client_id.is_empty() || !connect.clean_session {
        return false;
    }
    let username = request
        .login
        .as_ref()
        .map(|l| crate::auth::connect_username(&l.username))
        .filter(|u| !u.is_empty());
    connect.client_id = match (&request.certificate, username) {
        (Some(certificate), _) => certificate.common_name.clone(),
        (None, Some(username)) => username.to_owned(),
        (None, None) => format!("auto-{:016x}", rand::random::<u64>()),
    };
    true
}

/// The session a CONNECT asks for. MQTT 3.1.1: a persistent session unless `clean_session`, kept for
/// `persistent_session_expiry_s`. MQTT 5: `clean_start` discards the old session, and the Session Expiry
/// Interval (absent: 0) says how long the new one outlives the connection, at most that same setting.
fn session_request(
    request: &ConnectRequest,
    version: Version,
    config: &BrokerConfig,
) -> SessionRequest {
    let discard = request.connect.clean_session;
    let most = config.persistent_session_expiry_s;
    let asked_s = match version {
        Version::V311 if discard => 0,
        Version::V311 => most,
        Version::V5 => request.session_expiry_s.unwrap_or(0).min(most),
    };
    SessionRequest {
        discard,
        expiry: (asked_s > 0).then(|| Duration::from_secs(asked_s.into())),
    }
}

/// The client's router connection, if its session needs one: the link its resumed session left parked
/// (the router has its filters and kept nothing else), else a fresh one given back the resumed session's
/// filters, when some of them are the router's. Any other connection gets its link only when it first
/// needs one (see `Client::link_tx`). A parked link of a session that is not resumed (discarded, expired)
/// is closed.
async fn router_session(
    shared: &Arc<Shared>,
    resumed: &Resumed,
    parked: Option<Link>,
) -> Result<Option<(LinkGuard, LinkRx)>, crate::broker::BrokerError> {
    match parked {
        Some((tx, rx, name)) if resumed.filters.is_some() => {
            return Ok(Some((LinkGuard::new(tx, name), rx)));
        }
        Some((mut tx, _, _name)) => disconnect_now(&mut tx),
        None => {}
    }
    let routed = |filters: &Vec<String>| filters.iter().any(|f| !served_directly(f));
    let Some(filters) = resumed.filters.as_ref().filter(|f| routed(f)) else {
        return Ok(None);
    };
    let (mut link, rx) = open_link(shared).await?;
    restore_filters(link.tx(), filters, &shared.routed);
    Ok(Some((link, rx)))
}

/// A fresh router link, once the router has answered it.
pub(super) async fn open_link(
    shared: &Shared,
) -> Result<(LinkGuard, LinkRx), crate::broker::BrokerError> {
    let ((tx, rx, ack), name) = shared.link().await?;
    match Option::<Packet>::from(ack) {
        Some(Packet::ConnAck(..)) => Ok((LinkGuard::new(tx, name), rx)),
        other => Err(crate::broker::BrokerError::Link(format!(
            "the router answered {other:?}, not a CONNACK"
        ))),
    }
}

/// Validates the client id and the credentials (a password with argon2, on a blocking thread, a few at a
/// time).
async fn check_connect(
    shared: &Arc<Shared>,
    request: &ConnectRequest,
) -> Result<Principal, (Refusal, String)> {
    let client_id = &request.connect.client_id;
    // The router refuses these characters; `~` starts the gateway's own internal client ids.
    if client_id.is_empty() || client_id.contains(['+', '$', '#', '/']) || is_reserved(client_id) {
        return Err((Refusal::BadClientId, "invalid client id".into()));
    }
    if let Some(certificate) = &request.certificate {
        return (shared.auth)
            .authenticate_certificate(client_id, certificate)
            .map_err(refusal);
    }
    let loopback = request.listener.ip().is_loopback();
    let login = request.login.clone().map(|mut login| {
        login.username = crate::auth::connect_username(&login.username).to_owned();
        login
    });
    let Some(login) = login.filter(|l| !l.username.is_empty()) else {
        // No username: an anonymous device, decided from the config alone (no hashing), in place.
        return (shared.auth)
            .authenticate(client_id, None, None, loopback)
            .map_err(refusal);
    };
    let ip = request.peer.ip();
    if shared.auth.checks_instantly(&login.username) {
        // The local operator's generated token: compared in place, in microseconds (see `auth::Secret`).
        let password = Some(login.password.as_bytes());
        let verdict =
            (shared.auth).authenticate(client_id, Some(&login.username), password, loopback);
        if let Err(AuthError::BadCredentials) = &verdict {
            shared.logins.failed(ip, &login.username);
        }
        return verdict.map_err(refusal);
    }
    // A password is checked with argon2, 19 MiB and ~50 ms each (see `PASSWORD_CHECKS`): wait for the
    // address's turn (see `admission`), then for a check's, then check it on a blocking thread, which keeps
    // the turns until it is done (this future may be dropped when the client leaves; the check may not).
    let address_turn = shared.logins.turn(ip).await;
    let turn = (shared.password_checks.clone().acquire_owned().await).expect("never closed");
    let auth = shared.auth.clone();
    let client_id = client_id.clone();
    let username = login.username.clone();
    let verdict = tokio::task::spawn_blocking(move || {
        let _turns = (address_turn, turn);
        let password = Some(login.password.as_bytes());
        auth.authenticate(&client_id, Some(&login.username), password, loopback)
    })
    .await
    .map_err(|e| (Refusal::Unavailable, format!("authentication failed: {e}")))?;
    match &verdict {
        Err(AuthError::BadCredentials) => shared.logins.failed(ip, &username),
        Err(_) => {}
        Ok(_) => shared.logins.succeeded(ip),
    }
    verdict.map_err(refusal)
}

fn refusal(e: AuthError) -> (Refusal, String) {
    let refusal = match e {
        AuthError::BadCredentials => Refusal::BadCredentials,
        AuthError::InvalidClientId(_) => Refusal::BadClientId,
        AuthError::PasswordRequired
        | AuthError::ClientIdMismatch { .. }
        | AuthError::InvalidCertificateName(_)
        | AuthError::DeviceClientId { .. } => Refusal::NotAuthorized,
    };
    (refusal, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_client_id_is_assigned_from_the_certificate_the_username_or_afresh() {
        let request =
            |certificate: Option<&str>, username: Option<&str>, clean: bool| ConnectRequest {
                connect: Connect {
                    keep_alive: 30,
                    client_id: String::new(),
                    clean_session: clean,
                },
                session_expiry_s: None,
                max_packet_size: None,
                receive_maximum: None,
                topic_alias_max: None,
                will: None,
                will_props: None,
                login: username.map(|u| Login {
                    username: u.into(),
                    password: String::new(),
                }),
                peer: SocketAddr::from(([127, 0, 0, 1], 1)),
                listener: SocketAddr::from(([127, 0, 0, 1], 1883)),
                socket: None,
                certificate: certificate.map(|cn| VerifiedCertificate {
                    common_name: cn.into(),
                }),
            };
        let assigned =
            |mut r: ConnectRequest| assign_client_id(&mut r).then_some(r.connect.client_id);
        let metrics = "?SDK=IoTDeviceSDK/Python";
        let pump = Some("pump-1");
        assert_eq!(
            assigned(request(pump, Some(metrics), true)).as_deref(),
            pump
        );
        let with_metrics = format!("valve-2{metrics}");
        assert_eq!(
            assigned(request(None, Some(&with_metrics), true)).as_deref(),
            Some("valve-2")
        );
        let fresh = assigned(request(None, Some(metrics), true)).unwrap();
        assert!(
            fresh.starts_with("auto-") && crate::auth::is_thing_name(&fresh),
            "{fresh}"
        );
        assert_eq!(assigned(request(pump, None, false)), None);
    }
}
