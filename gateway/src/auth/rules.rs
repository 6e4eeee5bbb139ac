//! Topic rules (`[[auth.topic_rules]]`): the topics, beyond the built-in ones, that the config grants to
//! devices (by thing-name glob) and to operators (by username), in the spirit of AWS IoT policies and
//! mosquitto's pattern ACLs.
//!
//! A rule's patterns are MQTT filters whose levels may be the variables `${thing}` (the device's thing name)
//! and `${client_id}` (the connection's client id). A PUBLISH is allowed when an applicable publish pattern
//! matches its topic; a SUBSCRIBE filter when a single applicable subscribe pattern *contains* it (every
//! topic the filter can match, the pattern matches too), so `dt/+/#` is not granted by `dt/${thing}/#`.
//! Patterns never start with `$`: the reserved `$aws/...` and `$sprig/...` topics keep their built-in rules
//! (see [`Principal::may_publish`]) and cannot be granted here. Everything is a pure function of the
//! compiled rules, the principal, the client id and the topic.

use std::collections::BTreeSet;

use super::Principal;
use crate::config::TopicRuleConfig;
use crate::topic_filter::{self, FilterError};

/// The variable standing for a device's thing name.
const THING: &str = "${thing}";
/// The variable standing for the connection's client id.
const CLIENT_ID: &str = "${client_id}";

/// Why a `[[auth.topic_rules]]` entry was refused: the full config key (`auth.topic_rules[0].publish[1]`)
/// and the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key `{key}`: {reason}")]
pub struct RuleError {
    pub key: String,
    pub reason: String,
}

/// Why a publish or subscribe pattern is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("not a valid MQTT topic filter: {0}")]
    Filter(#[from] FilterError),
    #[error(
        "may not start with `$`: the reserved topics (`$aws/...`, `$sprig/...`) have built-in rules and \
         cannot be granted by topic rules"
    )]
    Reserved,
    #[error("unknown variable `{0}`: the variables are `${{thing}}` and `${{client_id}}`")]
    UnknownVariable(String),
    #[error("`${{` without a closing `}}` in level `{0}`")]
    UnclosedVariable(String),
    #[error("a variable must be a whole level (`dt/${{thing}}/#`), not part of one (level `{0}`)")]
    PartialLevel(String),
}

/// One level of a pattern: text (a literal, `+` or `#`) or a variable filled in per connection.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Text(String),
    Thing,
    ClientId,
}

/// A compiled publish or subscribe pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    levels: Vec<Level>,
}

impl Pattern {
    /// Checks and compiles one pattern as written in the config.
    pub fn parse(text: &str) -> Result<Pattern, PatternError> {
        topic_filter::check_filter(text)?;
        let levels = text
            .split('/')
            .map(parse_level)
            .collect::<Result<Vec<_>, _>>()?;
        if matches!(&levels[0], Level::Text(first) if first.starts_with('$')) {
            return Err(PatternError::Reserved);
        }
        Ok(Pattern { levels })
    }

    /// The filter this pattern stands for on `subject`'s connection; `None` when it does not apply: a
    /// `${thing}` pattern for an operator (who has no thing), or a value that is not a plain level (empty,
    /// with `/`, a wildcard or NUL) or would make the filter start with `$`. Thing names and client ids
    /// are checked at CONNECT so that cannot happen, but a rule must never widen because of a value.
    fn resolve(&self, subject: &Subject) -> Option<String> {
        let mut levels = Vec::with_capacity(self.levels.len());
        for level in &self.levels {
            let value = match level {
                Level::Text(text) => text.as_str(),
                Level::Thing => plain_level(subject.thing?)?,
                Level::ClientId => plain_level(subject.client_id)?,
            };
            levels.push(value);
        }
        let filter = levels.join("/");
        (!filter.starts_with('$')).then_some(filter)
    }
}

fn parse_level(level: &str) -> Result<Level, PatternError> {
    match level {
        THING => return Ok(Level::Thing),
        CLIENT_ID => return Ok(Level::ClientId),
        _ => {}
    }
    let Some(start) = level.find("${") else {
        return Ok(Level::Text(level.to_owned()));
    };
    let Some(length) = level[start..].find('}') else {
        return Err(PatternError::UnclosedVariable(level.to_owned()));
    };
    match &level[start..=start + length] {
        THING | CLIENT_ID => Err(PatternError::PartialLevel(level.to_owned())),
        unknown => Err(PatternError::UnknownVariable(unknown.to_owned())),
    }
}

/// `value` if it can stand for a whole level without changing the pattern's shape.
fn plain_level(value: &str) -> Option<&str> {
    (!value.is_empty() && !value.contains(['/', '+', '#', '\0'])).then_some(value)
}

/// Whom a rule is checked for, and what its variables stand for.
struct Subject<'a> {
    /// The device's thing name; operators have none.
    thing: Option<&'a str>,
    /// The operator's username; devices have none.
    operator: Option<&'a str>,
    /// The client id of a client that is neither (`Principal::Client`), matched by the `things` globs.
    other: Option<&'a str>,
    client_id: &'a str,
}

impl<'a> Subject<'a> {
    fn new(principal: &'a Principal, client_id: &'a str) -> Subject<'a> {
        match principal {
            Principal::Device { thing_name } => Subject {
                thing: Some(thing_name),
                operator: None,
                other: None,
                client_id,
            },
            Principal::Operator(operator) => Subject {
                thing: None,
                operator: Some(&operator.username),
                other: None,
                client_id,
            },
            Principal::Client { client_id: id } => Subject {
                thing: None,
                operator: None,
                other: Some(id),
                client_id,
            },
        }
    }
}

/// One compiled `[[auth.topic_rules]]` entry.
#[derive(Debug, Clone)]
struct TopicRule {
    things: Vec<glob::Pattern>,
    operators: BTreeSet<String>,
    publish: Vec<Pattern>,
    subscribe: Vec<Pattern>,
}

impl TopicRule {
    /// Compiles entry `index`; errors name the key inside it (`publish[1]`).
    fn compile(index: usize, config: &TopicRuleConfig) -> Result<TopicRule, RuleError> {
        let key = |field: &str, i: usize| format!("auth.topic_rules[{index}].{field}[{i}]");
        let things = config
            .things
            .iter()
            .enumerate()
            .map(|(i, glob)| {
                glob::Pattern::new(glob).map_err(|e| RuleError {
                    key: key("things", i),
                    reason: format!("`{glob}` is not a glob: {e}"),
                })
            })
            .collect::<Result<_, _>>()?;
        let patterns = |field: &str, texts: &[String]| {
            texts
                .iter()
                .enumerate()
                .map(|(i, text)| {
                    Pattern::parse(text).map_err(|e| RuleError {
                        key: key(field, i),
                        reason: format!("`{text}`: {e}"),
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(TopicRule {
            things,
            operators: config.operators.iter().cloned().collect(),
            publish: patterns("publish", &config.publish)?,
            subscribe: patterns("subscribe", &config.subscribe)?,
        })
    }

    fn applies_to(&self, subject: &Subject) -> bool {
        let to_thing = (subject.thing.or(subject.other))
            .is_some_and(|name| self.things.iter().any(|glob| glob.matches(name)));
        let to_operator = subject
            .operator
            .is_some_and(|username| self.operators.contains(username));
        to_thing || to_operator
    }
}

/// The compiled `[[auth.topic_rules]]`, asked by the broker (through
/// [`Authenticator`](super::Authenticator)) about every PUBLISH and SUBSCRIBE that the built-in rules do
/// not allow.
#[derive(Debug, Clone, Default)]
pub struct TopicRules {
    rules: Vec<TopicRule>,
}

impl TopicRules {
    /// Compiles the configured rules; the first bad glob or pattern is refused with its key.
    pub fn compile(config: &[TopicRuleConfig]) -> Result<TopicRules, RuleError> {
        let rules = config
            .iter()
            .enumerate()
            .map(|(index, rule)| TopicRule::compile(index, rule))
            .collect::<Result<_, _>>()?;
        Ok(TopicRules { rules })
    }

    /// May `principal`, connected as `client_id`, publish to `topic` by some rule? (A topic with
    /// wildcards or NUL, which no PUBLISH may carry, never is.)
    pub fn allow_publish(&self, principal: &Principal, client_id: &str, topic: &str) -> bool {
        topic_filter::is_topic_name(topic)
            && self.granted(
                principal,
                client_id,
                |rule| &rule.publish,
                |pattern| topic_filter::matches(topic, pattern),
            )
    }

    /// May `principal`, connected as `client_id`, subscribe to `filter` by some rule? Only when one
    /// applicable subscribe pattern contains the whole filter (a malformed filter never is).
    pub fn allow_subscribe(&self, principal: &Principal, client_id: &str, filter: &str) -> bool {
        topic_filter::check_filter(filter).is_ok()
            && self.granted(
                principal,
                client_id,
                |rule| &rule.subscribe,
                |pattern| topic_filter::contains(pattern, filter),
            )
    }

    /// True when some pattern of `patterns_of` an applicable rule, resolved for this connection, passes
    /// `test`.
    fn granted(
        &self,
        principal: &Principal,
        client_id: &str,
        patterns_of: impl Fn(&TopicRule) -> &[Pattern],
        test: impl Fn(&str) -> bool,
    ) -> bool {
        let subject = Subject::new(principal, client_id);
        self.rules
            .iter()
            .filter(|rule| rule.applies_to(&subject))
            .flat_map(patterns_of)
            .filter_map(|pattern| pattern.resolve(&subject))
            .any(|filter| test(&filter))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::auth::{Grants, Operator};

    fn rule(
        things: &[&str],
        operators: &[&str],
        publish: &[&str],
        subscribe: &[&str],
    ) -> TopicRuleConfig {
        let strings = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
        TopicRuleConfig {
            things: strings(things),
            operators: strings(operators),
            publish: strings(publish),
            subscribe: strings(subscribe),
        }
    }

    fn compile(rules: &[TopicRuleConfig]) -> TopicRules {
        TopicRules::compile(rules).unwrap()
    }

    fn device(thing: &str) -> Principal {
        Principal::Device {
            thing_name: thing.to_owned(),
        }
    }

    fn operator(username: &str) -> Principal {
        Principal::Operator(Arc::new(Operator {
            username: username.to_owned(),
            grants: Grants::all(),
        }))
    }

    fn refusal(text: &str) -> PatternError {
        Pattern::parse(text).unwrap_err()
    }

    #[test]
    fn patterns_are_mqtt_filters_with_whole_level_variables() {
        for good in [
            "dt/${thing}/#",
            "${thing}/#",
            "cmd/${client_id}/+",
            "fleet/broadcast",
            "#",
            "+/status",
            "a/$not-first",
        ] {
            assert!(Pattern::parse(good).is_ok(), "{good}");
        }
        assert_eq!(refusal(""), PatternError::Filter(FilterError::Empty));
        assert_eq!(refusal("a\0"), PatternError::Filter(FilterError::Nul));
        assert_eq!(
            refusal("a/#/b"),
            PatternError::Filter(FilterError::MisplacedMultiLevel)
        );
        assert_eq!(
            refusal("a+/b"),
            PatternError::Filter(FilterError::MisplacedSingleLevel)
        );
        assert_eq!(
            refusal("dt/x${thing}"),
            PatternError::PartialLevel("x${thing}".into())
        );
        assert_eq!(
            refusal("dt/${client_id}-tx/#"),
            PatternError::PartialLevel("${client_id}-tx".into())
        );
        assert_eq!(
            refusal("dt/${username}/#"),
            PatternError::UnknownVariable("${username}".into())
        );
        assert_eq!(
            refusal("dt/${thing"),
            PatternError::UnclosedVariable("${thing".into())
        );
        assert_eq!(refusal("$aws/things/${thing}/x"), PatternError::Reserved);
        assert_eq!(refusal("$sprig/#"), PatternError::Reserved);
        assert_eq!(refusal("$SYS/#"), PatternError::Reserved);
    }

    #[test]
    fn pattern_errors_explain_the_rule() {
        let partial = refusal("dt/x${thing}").to_string();
        assert!(
            partial.contains("whole level") && partial.contains("x${thing}"),
            "{partial}"
        );
        let reserved = refusal("$aws/#").to_string();
        assert!(
            reserved.contains("`$`") && reserved.contains("cannot be granted"),
            "{reserved}"
        );
        let unknown = refusal("a/${user}").to_string();
        assert!(
            unknown.contains("${user}") && unknown.contains("${thing}"),
            "{unknown}"
        );
    }

    #[test]
    fn compile_errors_name_the_key() {
        let bad_publish = rule(&["*"], &[], &["dt/${thing}/#", "dt/x${thing}"], &[]);
        let ok = rule(&["*"], &[], &[], &[]);
        let err = TopicRules::compile(&[ok.clone(), bad_publish]).unwrap_err();
        assert_eq!(err.key, "auth.topic_rules[1].publish[1]");
        let err = TopicRules::compile(&[rule(&["*"], &[], &[], &["a", "#/a"])]).unwrap_err();
        assert_eq!(err.key, "auth.topic_rules[0].subscribe[1]");
        assert!(err.reason.contains("`#/a`"), "{}", err.reason);
        let err = TopicRules::compile(&[ok, rule(&["pump-*", "[a-"], &[], &[], &[])]).unwrap_err();
        assert_eq!(err.key, "auth.topic_rules[1].things[1]");
        assert!(err.reason.contains("not a glob"), "{}", err.reason);
    }

    #[test]
    fn thing_is_substituted_for_the_device_only() {
        let rules = compile(&[rule(&["*"], &[], &["dt/${thing}/#"], &["cmd/${thing}/#"])]);
        let pump = device("pump-1");
        assert!(rules.allow_publish(&pump, "pump-1", "dt/pump-1/temp"));
        assert!(rules.allow_publish(&pump, "pump-1", "dt/pump-1"));
        assert!(!rules.allow_publish(&pump, "pump-1", "dt/pump-2/temp"));
        assert!(!rules.allow_publish(&pump, "pump-1", "dt/pump-10/temp"));
        assert!(!rules.allow_publish(&pump, "pump-1", "cmd/pump-1/reboot"));
        assert!(rules.allow_subscribe(&pump, "pump-1", "cmd/pump-1/#"));
        assert!(rules.allow_subscribe(&pump, "pump-1", "cmd/pump-1/+"));
        assert!(!rules.allow_subscribe(&pump, "pump-1", "cmd/+/#"));
        assert!(!rules.allow_subscribe(&pump, "pump-1", "cmd/pump-2/#"));
        assert!(!rules.allow_subscribe(&pump, "pump-1", "dt/pump-1/#"));
    }

    #[test]
    fn subscriptions_must_be_contained_in_one_pattern() {
        let rules = compile(&[rule(
            &["*"],
            &[],
            &[],
            &["dt/${thing}/#", "fleet/broadcast", "zone/+/alarm"],
        )]);
        let pump = device("pump-1");
        let may = |filter| rules.allow_subscribe(&pump, "pump-1", filter);
        assert!(may("dt/pump-1/#"));
        assert!(may("dt/pump-1/+/x"));
        assert!(may("dt/pump-1"));
        assert!(!may("dt/+/#"), "everyone's telemetry");
        assert!(!may("dt/#"));
        assert!(!may("#"));
        assert!(may("fleet/broadcast"));
        assert!(!may("fleet/+"));
        assert!(!may("fleet/#"));
        assert!(may("zone/+/alarm"));
        assert!(may("zone/3/alarm"));
        assert!(!may("zone/3/#"));
        // Malformed filters are never granted, whatever the patterns.
        let everything = compile(&[rule(&["*"], &[], &[], &["#"])]);
        assert!(everything.allow_subscribe(&pump, "pump-1", "a/+/b/#"));
        assert!(!everything.allow_subscribe(&pump, "pump-1", "a/#/b"));
        assert!(!everything.allow_subscribe(&pump, "pump-1", ""));
    }

    #[test]
    fn rules_never_reach_dollar_topics() {
        let rules = compile(&[rule(&["*"], &[], &["#", "+/#"], &["#", "+/#"])]);
        let pump = device("pump-1");
        assert!(rules.allow_publish(&pump, "pump-1", "anything/at/all"));
        assert!(!rules.allow_publish(&pump, "pump-1", "$aws/things/pump-2/jobs/get"));
        assert!(!rules.allow_publish(&pump, "pump-1", "$sprig/control/pump-1/DeleteJob"));
        assert!(!rules.allow_subscribe(&pump, "pump-1", "$aws/events/presence/#"));
        assert!(!rules.allow_subscribe(&pump, "pump-1", "$sprig/control/+/#"));
        // No PUBLISH carries a wildcard: a topic with one is not granted even by `#`.
        assert!(!rules.allow_publish(&pump, "pump-1", "a/+"));
        assert!(!rules.allow_publish(&pump, "pump-1", "a/#"));
        assert!(!rules.allow_publish(&pump, "pump-1", ""));
    }

    #[test]
    fn values_that_are_not_plain_levels_never_widen_a_rule() {
        let rules = compile(&[rule(
            &["*"],
            &["ops"],
            &["${client_id}/#"],
            &["in/${client_id}/#"],
        )]);
        let ops = operator("ops");
        assert!(rules.allow_publish(&ops, "cli-1", "cli-1/x"));
        // Client ids are checked at CONNECT; were one to slip through, it would grant nothing.
        assert!(!rules.allow_subscribe(&ops, "+", "in/a/#"));
        assert!(!rules.allow_subscribe(&ops, "#", "in/a/b"));
        assert!(!rules.allow_publish(&ops, "a/b", "a/b/x"));
        assert!(!rules.allow_publish(&ops, "", "/x"));
        assert!(!rules.allow_publish(&ops, "$sprig", "$sprig/control/x/DeleteJob"));
    }

    #[test]
    fn thing_globs_choose_the_devices() {
        let rules = compile(&[rule(
            &["pump-*", "valve-[0-9]"],
            &[],
            &["plant/${thing}"],
            &[],
        )]);
        let may =
            |thing: &str| rules.allow_publish(&device(thing), thing, &format!("plant/{thing}"));
        assert!(may("pump-1"));
        assert!(may("pump-"));
        assert!(may("valve-7"));
        assert!(!may("valve-10"));
        assert!(
            !may("Pump-1"),
            "globs are case-sensitive, as thing names are"
        );
        assert!(!may("sensor-1"));
    }

    #[test]
    fn an_empty_things_list_applies_to_no_device() {
        let rules = compile(&[rule(&[], &["ops"], &["fleet/#"], &[])]);
        assert!(!rules.allow_publish(&device("pump-1"), "pump-1", "fleet/x"));
        assert!(rules.allow_publish(&operator("ops"), "cli", "fleet/x"));
    }

    #[test]
    fn operators_use_the_rules_that_name_them_without_thing_patterns() {
        let rules = compile(&[rule(
            &[],
            &["ops", crate::auth::LOCAL_OPERATOR_USERNAME],
            &["cmd/+/#", "cmd/${thing}/#", "ops/${client_id}/status"],
            &["dt/#", "dt/${thing}/#"],
        )]);
        let ops = operator("ops");
        let local = operator(crate::auth::LOCAL_OPERATOR_USERNAME);
        let stranger = operator("other");
        for named in [&ops, &local] {
            assert!(rules.allow_publish(named, "cli-1", "cmd/pump-1/reboot"));
            assert!(rules.allow_publish(named, "cli-1", "ops/cli-1/status"));
            assert!(!rules.allow_publish(named, "cli-1", "ops/cli-2/status"));
            assert!(rules.allow_subscribe(named, "cli-1", "dt/+/#"));
        }
        assert!(!rules.allow_publish(&stranger, "cli-1", "cmd/pump-1/reboot"));
        assert!(!rules.allow_subscribe(&stranger, "cli-1", "dt/+/#"));
        // A `${thing}` pattern never applies to an operator: alone, it grants nothing.
        let thing_only = compile(&[rule(&[], &["ops"], &["cmd/${thing}/#"], &["dt/${thing}/#"])]);
        assert!(!thing_only.allow_publish(&ops, "cli-1", "cmd/cli-1/x"));
        assert!(!thing_only.allow_publish(&ops, "cli-1", "cmd/ops/x"));
        assert!(!thing_only.allow_subscribe(&ops, "cli-1", "dt/ops/#"));
        // Nor does a rule naming an operator apply to a device of that name.
        assert!(!rules.allow_publish(&device("ops"), "ops", "cmd/pump-1/reboot"));
    }

    #[test]
    fn client_id_is_substituted_for_devices_too() {
        let rules = compile(&[rule(&["*"], &[], &["session/${client_id}"], &[])]);
        let pump = device("pump-1");
        assert!(rules.allow_publish(&pump, "pump-1", "session/pump-1"));
        assert!(!rules.allow_publish(&pump, "pump-1", "session/pump-2"));
    }

    #[test]
    fn no_rules_grant_nothing() {
        let rules = TopicRules::default();
        assert!(!rules.allow_publish(&device("pump-1"), "pump-1", "dt/pump-1/x"));
        assert!(!rules.allow_subscribe(&operator("ops"), "cli", "#"));
    }
}
