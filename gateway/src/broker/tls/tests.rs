//! The TLS listener end to end: certificates made with rcgen (`sprig_test_support::certs`), a small
//! MQTT 3.1.1 client over `tokio_rustls::TlsConnector` and the broker's own codec.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rumqttd::protocol::{
    Connect, ConnectReturnCode, Filter, Login, Packet, QoS, RetainForwardRule, Subscribe,
    SubscribeReasonCode,
};
use sprig_test_support::certs::{ca, client_cert, server_cert, Issued};
use tokio::net::TcpStream;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use super::super::codec::{PacketReader, PacketWriter, ReadError, Version};
use super::super::Broker;
use crate::auth::{Authenticator, LocalOperator, LOCAL_OPERATOR_USERNAME};
use crate::config::{Config, DEFAULT_TOML};

const WAIT: Duration = Duration::from_secs(5);

/// The key of `issued` as rustls takes it.
fn key_der(issued: &Issued) -> PrivateKeyDer<'static> {
    PrivatePkcs8KeyDer::from(issued.key.serialize_der()).into()
}

/// A CA, the server's certificate, and a broker with a TLS listener on a non-loopback address (so nobody
/// is anonymous there) that trusts the CA for client certificates.
struct Setup {
    ca: Issued,
    broker: Arc<Broker>,
    tls_addr: SocketAddr,
    _dir: tempfile::TempDir,
}

async fn start() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("sprig test CA");
    ca.write(dir.path(), "ca");
    let server = server_cert(&ca, &["localhost", "127.0.0.1"]);
    server.write(dir.path(), "server");
    let text = DEFAULT_TOML.replace(
        "listen = [\"127.0.0.1:1883\"]\n",
        "listen = [\"127.0.0.1:0\"]\ntls_listen = [\"0.0.0.0:0\"]\n\
         tls_cert = \"server.pem\"\ntls_key = \"server.key\"\ntls_client_ca = \"ca.pem\"\n",
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap();
    assert_eq!(config.broker.tls_cert, Some(dir.path().join("server.pem")));
    let local = LocalOperator {
        username: LOCAL_OPERATOR_USERNAME.into(),
        password: "pw".into(),
        access_key: None,
    };
    let auth = Authenticator::new(&config.auth, &local).unwrap();
    let broker = Broker::start(&config.broker, Arc::new(auth)).await.unwrap();
    let port = broker.tls_local_addrs()[0].port();
    Setup {
        ca,
        broker,
        tls_addr: SocketAddr::from(([127, 0, 0, 1], port)),
        _dir: dir,
    }
}

type Reader = PacketReader<tokio::io::ReadHalf<tokio_rustls::client::TlsStream<TcpStream>>>;
type Writer = PacketWriter<tokio::io::WriteHalf<tokio_rustls::client::TlsStream<TcpStream>>>;

/// Opens a TLS connection trusting `ca`, presenting `identity` if given.
async fn tls_connect(
    addr: SocketAddr,
    ca: &Issued,
    identity: Option<&Issued>,
) -> std::io::Result<(Reader, Writer)> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    let builder = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some(id) => builder
            .with_client_auth_cert(vec![id.cert.der().clone()], key_der(id))
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    let (r, w) = tokio::io::split(tls);
    Ok((
        PacketReader::of_server(r, 1 << 20),
        PacketWriter::new(w, Version::V311),
    ))
}

async fn read(reader: &mut Reader) -> Result<Packet, ReadError> {
    reader.read(Version::V311, Some(WAIT)).await
}

/// Sends CONNECT and returns the CONNACK's code, or the error that ended the connection instead.
async fn mqtt_connect(
    (reader, writer): &mut (Reader, Writer),
    client_id: &str,
    login: Option<(&str, &str)>,
) -> Result<ConnectReturnCode, String> {
    let connect = Connect {
        keep_alive: 30,
        client_id: client_id.into(),
        clean_session: true,
    };
    let login = login.map(|(username, password)| Login {
        username: username.into(),
        password: password.into(),
    });
    let sent = writer
        .send(Packet::Connect(connect, None, None, None, login))
        .await;
    if let Err(e) = sent {
        return Err(e.to_string());
    }
    match read(reader).await {
        Ok(Packet::ConnAck(ack, _)) => Ok(ack.code),
        Ok(other) => panic!("expected CONNACK, got {other:?}"),
        Err(e) => Err(e.to_string()),
    }
}

async fn subscribe(
    (reader, writer): &mut (Reader, Writer),
    pkid: u16,
    filter: &str,
) -> Vec<SubscribeReasonCode> {
    let filter = Filter {
        path: filter.into(),
        qos: QoS::AtLeastOnce,
        nolocal: false,
        preserve_retain: false,
        retain_forward_rule: RetainForwardRule::Never,
    };
    let subscribe = Subscribe {
        pkid,
        filters: vec![filter],
    };
    writer
        .send(Packet::Subscribe(subscribe, None))
        .await
        .unwrap();
    loop {
        match read(reader).await.expect("SUBACK") {
            Packet::SubAck(ack, _) => return ack.return_codes,
            _ => continue,
        }
    }
}

#[tokio::test]
async fn a_device_certificate_authenticates_its_thing_and_only_its_topics() {
    let setup = start().await;
    let pump = client_cert(&setup.ca, "pump-1");
    let mut conn = tls_connect(setup.tls_addr, &setup.ca, Some(&pump))
        .await
        .unwrap();
    // No password, on a non-loopback listener.
    assert_eq!(
        mqtt_connect(&mut conn, "pump-1", None).await,
        Ok(ConnectReturnCode::Success)
    );
    assert!(matches!(
        subscribe(&mut conn, 1, "$aws/things/pump-1/jobs/notify-next").await[..],
        [SubscribeReasonCode::Success(_)]
    ));
    assert_eq!(
        subscribe(&mut conn, 2, "$aws/things/pump-2/jobs/notify-next").await,
        vec![SubscribeReasonCode::Failure]
    );
    let sessions = setup.broker.sessions();
    assert!(
        matches!(sessions.principal("pump-1"), Some(crate::auth::Principal::Device { thing_name }) if thing_name == "pump-1")
    );
}

#[tokio::test]
async fn a_client_id_other_than_the_certificates_cn_is_refused() {
    let setup = start().await;
    let pump = client_cert(&setup.ca, "pump-1");
    let mut conn = tls_connect(setup.tls_addr, &setup.ca, Some(&pump))
        .await
        .unwrap();
    assert_eq!(
        mqtt_connect(&mut conn, "pump-2", None).await,
        Ok(ConnectReturnCode::NotAuthorized)
    );
}

#[tokio::test]
async fn a_certificate_whose_cn_is_not_a_thing_name_is_refused() {
    let setup = start().await;
    let bad = client_cert(&setup.ca, "bad name!");
    let mut conn = tls_connect(setup.tls_addr, &setup.ca, Some(&bad))
        .await
        .unwrap();
    assert_eq!(
        mqtt_connect(&mut conn, "bad-name", None).await,
        Ok(ConnectReturnCode::NotAuthorized)
    );
}

#[tokio::test]
async fn a_certificate_from_another_ca_fails_the_handshake() {
    let setup = start().await;
    let rogue = ca("rogue CA");
    let forged = client_cert(&rogue, "pump-1");
    // TLS 1.3: the client may finish its side before the server rejects the certificate; either way no
    // CONNACK ever comes.
    match tls_connect(setup.tls_addr, &setup.ca, Some(&forged)).await {
        Err(_) => {}
        Ok(mut conn) => {
            let outcome = mqtt_connect(&mut conn, "pump-1", None).await;
            assert!(outcome.is_err(), "{outcome:?}");
        }
    }
}

#[tokio::test]
async fn without_a_certificate_the_password_rules_apply() {
    let setup = start().await;
    let mut conn = tls_connect(setup.tls_addr, &setup.ca, None).await.unwrap();
    assert_eq!(
        mqtt_connect(&mut conn, "cli-1", Some((LOCAL_OPERATOR_USERNAME, "pw"))).await,
        Ok(ConnectReturnCode::Success)
    );
    // Not anonymous: the TLS listener is not on loopback.
    let mut conn = tls_connect(setup.tls_addr, &setup.ca, None).await.unwrap();
    assert_eq!(
        mqtt_connect(&mut conn, "pump-1", None).await,
        Ok(ConnectReturnCode::NotAuthorized)
    );
    let mut conn = tls_connect(setup.tls_addr, &setup.ca, None).await.unwrap();
    assert_eq!(
        mqtt_connect(&mut conn, "cli-2", Some((LOCAL_OPERATOR_USERNAME, "nope"))).await,
        Ok(ConnectReturnCode::BadUserNamePassword)
    );
}

#[tokio::test]
async fn the_plain_listener_still_works_beside_the_tls_one() {
    let setup = start().await;
    let addr = setup.broker.local_addrs()[0];
    let (r, w) = TcpStream::connect(addr).await.unwrap().into_split();
    let mut reader = PacketReader::of_server(r, 1 << 20);
    let mut writer = PacketWriter::new(w, Version::V311);
    let connect = Connect {
        keep_alive: 30,
        client_id: "pump-9".into(),
        clean_session: true,
    };
    writer
        .send(Packet::Connect(connect, None, None, None, None))
        .await
        .unwrap();
    let ack = reader.read(Version::V311, Some(WAIT)).await.unwrap();
    assert!(
        matches!(&ack, Packet::ConnAck(a, _) if a.code == ConnectReturnCode::Success),
        "{ack:?}"
    );
}

/// The error of reading the TLS files `text` names (what `sprig run` checks before it starts), as the
/// key and the reason; `text` must parse.
fn config_error(text: &str) -> String {
    let config = Config::parse(text, "test.toml").unwrap();
    let (key, reason) = super::server_config(&config.broker).map(drop).unwrap_err();
    format!("key `{key}`: {reason}")
}

fn with_tls(keys: &str) -> String {
    DEFAULT_TOML.replace(
        "max_outgoing_packet_count = 200\n",
        &format!("max_outgoing_packet_count = 200\n{keys}\n"),
    )
}

#[test]
fn bad_tls_settings_name_the_key_the_file_and_the_reason() {
    let err = config_error(&with_tls("tls_listen = [\"0.0.0.0:8883\"]"));
    assert!(
        err.contains("broker.tls_cert") && err.contains("required"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let ca = ca("sprig test CA");
    ca.write(dir.path(), "ca");
    let p = |name: &str| dir.path().join(name).display().to_string();
    let missing = p("missing.pem");
    let err = config_error(&with_tls(&format!(
        "tls_listen = [\"0.0.0.0:8883\"]\ntls_cert = \"{missing}\"\ntls_key = \"{}\"",
        p("ca.key")
    )));
    assert!(
        err.contains("broker.tls_cert") && err.contains(&missing) && err.contains("cannot read"),
        "{err}"
    );

    let err = config_error(&with_tls(&format!(
        "tls_listen = [\"0.0.0.0:8883\"]\ntls_cert = \"{}\"\ntls_key = \"{}\"",
        p("ca.pem"),
        p("ca.pem")
    )));
    assert!(
        err.contains("broker.tls_key") && err.contains("private key"),
        "{err}"
    );

    let err = config_error(&with_tls(&format!(
        "tls_listen = [\"0.0.0.0:8883\"]\ntls_cert = \"{}\"\ntls_key = \"{}\"\ntls_client_ca = \"{}\"",
        p("ca.pem"),
        p("ca.key"),
        p("ca.key")
    )));
    assert!(
        err.contains("broker.tls_client_ca") && err.contains("no PEM CERTIFICATE"),
        "{err}"
    );

    // A complete, readable set is accepted.
    let text = with_tls(&format!(
        "tls_listen = [\"0.0.0.0:8883\"]\ntls_cert = \"{}\"\ntls_key = \"{}\"\ntls_client_ca = \"{}\"",
        p("ca.pem"),
        p("ca.key"),
        p("ca.pem")
    ));
    let config = Config::parse(&text, "test.toml").unwrap();
    super::server_config(&config.broker).unwrap();
    assert_eq!(config.broker.tls_listen.len(), 1);
    // Parsing alone (what the CLI does) does not read the files; `sprig run` checks them.
    let gone = text.replace(&p("ca.key"), &p("gone.key"));
    assert!(Config::parse(&gone, "test.toml").is_ok());
    let err = config_error(&gone);
    assert!(
        err.contains("broker.tls_key") && err.contains("gone.key"),
        "{err}"
    );
}
