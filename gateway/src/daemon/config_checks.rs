//! The config checks that need the gateway's modules: password hashes and topic rules (which [`crate::auth`]
//! understands) and the TLS keys and files (which `broker::tls` reads). [`crate::config`] is plain
//! data that names no module, so these run here, on the loaded config, and fail with the same
//! [`ConfigError::Invalid`] (the config's origin, the key, the reason) as the config's own checks.

use std::path::Path;

use crate::auth::{self, TopicRules, LOCAL_OPERATOR_USERNAME};
use crate::broker::tls;
use crate::config::{Config, ConfigError};

/// A config key and why its value is refused.
type KeyError = (String, String);

/// The config at `path`, or the built-in defaults, with every check `sprig` makes before using it: the
/// config's own and [`check`]'s. The TLS files are read only by [`check_files`].
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    let config = match path {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    check(&config)?;
    Ok(config)
}

/// The checks that need no file: the TLS keys that go together, the password hashes, the topic rules.
pub fn check(config: &Config) -> Result<(), ConfigError> {
    check_tls_keys(config)
        .and_then(|()| check_password_hashes(config))
        .and_then(|()| check_topic_rules(config))
        .map_err(|error| invalid(config, error))
}

/// Reads the files the config names that `sprig run` needs before it starts: the TLS certificate, key and
/// client CA must be readable PEM that fit together. (Not part of [`load`]: the CLI loads the same file
/// without the key.)
pub fn check_files(config: &Config) -> Result<(), ConfigError> {
    tls::server_config(&config.broker)
        .map(drop)
        .map_err(|error| invalid(config, error))
}

fn invalid(config: &Config, (key, reason): KeyError) -> ConfigError {
    ConfigError::Invalid {
        origin: config.origin.clone(),
        key,
        reason,
    }
}

/// The `broker.tls_*` keys that must be set together (the files themselves are read by [`check_files`]).
fn check_tls_keys(config: &Config) -> Result<(), KeyError> {
    tls::check_keys(&config.broker).map(drop)
}

/// Every `password_hash` is an argon2 PHC string, so a typo is refused at start-up, not at the first login.
fn check_password_hashes(config: &Config) -> Result<(), KeyError> {
    let operators = config.auth.operators.iter().enumerate().map(|(i, op)| {
        (
            format!("auth.operators[{i}].password_hash"),
            &op.password_hash,
        )
    });
    let devices = config.auth.devices.iter().enumerate().map(|(i, dev)| {
        (
            format!("auth.devices[{i}].password_hash"),
            &dev.password_hash,
        )
    });
    for (key, hash) in operators.chain(devices) {
        auth::check_hash_format(hash).map_err(|reason| (key, reason))?;
    }
    Ok(())
}

/// `[[auth.topic_rules]]`: every glob and pattern compiles (the compiler names the key and the rule broken),
/// and every operator named is one that can log in.
fn check_topic_rules(config: &Config) -> Result<(), KeyError> {
    TopicRules::compile(&config.auth.topic_rules).map_err(|e| (e.key, e.reason))?;
    let known = |username: &str| {
        username == LOCAL_OPERATOR_USERNAME
            || config
                .auth
                .operators
                .iter()
                .any(|op| op.username == username)
    };
    for (i, rule) in config.auth.topic_rules.iter().enumerate() {
        if let Some((j, unknown)) = rule.operators.iter().enumerate().find(|(_, u)| !known(u)) {
            return Err((
                format!("auth.topic_rules[{i}].operators[{j}]"),
                format!(
                    "no operator `{unknown}`: name the username of an [[auth.operators]] entry, or \
                     `{LOCAL_OPERATOR_USERNAME}` (the local operator)",
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_TOML;

    /// The default config with `extra` (TOML) appended, through every check but the files'.
    fn with_rules(extra: &str) -> Result<Config, String> {
        Config::parse(&format!("{DEFAULT_TOML}\n{extra}"), "test.toml")
            .and_then(|config| check(&config).map(|()| config))
            .map_err(|e| e.to_string())
    }

    /// The error for `rules`, which must name `key` and contain every one of `reason`.
    fn refused(rules: &str, key: &str, reason: &[&str]) {
        let err = with_rules(rules).unwrap_err();
        assert!(err.contains("test.toml"), "{err}");
        assert!(err.contains(&format!("key `{key}`")), "{err}");
        for part in reason {
            assert!(err.contains(part), "{err}");
        }
    }

    #[test]
    fn the_creation_batch_default_is_the_engines() {
        assert_eq!(
            crate::config::DEFAULT_CREATION_BATCH_SIZE,
            crate::jobs::engine::CREATION_BATCH
        );
    }

    #[test]
    fn bad_password_hashes_name_the_key() {
        refused(
            "[[auth.operators]]\nusername = \"fleet\"\npassword_hash = \"secret\"\n",
            "auth.operators[0].password_hash",
            &["not a password hash", "sprig hash-password"],
        );
        refused(
            "[[auth.devices]]\nthing_name = \"pump-1\"\npassword_hash = \"secret\"\n",
            "auth.devices[0].password_hash",
            &["not a password hash"],
        );
    }

    #[test]
    fn tls_keys_without_their_files_name_the_key_and_the_config() {
        let text = DEFAULT_TOML.replace(
            "max_outgoing_packet_count = 200\n",
            "max_outgoing_packet_count = 200\ntls_listen = [\"0.0.0.0:8883\"]\n",
        );
        let err = Config::parse(&text, "test.toml")
            .and_then(|config| check(&config))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("test.toml")
                && err.contains("broker.tls_cert")
                && err.contains("required"),
            "{err}"
        );
    }

    #[test]
    fn bad_topic_rules_name_the_key_and_the_rule() {
        refused(
            "[[auth.topic_rules]]\npublish = [\"dt/${thing}/#\", \"dt/x${thing}\"]",
            "auth.topic_rules[0].publish[1]",
            &["dt/x${thing}", "whole level"],
        );
        refused(
            "[[auth.topic_rules]]\n[[auth.topic_rules]]\nsubscribe = [\"a/#/b\"]",
            "auth.topic_rules[1].subscribe[0]",
            &["`#` must be alone in the last level"],
        );
        refused(
            "[[auth.topic_rules]]\nsubscribe = [\"a/b+\"]",
            "auth.topic_rules[0].subscribe[0]",
            &["`+` must be alone in its level"],
        );
        refused(
            "[[auth.topic_rules]]\npublish = [\"\"]",
            "auth.topic_rules[0].publish[0]",
            &["must not be empty"],
        );
        refused(
            "[[auth.topic_rules]]\npublish = [\"a/\\u0000\"]",
            "auth.topic_rules[0].publish[0]",
            &["NUL"],
        );
        refused(
            "[[auth.topic_rules]]\npublish = [\"dt/${device}/#\"]",
            "auth.topic_rules[0].publish[0]",
            &["unknown variable `${device}`", "${thing}", "${client_id}"],
        );
        refused(
            "[[auth.topic_rules]]\nsubscribe = [\"$aws/things/${thing}/shadow/#\"]",
            "auth.topic_rules[0].subscribe[0]",
            &["may not start with `$`", "built-in", "cannot be granted"],
        );
        refused(
            "[[auth.topic_rules]]\nthings = [\"pump-*\", \"[a-\"]",
            "auth.topic_rules[0].things[1]",
            &["not a glob"],
        );
        refused(
            "[[auth.topic_rules]]\noperators = [\"sprig-local\", \"nobody\"]",
            "auth.topic_rules[0].operators[1]",
            &["no operator `nobody`", "[[auth.operators]]"],
        );
    }

    #[test]
    fn topic_rules_may_name_configured_operators() {
        let hash = crate::auth::hash_password("pw").unwrap();
        let config = with_rules(&format!(
            "[[auth.operators]]\nusername = \"fleet\"\npassword_hash = \"{hash}\"\n\
             [[auth.topic_rules]]\nthings = []\noperators = [\"fleet\"]\npublish = [\"cmd/+/#\"]\n"
        ));
        assert!(config.is_ok(), "{config:?}");
    }
}
