//! Authentication and authorization: who a connecting client is, and which topics and namespaces it may use.
//!
//! A client is either a *device* (its MQTT client id is its thing name) or an *operator* (a configured
//! username, or the local operator whose credential `sprig run` writes to `{data_dir}/local-operator.json`).
//! Passwords are kept only as argon2 hashes. The topic rules of CONTRACT section 3 live here, as pure
//! functions of the principal and the topic, so the broker's listener enforces them and tests can read them:
//! the built-in ones in [`Principal::may_publish`] and [`Principal::may_subscribe`], the configured
//! `[[auth.topic_rules]]` in [`rules`]; [`Authenticator::may_publish`] and [`Authenticator::may_subscribe`]
//! combine the two. HTTP API requests are authenticated by [`sigv4`]: an operator (the local one too) may
//! have an AWS-style access key, and signs its requests with it as the AWS CLI and boto3 do.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use serde::{Deserialize, Serialize};

use crate::config::{AuthConfig, OperatorConfig};
// Grants are what the jobs engine checks and thing names what it validates; auth hands them out.
pub use crate::jobs::validate::is_thing_name;
pub use crate::jobs::Grants;

pub mod rules;
pub mod sigv4;

/// Whom a session belongs to. Defined with the stored session that persists it, so the store needs
/// nothing of authentication; [`Principal::identity`] names a principal by it.
pub use crate::store::sessions::Identity;
pub use rules::{RuleError, TopicRules};

/// File name of the local operator credential inside the data dir.
pub const LOCAL_OPERATOR_FILE: &str = "local-operator.json";
/// The username of the local operator.
pub const LOCAL_OPERATOR_USERNAME: &str = "sprig-local";

/// Why a client was refused at CONNECT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("bad username or password")]
    BadCredentials,
    #[error("a password is required on this listener")]
    PasswordRequired,
    #[error("the client id `{0}` is not a valid thing name ([a-zA-Z0-9:_-]{{1,128}})")]
    InvalidClientId(String),
    #[error("device `{username}` must connect with client id `{username}`, not `{client_id}`")]
    ClientIdMismatch { username: String, client_id: String },
    #[error("the client certificate's subject CN `{0}` is not a valid thing name ([a-zA-Z0-9:_-]{{1,128}})")]
    InvalidCertificateName(String),
    #[error("operator `{username}` may not use client id `{client_id}`: it is the thing name of a configured device")]
    DeviceClientId { username: String, client_id: String },
}

/// A client certificate the TLS listener verified against `broker.tls_client_ca` (chain, validity,
/// client-auth usage): the subject common name it certifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCertificate {
    pub common_name: String,
}

/// The operator's grants its config entry gives.
fn grants_of(op: &OperatorConfig) -> Grants {
    grants(&op.namespaces, op.standard_jobs)
}

/// The grants of an operator given `namespaces` (`"*"` among them stands for all) and `standard_jobs`:
/// a configured operator's, or the uplink's.
pub fn grants(namespaces: &[String], standard_jobs: bool) -> Grants {
    Grants {
        all_namespaces: namespaces.iter().any(|n| n == "*"),
        namespaces: namespaces.iter().filter(|n| *n != "*").cloned().collect(),
        standard_jobs,
    }
}

/// An authenticated operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    pub username: String,
    pub grants: Grants,
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Device {
        thing_name: String,
    },
    Operator(Arc<Operator>),
    /// An anonymous client on a loopback listener whose client id is not a thing name (a tool, a test
    /// suite's helper such as Paho's `clean retained`): not a device, so no built-in rights at all; only
    /// the topic rules whose `things` globs match its client id apply to it.
    Client {
        client_id: String,
    },
}

/// Prefix of the control API's topics.
pub const CONTROL_PREFIX: &str = "$sprig/control/";
/// Prefix of AWS IoT lifecycle (presence) events.
pub const PRESENCE_PREFIX: &str = "$aws/events/presence/";

impl Principal {
    /// Who this is, for session ownership.
    pub fn identity(&self) -> Identity {
        match self {
            Principal::Device { thing_name } => Identity::Device(thing_name.clone()),
            Principal::Operator(op) => Identity::Operator(op.username.clone()),
            Principal::Client { client_id } => Identity::Client(client_id.clone()),
        }
    }

    /// May this client (connected as `client_id`) publish to `topic` by the built-in rules? (The topic
    /// rules may grant more: see [`Authenticator::may_publish`].)
    ///
    /// Devices: only under `$aws/things/{their thing}/`. Operators: only their own control requests,
    /// `$sprig/control/{their client id}/{Operation}`.
    pub fn may_publish(&self, client_id: &str, topic: &str) -> bool {
        match self {
            Principal::Device { thing_name } => under_thing(thing_name, topic),
            Principal::Operator(_) => topic
                .strip_prefix(CONTROL_PREFIX)
                .and_then(|rest| rest.strip_prefix(client_id))
                .and_then(|rest| rest.strip_prefix('/'))
                .is_some_and(|op| !op.is_empty() && !op.contains(['/', '+', '#'])),
            Principal::Client { .. } => false,
        }
    }

    /// May this client subscribe to `filter` by the built-in rules? (The topic rules may grant more: see
    /// [`Authenticator::may_subscribe`].)
    ///
    /// Devices: only under `$aws/things/{their thing}/`. Operators: their own control replies
    /// (`$sprig/control/{their client id}/...`) and the presence events.
    pub fn may_subscribe(&self, client_id: &str, filter: &str) -> bool {
        match self {
            Principal::Device { thing_name } => under_thing(thing_name, filter),
            Principal::Operator(_) => {
                let own_control = filter
                    .strip_prefix(CONTROL_PREFIX)
                    .and_then(|rest| rest.strip_prefix(client_id))
                    .is_some_and(|rest| rest.starts_with('/'));
                own_control
                    || filter.starts_with(PRESENCE_PREFIX)
                    || filter == "$aws/events/presence/#"
            }
            Principal::Client { .. } => false,
        }
    }
}

fn under_thing(thing_name: &str, topic: &str) -> bool {
    topic
        .strip_prefix("$aws/things/")
        .and_then(|rest| rest.strip_prefix(thing_name))
        .is_some_and(|rest| rest.starts_with('/'))
}

/// The username of a CONNECT as AWS IoT Core reads it: everything before the first `?`. AWS's CRT-based
/// device SDKs append usage metrics as a query (`?SDK=IoTDeviceSDK/Python&Platform=...`, after the
/// username if there is one), which is not part of the login; an empty result means no username.
pub fn connect_username(raw: &str) -> &str {
    match raw.split_once('?') {
        Some((username, metrics)) => {
            tracing::debug!(metrics, "CONNECT username carries SDK metrics (ignored)");
            username
        }
        None => raw,
    }
}

struct Account {
    secret: Secret,
    principal: Principal,
}

/// What a password is checked against.
enum Secret {
    /// An argon2 hash (PHC string) from the config: a password a person chose, so slow to guess.
    Hash(String),
    /// The local operator's password, which sprig generated (32 random alphanumerics, ~190 bits): no
    /// hashing makes it harder to guess, so it is compared as it is, in constant time, in microseconds
    /// and without argon2's 19 MiB. A CLI call, or a flood of wrong passwords for its public username,
    /// costs no password check at all.
    Token(String),
}

impl Secret {
    fn matches(&self, password: &[u8]) -> bool {
        match self {
            Secret::Hash(hash) => verify_password(password, hash),
            Secret::Token(token) => constant_time_eq(token.as_bytes(), password),
        }
    }
}

/// `a == b`, in a time that depends on their lengths only (not on where they differ).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Why an [`Authenticator`] could not be built from `[auth]`.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    TopicRules(#[from] RuleError),
    #[error(
        "auth.operators[{index}].access_key_id `{access_key_id}` is the local operator's access key \
         (in {LOCAL_OPERATOR_FILE}): give the operator a key of its own"
    )]
    AccessKeyOfLocalOperator { index: usize, access_key_id: String },
}

/// Checks credentials at CONNECT against the configured operators and devices, and what a connected
/// client may publish and subscribe to.
pub struct Authenticator {
    accounts: HashMap<String, Account>,
    anonymous_devices_on_loopback: bool,
    topic_rules: TopicRules,
    access_keys: sigv4::AccessKeys,
}

impl Authenticator {
    /// Builds the authenticator from `[auth]` plus the local operator (username [`LOCAL_OPERATOR_USERNAME`]),
    /// with their access keys for the HTTP API.
    pub fn new(
        config: &AuthConfig,
        local_operator: &LocalOperator,
    ) -> Result<Authenticator, SetupError> {
        let mut accounts = HashMap::new();
        for op in &config.operators {
            let operator = Operator {
                username: op.username.clone(),
                grants: grants_of(op),
            };
            accounts.insert(
                op.username.clone(),
                Account {
                    secret: Secret::Hash(op.password_hash.clone()),
                    principal: Principal::Operator(Arc::new(operator)),
                },
            );
        }
        for dev in &config.devices {
            accounts.insert(
                dev.thing_name.clone(),
                Account {
                    secret: Secret::Hash(dev.password_hash.clone()),
                    principal: Principal::Device {
                        thing_name: dev.thing_name.clone(),
                    },
                },
            );
        }
        let local = Operator {
            username: LOCAL_OPERATOR_USERNAME.to_owned(),
            grants: Grants::all(),
        };
        accounts.insert(
            LOCAL_OPERATOR_USERNAME.to_owned(),
            Account {
                secret: Secret::Token(local_operator.password.clone()),
                principal: Principal::Operator(Arc::new(local)),
            },
        );
        Ok(Authenticator {
            accounts,
            anonymous_devices_on_loopback: config.anonymous_devices_on_loopback,
            topic_rules: TopicRules::compile(&config.topic_rules)?,
            access_keys: sigv4::AccessKeys::new(config, local_operator)?,
        })
    }

    /// The access keys that may sign HTTP API requests, for [`sigv4::verify`].
    pub fn access_keys(&self) -> &sigv4::AccessKeys {
        &self.access_keys
    }

    /// May `principal`, connected as `client_id`, publish to `topic`? By the built-in rules (its own
    /// thing's or control topics) or by a topic rule.
    pub fn may_publish(&self, principal: &Principal, client_id: &str, topic: &str) -> bool {
        principal.may_publish(client_id, topic)
            || self.topic_rules.allow_publish(principal, client_id, topic)
    }

    /// May `principal`, connected as `client_id`, subscribe to `filter`? By the built-in rules or because
    /// a single topic rule's subscribe pattern contains the whole filter.
    ///
    /// An MQTT 5 shared subscription, `$share/{group}/{filter}`, is granted as its filter is; never for a
    /// `$` filter (only the gateway sends there, to the one client it is for).
    pub fn may_subscribe(&self, principal: &Principal, client_id: &str, filter: &str) -> bool {
        if let Some(shared) = filter.strip_prefix("$share/") {
            return match shared.split_once('/') {
                Some((group, inner))
                    if !group.is_empty()
                        && !group.contains(['+', '#'])
                        && !inner.is_empty()
                        && !inner.starts_with('$') =>
                {
                    self.may_subscribe(principal, client_id, inner)
                }
                _ => false,
            };
        }
        principal.may_subscribe(client_id, filter)
            || self
                .topic_rules
                .allow_subscribe(principal, client_id, filter)
    }

    /// True when a password for `username` is checked in microseconds (the local operator's generated
    /// token), so the check needs no blocking thread nor a turn among the argon2 checks.
    pub fn checks_instantly(&self, username: &str) -> bool {
        self.accounts
            .get(username)
            .is_some_and(|account| matches!(account.secret, Secret::Token(_)))
    }

    /// Decides who a CONNECT is. This verifies an argon2 hash, which takes milliseconds of CPU:
    /// call it from a blocking thread, not from the async runtime.
    pub fn authenticate(
        &self,
        client_id: &str,
        username: Option<&str>,
        password: Option<&[u8]>,
        on_loopback_listener: bool,
    ) -> Result<Principal, AuthError> {
        let Some(username) = username.filter(|u| !u.is_empty()) else {
            if !(on_loopback_listener && self.anonymous_devices_on_loopback) {
                return Err(AuthError::PasswordRequired);
            }
            if client_id.is_empty() || client_id.contains(['+', '$', '#', '/', '~', '\0']) {
                return Err(AuthError::InvalidClientId(client_id.to_owned()));
            }
            if !is_thing_name(client_id) {
                // Not a device: a client with the topic rules' rights only (see `Principal::Client`).
                return Ok(Principal::Client {
                    client_id: client_id.to_owned(),
                });
            }
            // A thing that has a password must use it, on loopback too.
            if self.accounts.contains_key(client_id) {
                return Err(AuthError::PasswordRequired);
            }
            return Ok(Principal::Device {
                thing_name: client_id.to_owned(),
            });
        };
        let account = self
            .accounts
            .get(username)
            .ok_or(AuthError::BadCredentials)?;
        if !account.secret.matches(password.unwrap_or_default()) {
            return Err(AuthError::BadCredentials);
        }
        match &account.principal {
            Principal::Device { thing_name } if thing_name != client_id => {
                Err(AuthError::ClientIdMismatch {
                    username: username.to_owned(),
                    client_id: client_id.to_owned(),
                })
            }
            // A configured device's client id stays its own, even while it is away: an operator that took
            // it would disconnect the device and, holding the id, keep it out.
            Principal::Operator(_) if self.is_configured_device(client_id) => {
                Err(AuthError::DeviceClientId {
                    username: username.to_owned(),
                    client_id: client_id.to_owned(),
                })
            }
            principal => Ok(principal.clone()),
        }
    }
}

impl Authenticator {
    fn is_configured_device(&self, client_id: &str) -> bool {
        self.accounts
            .get(client_id)
            .is_some_and(|a| matches!(a.principal, Principal::Device { .. }))
    }

    /// Decides who a CONNECT is that came with a verified client certificate: the device whose thing name
    /// is the certificate's subject CN, with no password (a username and password, if sent, are ignored),
    /// on any listener. Its client id must be that thing name. Cheap: no hashing.
    pub fn authenticate_certificate(
        &self,
        client_id: &str,
        certificate: &VerifiedCertificate,
    ) -> Result<Principal, AuthError> {
        let thing_name = &certificate.common_name;
        if !is_thing_name(thing_name) {
            return Err(AuthError::InvalidCertificateName(thing_name.clone()));
        }
        if client_id != thing_name {
            return Err(AuthError::ClientIdMismatch {
                username: thing_name.clone(),
                client_id: client_id.to_owned(),
            });
        }
        Ok(Principal::Device {
            thing_name: thing_name.clone(),
        })
    }
}

/// Hashes a password with argon2id and a random salt, in PHC string form (`$argon2id$v=19$...`).
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// Checks `password` against a PHC hash string; a malformed hash never matches.
pub fn verify_password(password: &[u8], hash: &str) -> bool {
    PasswordHash::new(hash)
        .is_ok_and(|parsed| Argon2::default().verify_password(password, &parsed).is_ok())
}

/// Checks that `hash` is a PHC string argon2 can verify against (used when validating the config).
pub fn check_hash_format(hash: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(hash)
        .map_err(|e| format!("not a password hash ({e}); make one with `sprig hash-password`"))?;
    if !parsed.algorithm.as_str().starts_with("argon2") {
        return Err(format!("algorithm `{}` is not argon2", parsed.algorithm));
    }
    Ok(())
}

/// The credential of the local operator, as stored in `{data_dir}/local-operator.json`: its MQTT login and
/// its access key for the HTTP API (`"access_key_id"` and `"secret_access_key"` beside the username and
/// password; files written before the HTTP API have none until `sprig run` adds one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalOperator {
    pub username: String,
    pub password: String,
    #[serde(flatten)]
    pub access_key: Option<AccessKey>,
}

/// An AWS-style access key: the id a SigV4 request names and the secret it is signed with.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessKey {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKey")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl AccessKey {
    /// A new random key pair: the id `SPRG` and 16 capital letters and digits (20 characters, AWS's
    /// shape), the secret 40 letters and digits (~238 bits; AWS's are 40 characters too).
    pub fn generate() -> AccessKey {
        use rand::Rng;
        const ID_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        let mut rng = rand::thread_rng();
        let id: String = (0..16)
            .map(|_| char::from(ID_CHARS[rng.gen_range(0..ID_CHARS.len())]))
            .collect();
        AccessKey {
            access_key_id: format!("SPRG{id}"),
            secret_access_key: random_secret(40),
        }
    }
}

impl LocalOperator {
    /// Reads the credential in `data_dir`, creating it (mode 0600, once) if it does not exist yet. A
    /// credential without an access key (written before the HTTP API) gets one, written back in place of
    /// the file with the file's permissions kept.
    pub fn load_or_create(data_dir: &Path) -> std::io::Result<LocalOperator> {
        let path = LocalOperator::path_in(data_dir);
        if path.exists() {
            let mut credential = LocalOperator::load(&path)?;
            if credential.access_key.is_none() {
                credential.access_key = Some(AccessKey::generate());
                credential.replace(&path)?;
            }
            return Ok(credential);
        }
        std::fs::create_dir_all(data_dir)?;
        let credential = LocalOperator {
            username: LOCAL_OPERATOR_USERNAME.to_owned(),
            password: random_secret(32),
            access_key: Some(AccessKey::generate()),
        };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&path)?;
        file.write_all(serde_json::to_string_pretty(&credential)?.as_bytes())?;
        file.sync_all()?;
        Ok(credential)
    }

    /// Writes this credential over the file at `path`, atomically (a new file renamed over it, so a crash
    /// leaves the old file or the new one, never half of one) and with the old file's permissions.
    fn replace(&self, path: &Path) -> std::io::Result<()> {
        let permissions = std::fs::metadata(path)?.permissions();
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(".new");
        let temporary = PathBuf::from(temporary);
        // A leftover of a crash in this very step holds nothing the file does not.
        match std::fs::remove_file(&temporary) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        // Never readable by others, not even for the moment before its permissions are set.
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&temporary)?;
        file.set_permissions(permissions)?;
        file.write_all(serde_json::to_string_pretty(self)?.as_bytes())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temporary, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// The path of the credential that `sprig run` writes in `data_dir` and the CLI reads.
    pub fn path_in(data_dir: &Path) -> PathBuf {
        data_dir.join(LOCAL_OPERATOR_FILE)
    }

    /// Reads a credential file.
    pub fn load(path: &Path) -> std::io::Result<LocalOperator> {
        let text = std::fs::read_to_string(path)?;
        serde_json::from_str(&text).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })
    }
}

/// `len` random letters and digits.
fn random_secret(len: usize) -> String {
    use rand::distributions::{Alphanumeric, DistString};
    Alphanumeric.sample_string(&mut rand::thread_rng(), len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(name: &str) -> Principal {
        Principal::Device {
            thing_name: name.to_owned(),
        }
    }

    fn operator() -> Principal {
        Principal::Operator(Arc::new(Operator {
            username: "ops".into(),
            grants: Grants::all(),
        }))
    }

    #[test]
    fn devices_stay_under_their_own_thing() {
        let d = device("pump-1");
        assert!(d.may_publish("pump-1", "$aws/things/pump-1/jobs/get"));
        assert!(d.may_subscribe("pump-1", "$aws/things/pump-1/jobs/#"));
        assert!(!d.may_subscribe("pump-1", "$aws/things/pump-10/jobs/#"));
        assert!(!d.may_subscribe("pump-1", "$aws/things/+/jobs/notify"));
        assert!(!d.may_publish("pump-1", "$sprig/control/pump-1/DeleteJob"));
        assert!(!d.may_subscribe("pump-1", "#"));
    }

    #[test]
    fn operators_use_only_their_own_control_topics() {
        let o = operator();
        assert!(o.may_publish("cli-1", "$sprig/control/cli-1/DeleteJob"));
        assert!(!o.may_publish("cli-1", "$sprig/control/cli-2/DeleteJob"));
        assert!(!o.may_publish("cli-1", "$sprig/control/cli-1/DeleteJob/accepted"));
        assert!(o.may_subscribe("cli-1", "$sprig/control/cli-1/#"));
        assert!(!o.may_subscribe("cli-1", "$sprig/control/+/#"));
        assert!(o.may_subscribe("cli-1", "$aws/events/presence/#"));
    }

    #[test]
    fn the_authenticator_adds_topic_rules_to_the_built_in_rules() {
        let local = LocalOperator {
            username: LOCAL_OPERATOR_USERNAME.into(),
            password: "pw".into(),
            access_key: None,
        };
        let mut config = crate::config::Config::default().auth;
        config.topic_rules.push(crate::config::TopicRuleConfig {
            things: vec!["pump-*".into()],
            operators: vec![LOCAL_OPERATOR_USERNAME.into()],
            publish: vec!["dt/${thing}/#".into()],
            subscribe: vec!["cmd/${thing}/#".into(), "dt/#".into()],
        });
        let auth = Authenticator::new(&config, &local).unwrap();
        let pump = device("pump-1");
        // Built-in rules stay as they are.
        assert!(auth.may_publish(&pump, "pump-1", "$aws/things/pump-1/jobs/get"));
        assert!(auth.may_subscribe(&pump, "pump-1", "$aws/things/pump-1/jobs/#"));
        assert!(!auth.may_subscribe(&pump, "pump-1", "$aws/events/presence/#"));
        // The rule adds its topics.
        assert!(auth.may_publish(&pump, "pump-1", "dt/pump-1/temp"));
        assert!(!auth.may_publish(&pump, "pump-1", "dt/pump-2/temp"));
        assert!(auth.may_subscribe(&pump, "pump-1", "cmd/pump-1/#"));
        assert!(auth.may_subscribe(&pump, "pump-1", "dt/+/#"));
        // Only to the devices it names.
        let valve = device("valve-1");
        assert!(!auth.may_publish(&valve, "valve-1", "dt/valve-1/temp"));
        assert!(auth.may_publish(&valve, "valve-1", "$aws/things/valve-1/jobs/get"));
        // And to the operators it names, whose built-in topics stay theirs.
        let local_op = Principal::Operator(Arc::new(Operator {
            username: LOCAL_OPERATOR_USERNAME.into(),
            grants: Grants::all(),
        }));
        assert!(auth.may_subscribe(&local_op, "cli-1", "dt/#"));
        assert!(!auth.may_subscribe(&local_op, "cli-1", "cmd/+/#"));
        assert!(auth.may_publish(&local_op, "cli-1", "$sprig/control/cli-1/DeleteJob"));
        assert!(auth.may_subscribe(&local_op, "cli-1", "$aws/events/presence/#"));
        assert!(!auth.may_subscribe(&operator(), "cli-1", "dt/#"));
    }

    #[test]
    fn grants_decide_namespace_visibility() {
        let g = Grants {
            all_namespaces: false,
            namespaces: ["acme".to_owned()].into(),
            standard_jobs: false,
        };
        assert!(g.may_see(Some("acme")));
        assert!(!g.may_see(Some("other")));
        assert!(!g.may_see(None));
        assert!(Grants::all().may_see(Some("anything")) && Grants::all().may_see(None));
    }

    #[test]
    fn sdk_metrics_are_not_part_of_the_username() {
        let metrics = "?SDK=IoTDeviceSDK/Python&Platform=Unix&Metadata=(CRTVersion=0.36.0)";
        assert_eq!(connect_username(metrics), "");
        assert_eq!(connect_username(&format!("thing-9{metrics}")), "thing-9");
        assert_eq!(connect_username("ops"), "ops");
        assert_eq!(connect_username(""), "");
    }

    #[test]
    fn anonymous_devices_only_on_loopback() {
        let local = LocalOperator {
            username: LOCAL_OPERATOR_USERNAME.into(),
            password: "pw".into(),
            access_key: None,
        };
        let config = crate::config::Config::default().auth;
        let auth = Authenticator::new(&config, &local).unwrap();
        assert_eq!(
            auth.authenticate("pump-1", None, None, true),
            Ok(device("pump-1"))
        );
        assert_eq!(
            auth.authenticate("pump-1", None, None, false),
            Err(AuthError::PasswordRequired)
        );
        assert!(matches!(
            auth.authenticate("a/b", None, None, true),
            Err(AuthError::InvalidClientId(_))
        ));
        // Not a thing name: a client with no rights but those of the topic rules, on loopback only.
        let tool = Principal::Client {
            client_id: "clean retained".into(),
        };
        assert_eq!(
            auth.authenticate("clean retained", None, None, true),
            Ok(tool.clone())
        );
        assert!(!tool.may_publish("clean retained", "$aws/things/clean retained/jobs/get"));
        assert_eq!(
            auth.authenticate("clean retained", None, None, false),
            Err(AuthError::PasswordRequired)
        );
        assert!(matches!(
            auth.authenticate("cli", Some(LOCAL_OPERATOR_USERNAME), Some(b"pw"), false),
            Ok(Principal::Operator(_))
        ));
        assert_eq!(
            auth.authenticate("cli", Some(LOCAL_OPERATOR_USERNAME), Some(b"nope"), true),
            Err(AuthError::BadCredentials)
        );
    }

    #[test]
    fn a_verified_certificate_names_the_device() {
        let local = LocalOperator {
            username: LOCAL_OPERATOR_USERNAME.into(),
            password: "pw".into(),
            access_key: None,
        };
        let mut config = crate::config::Config::default().auth;
        config.devices.push(crate::config::DeviceConfig {
            thing_name: "pump-1".into(),
            password_hash: hash_password("secret").unwrap(),
        });
        let auth = Authenticator::new(&config, &local).unwrap();
        let cert = |cn: &str| VerifiedCertificate {
            common_name: cn.into(),
        };
        // No password needed, even for a thing that has one.
        assert_eq!(
            auth.authenticate_certificate("pump-1", &cert("pump-1")),
            Ok(device("pump-1"))
        );
        assert!(matches!(
            auth.authenticate_certificate("pump-2", &cert("pump-1")),
            Err(AuthError::ClientIdMismatch { .. })
        ));
        assert_eq!(
            auth.authenticate_certificate("bad name!", &cert("bad name!")),
            Err(AuthError::InvalidCertificateName("bad name!".into()))
        );
    }

    #[test]
    fn the_local_operators_generated_token_is_checked_without_argon2() {
        let local = LocalOperator {
            username: LOCAL_OPERATOR_USERNAME.into(),
            password: "Zq3tZq3tZq3tZq3tZq3tZq3tZq3tZq3t".into(),
            access_key: None,
        };
        let mut config = crate::config::Config::default().auth;
        config.operators.push(crate::config::OperatorConfig {
            username: "ops".into(),
            password_hash: hash_password("secret").unwrap(),
            namespaces: Vec::new(),
            standard_jobs: true,
            access_key_id: None,
            secret_access_key: None,
        });
        let auth = Authenticator::new(&config, &local).unwrap();
        assert!(auth.checks_instantly(LOCAL_OPERATOR_USERNAME));
        assert!(
            !auth.checks_instantly("ops"),
            "a person's password keeps argon2"
        );
        assert!(!auth.checks_instantly("nobody"));
        let login = |password: &[u8]| {
            auth.authenticate(
                "cli-1",
                Some(LOCAL_OPERATOR_USERNAME),
                Some(password),
                false,
            )
        };
        assert!(matches!(
            login(local.password.as_bytes()),
            Ok(Principal::Operator(_))
        ));
        assert_eq!(
            login(b"Zq3tZq3tZq3tZq3tZq3tZq3tZq3tZq3u"),
            Err(AuthError::BadCredentials)
        );
        assert_eq!(login(b"Zq3t"), Err(AuthError::BadCredentials));
        assert_eq!(login(b""), Err(AuthError::BadCredentials));
    }

    #[test]
    fn the_local_operator_credential_is_created_once_with_an_access_key() {
        let dir = tempfile::tempdir().unwrap();
        let created = LocalOperator::load_or_create(dir.path()).unwrap();
        let key = created
            .access_key
            .clone()
            .expect("a new credential has a key");
        assert!(
            crate::config::is_access_key_id(&key.access_key_id),
            "{key:?}"
        );
        assert!(key.access_key_id.starts_with("SPRG"));
        assert_eq!(key.secret_access_key.len(), 40);
        assert!(key
            .secret_access_key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric()));
        assert!(!format!("{key:?}").contains(&key.secret_access_key));
        let path = LocalOperator::path_in(dir.path());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("\"access_key_id\"") && text.contains("\"secret_access_key\""),
            "{text}"
        );
        assert_eq!(LocalOperator::load_or_create(dir.path()).unwrap(), created);
        assert_eq!(LocalOperator::load(&path).unwrap(), created);
    }

    #[test]
    fn a_credential_written_before_access_keys_gets_one_and_keeps_its_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = LocalOperator::path_in(dir.path());
        std::fs::write(
            &path,
            r#"{"username": "sprig-local", "password": "Zq3tZq3tZq3tZq3tZq3tZq3tZq3tZq3t"}"#,
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let permissions = std::fs::Permissions::from_mode(0o640);
            std::fs::set_permissions(&path, permissions).unwrap();
        }
        assert_eq!(LocalOperator::load(&path).unwrap().access_key, None);

        let upgraded = LocalOperator::load_or_create(dir.path()).unwrap();
        assert_eq!(upgraded.username, LOCAL_OPERATOR_USERNAME);
        assert_eq!(upgraded.password, "Zq3tZq3tZq3tZq3tZq3tZq3tZq3tZq3t");
        assert!(upgraded.access_key.is_some());
        assert_eq!(
            LocalOperator::load(&path).unwrap(),
            upgraded,
            "written back"
        );
        assert_eq!(LocalOperator::load_or_create(dir.path()).unwrap(), upgraded);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o640, "the file's permissions are kept");
        }
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [LOCAL_OPERATOR_FILE], "no temporary file left");
    }

    #[test]
    fn half_an_access_key_in_the_file_is_replaced_by_a_whole_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = LocalOperator::path_in(dir.path());
        std::fs::write(
            &path,
            r#"{"username": "sprig-local", "password": "pw", "access_key_id": "SPRGHALF000000000000"}"#,
        )
        .unwrap();
        assert_eq!(LocalOperator::load(&path).unwrap().access_key, None);
        let key = LocalOperator::load_or_create(dir.path())
            .unwrap()
            .access_key
            .unwrap();
        assert_ne!(key.access_key_id, "SPRGHALF000000000000");
        assert_eq!(LocalOperator::load(&path).unwrap().access_key, Some(key));
    }

    #[test]
    fn a_thing_with_a_password_cannot_connect_anonymously() {
        let local = LocalOperator {
            username: LOCAL_OPERATOR_USERNAME.into(),
            password: "pw".into(),
            access_key: None,
        };
        let mut config = crate::config::Config::default().auth;
        config.devices.push(crate::config::DeviceConfig {
            thing_name: "secure-1".into(),
            password_hash: hash_password("secret").unwrap(),
        });
        let auth = Authenticator::new(&config, &local).unwrap();
        assert_eq!(
            auth.authenticate("secure-1", None, None, true),
            Err(AuthError::PasswordRequired)
        );
        assert_eq!(
            auth.authenticate("secure-1", Some("secure-1"), Some(b"secret"), true),
            Ok(device("secure-1"))
        );
        // Nor may anyone take the local operator's name as a device.
        assert_eq!(
            auth.authenticate(LOCAL_OPERATOR_USERNAME, None, None, true),
            Err(AuthError::PasswordRequired)
        );
        // Nor may an operator take the configured device's client id.
        assert!(matches!(
            auth.authenticate("secure-1", Some(LOCAL_OPERATOR_USERNAME), Some(b"pw"), true),
            Err(AuthError::DeviceClientId { .. })
        ));
    }
}
