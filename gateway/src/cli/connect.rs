//! Where to connect and as whom, when the user said little or nothing.
//!
//! `sprig delete-job --job-id j1` beside a running gateway must just work, so both halves have defaults
//! that follow `sprig run`:
//! - the endpoint is `--endpoint` (or `SPRIG_ENDPOINT`), else the first `[broker] listen` address of the
//!   config (`--config`, else the built-in defaults), an unspecified address (`0.0.0.0`, `::`) meaning
//!   loopback;
//! - the credentials are `--username`/`--password` (or `SPRIG_USERNAME`/`SPRIG_PASSWORD`), else the local
//!   operator credential `sprig run` wrote to `{data_dir}/local-operator.json`.
//!
//! The config is read only when a default needs it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use super::args::ConnectionArgs;
use super::Failure;
use crate::auth::LocalOperator;
use crate::config::Config;

/// The MQTT port when an endpoint names none.
pub const DEFAULT_PORT: u16 = 1883;

/// An MQTT endpoint over plain TCP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "mqtt://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "mqtt://{}:{}", self.host, self.port)
        }
    }
}

impl Endpoint {
    /// Parses `mqtt://HOST[:PORT]` (the scheme may be left out; IPv6 hosts in brackets).
    pub fn parse(text: &str) -> Result<Endpoint, Failure> {
        let bad = |why: &str| {
            Failure::Usage(format!(
                "Error parsing parameter '--endpoint': {why}: {text} (expected mqtt://HOST:PORT)"
            ))
        };
        let rest = match text.split_once("://") {
            Some(("mqtt" | "tcp", rest)) => rest,
            Some((scheme, _)) => return Err(bad(&format!("unsupported scheme `{scheme}`"))),
            None => text,
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed `[`"))?;
            (host, after.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            }
        };
        if host.is_empty() || host.contains(['/', '@', ' ']) {
            return Err(bad("invalid host"));
        }
        let port = match port {
            Some(port) => port.parse().map_err(|_| bad("invalid port"))?,
            None => DEFAULT_PORT,
        };
        Ok(Endpoint {
            host: host.to_owned(),
            port,
        })
    }

    /// The endpoint that reaches a listener bound to `addr` from this machine.
    pub fn for_listener(addr: SocketAddr) -> Endpoint {
        let ip = match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        Endpoint {
            host: ip.to_string(),
            port: addr.port(),
        }
    }
}

/// An operator's username and password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Everything needed to open the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub endpoint: Endpoint,
    pub credentials: Credentials,
}

/// Resolves the endpoint and the credentials from the flags, the environment and the config.
pub fn resolve(args: &ConnectionArgs) -> Result<Target, Failure> {
    let explicit = explicit_credentials(args)?;
    let needs_config = args.endpoint.is_none() || explicit.is_none();
    let config = if needs_config {
        Some(load_config(args.config.as_deref())?)
    } else {
        None
    };
    let endpoint = match (&args.endpoint, &config) {
        (Some(text), _) => Endpoint::parse(text)?,
        (None, Some(config)) => Endpoint::for_listener(config.broker.listen[0]),
        (None, None) => unreachable!("the config is loaded when no endpoint is given"),
    };
    let credentials = match (explicit, &config) {
        (Some(credentials), _) => credentials,
        (None, Some(config)) => local_operator(config, args.config.as_deref())?,
        (None, None) => unreachable!("the config is loaded when no credentials are given"),
    };
    Ok(Target {
        endpoint,
        credentials,
    })
}

fn explicit_credentials(args: &ConnectionArgs) -> Result<Option<Credentials>, Failure> {
    match (&args.username, &args.password) {
        (Some(username), Some(password)) => Ok(Some(Credentials {
            username: username.clone(),
            password: password.clone(),
        })),
        (Some(_), None) => Err(Failure::Usage(
            "sprig: error: --username needs --password (or SPRIG_PASSWORD)".to_owned(),
        )),
        (None, Some(_)) => Err(Failure::Usage(
            "sprig: error: --password needs --username (or SPRIG_USERNAME)".to_owned(),
        )),
        (None, None) => Ok(None),
    }
}

fn load_config(path: Option<&Path>) -> Result<Config, Failure> {
    crate::daemon::config_checks::load(path).map_err(|e| Failure::Other(e.to_string()))
}

/// Reads the credential `sprig run` wrote into the config's data dir.
fn local_operator(config: &Config, config_path: Option<&Path>) -> Result<Credentials, Failure> {
    let path = LocalOperator::path_in(&config.gateway.data_dir);
    match LocalOperator::load(&path) {
        Ok(local) => Ok(Credentials {
            username: local.username,
            password: local.password,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let run = match config_path {
                Some(config) => format!("`sprig run --config {}`", config.display()),
                None => "`sprig run` in this directory".to_owned(),
            };
            Err(Failure::Other(format!(
                "no credentials: pass --username/--password or run {run} first (looked for {})",
                path.display()
            )))
        }
        Err(e) => Err(Failure::Other(format!(
            "cannot read the local operator credential {}: {e}",
            path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ConnectionArgs {
        ConnectionArgs {
            timeout_secs: 30,
            ..ConnectionArgs::default()
        }
    }

    fn failure_text(result: Result<Target, Failure>) -> (u8, String) {
        let failure = result.unwrap_err();
        (failure.exit_code(), failure.to_string())
    }

    #[test]
    fn endpoints_parse_like_urls() {
        let ep = |s| Endpoint::parse(s).unwrap();
        assert_eq!(
            ep("mqtt://gw.local:1884").to_string(),
            "mqtt://gw.local:1884"
        );
        assert_eq!(ep("127.0.0.1:1883").to_string(), "mqtt://127.0.0.1:1883");
        assert_eq!(ep("mqtt://gw").port, DEFAULT_PORT);
        assert_eq!(ep("mqtt://[::1]:1999").host, "::1");
        assert_eq!(ep("mqtt://[::1]:1999").to_string(), "mqtt://[::1]:1999");
        for bad in [
            "mqtts://gw:8883",
            "mqtt://gw:port",
            "mqtt://:1883",
            "http://x",
        ] {
            assert_eq!(Endpoint::parse(bad).unwrap_err().exit_code(), 252, "{bad}");
        }
    }

    #[test]
    fn unspecified_listen_addresses_mean_loopback() {
        let ep = Endpoint::for_listener("0.0.0.0:1883".parse().unwrap());
        assert_eq!(ep.to_string(), "mqtt://127.0.0.1:1883");
        let ep = Endpoint::for_listener("[::]:1883".parse().unwrap());
        assert_eq!(ep.to_string(), "mqtt://[::1]:1883");
        let ep = Endpoint::for_listener("192.168.1.5:2000".parse().unwrap());
        assert_eq!(ep.to_string(), "mqtt://192.168.1.5:2000");
    }

    #[test]
    fn explicit_flags_need_no_config() {
        let target = resolve(&ConnectionArgs {
            endpoint: Some("mqtt://10.0.0.1:1883".into()),
            username: Some("ops".into()),
            password: Some("pw".into()),
            config: Some("/nonexistent/gateway.toml".into()),
            ..args()
        })
        .unwrap();
        assert_eq!(target.endpoint.to_string(), "mqtt://10.0.0.1:1883");
        assert_eq!(target.credentials.username, "ops");
        assert_eq!(target.credentials.password, "pw");
    }

    #[test]
    fn half_a_credential_is_a_usage_error() {
        let (code, text) = failure_text(resolve(&ConnectionArgs {
            username: Some("ops".into()),
            ..args()
        }));
        assert_eq!(code, 252);
        assert!(text.contains("--password"), "{text}");
    }

    #[test]
    fn defaults_come_from_the_config_and_its_local_operator() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let config_path = dir.path().join("gateway.toml");
        let toml = crate::config::DEFAULT_TOML
            .replace("./sprig-data", &data_dir.display().to_string())
            .replace("127.0.0.1:1883", "0.0.0.0:2883");
        assert_ne!(
            toml,
            crate::config::DEFAULT_TOML,
            "the defaults changed shape"
        );
        std::fs::write(&config_path, toml).unwrap();
        let with_config = ConnectionArgs {
            config: Some(config_path.clone()),
            ..args()
        };

        let (code, text) = failure_text(resolve(&with_config));
        assert_eq!(code, 255);
        assert!(
            text.starts_with("no credentials: pass --username/--password"),
            "{text}"
        );
        assert!(
            text.contains("local-operator.json") && !text.contains('\n'),
            "{text}"
        );

        let local = LocalOperator::load_or_create(&data_dir).unwrap();
        let target = resolve(&with_config).unwrap();
        assert_eq!(target.endpoint.to_string(), "mqtt://127.0.0.1:2883");
        assert_eq!(target.credentials.username, local.username);
        assert_eq!(target.credentials.password, local.password);

        let explicit_endpoint = ConnectionArgs {
            endpoint: Some("mqtt://gw:1999".into()),
            ..with_config
        };
        assert_eq!(resolve(&explicit_endpoint).unwrap().endpoint.port, 1999);
    }

    #[test]
    fn the_built_in_defaults_point_at_loopback_and_sprig_data() {
        let config = Config::default();
        assert_eq!(
            Endpoint::for_listener(config.broker.listen[0]).to_string(),
            "mqtt://127.0.0.1:1883"
        );
        assert_eq!(
            LocalOperator::path_in(&config.gateway.data_dir),
            Path::new("./sprig-data/local-operator.json")
        );
    }

    #[test]
    fn a_broken_config_file_is_reported() {
        let (code, text) = failure_text(resolve(&ConnectionArgs {
            config: Some("/nonexistent/gateway.toml".into()),
            ..args()
        }));
        assert_eq!(code, 255);
        assert!(text.contains("/nonexistent/gateway.toml"), "{text}");
    }
}
