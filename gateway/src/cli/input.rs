//! The request body: `--cli-input-json` merged with the flags, validated the way botocore validates.
//!
//! The order matters and follows the AWS CLI:
//! 1. `--cli-input-json` (inline, or `file://PATH`) is parsed and checked: every key must be a parameter
//!    of the operation, every value of the parameter's type ([`parse_cli_input_json`]);
//! 2. the flags given on the command line override its values ([`merge`]);
//! 3. only then are required parameters checked ([`check_required`]), so a required `jobId` may come
//!    from either place.
//!
//! Every failure here is a usage error (exit 252), worded as the AWS CLI words it.

use serde_json::{Map, Value};

use super::operations::{Operation, Shape};
use super::Failure;

/// The JSON object of a request: boto3 parameter names to values.
pub type Request = Map<String, Value>;

/// Reads a parameter value that may be `file://PATH` (the file's contents) or the value itself.
pub fn load_param_value(flag: &str, raw: &str) -> Result<String, Failure> {
    let Some(path) = raw.strip_prefix("file://") else {
        return Ok(raw.to_owned());
    };
    std::fs::read_to_string(path).map_err(|e| {
        Failure::Usage(format!(
            "Error parsing parameter '--{flag}': Unable to load paramfile {raw}: {e}"
        ))
    })
}

/// Parses and validates the value of `--cli-input-json`.
pub fn parse_cli_input_json(op: &Operation, raw: &str) -> Result<Request, Failure> {
    let text = load_param_value("cli-input-json", raw)?;
    let invalid = |why: String| {
        Failure::Usage(format!(
            "Error parsing parameter '--cli-input-json': Invalid JSON received: {why}"
        ))
    };
    let value: Value = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    let Value::Object(request) = value else {
        return Err(invalid("expected a JSON object".to_owned()));
    };
    validate(op, &request)?;
    Ok(request)
}

/// Checks that every key is a parameter of `op` and every value has the parameter's type; reports every
/// problem at once, as botocore does.
pub fn validate(op: &Operation, request: &Request) -> Result<(), Failure> {
    let mut problems = Vec::new();
    for (key, value) in request {
        match op.param(key) {
            None => {
                let names: Vec<&str> = op.params.iter().map(|p| p.name).collect();
                problems.push(format!(
                    "Unknown parameter in input: \"{key}\", must be one of: {}",
                    names.join(", ")
                ));
            }
            Some(param) => check_type(param.shape, value, key, &mut problems),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Failure::Usage(format!(
            "Parameter validation failed:\n{}",
            problems.join("\n")
        )))
    }
}

fn check_type(shape: Shape, value: &Value, path: &str, problems: &mut Vec<String>) {
    let ok = match (shape, value) {
        (Shape::String, Value::String(_)) | (Shape::Boolean, Value::Bool(_)) => true,
        (Shape::Integer | Shape::Timestamp, Value::Number(n)) => n.is_i64() || n.is_u64(),
        (Shape::List(item), Value::Array(items)) => {
            for (i, value) in items.iter().enumerate() {
                check_type(*item, value, &format!("{path}[{i}]"), problems);
            }
            true
        }
        (Shape::Map(item), Value::Object(entries)) => {
            for (key, value) in entries {
                check_type(*item, value, &format!("{path}.{key}"), problems);
            }
            true
        }
        (Shape::Struct(_), Value::Object(_)) => true,
        _ => false,
    };
    if !ok {
        problems.push(format!(
            "Invalid type for parameter {path}, value: {value}, type: {}, valid types: {}",
            json_type_name(value),
            shape.type_name()
        ));
    }
}

fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "structure",
    }
}

/// `--cli-input-json` values, overridden by the values given as flags.
pub fn merge(from_json: Request, from_flags: Request) -> Request {
    let mut request = from_json;
    request.extend(from_flags);
    request
}

/// Fails with the AWS CLI's usage message when a required parameter is in neither place.
pub fn check_required(op: &Operation, request: &Request) -> Result<(), Failure> {
    let missing: Vec<String> = op
        .params
        .iter()
        .filter(|p| p.required && !request.contains_key(p.name))
        .map(|p| format!("--{}", p.flag()))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Failure::Usage(format!(
            "sprig: error: the following arguments are required: {}",
            missing.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn delete_job() -> &'static Operation {
        Operation::find("delete-job").unwrap()
    }

    fn usage_text(result: Result<impl std::fmt::Debug, Failure>) -> String {
        match result {
            Err(Failure::Usage(text)) => text,
            other => panic!("expected a usage error, got {other:?}"),
        }
    }

    fn object(value: Value) -> Request {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn flags_override_cli_input_json() {
        let from_json = parse_cli_input_json(
            delete_job(),
            r#"{"jobId":"a","force":false,"namespaceId":"ns"}"#,
        )
        .unwrap();
        let merged = merge(from_json, object(json!({"force": true})));
        assert_eq!(
            Value::Object(merged),
            json!({"jobId": "a", "force": true, "namespaceId": "ns"})
        );
    }

    #[test]
    fn cli_input_json_may_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.json");
        std::fs::write(&path, r#"{"jobId": "from-file"}"#).unwrap();
        let request =
            parse_cli_input_json(delete_job(), &format!("file://{}", path.display())).unwrap();
        assert_eq!(request["jobId"], json!("from-file"));
        let missing = format!("file://{}", dir.path().join("nope.json").display());
        let text = usage_text(parse_cli_input_json(delete_job(), &missing));
        assert!(text.contains("Unable to load paramfile"), "{text}");
    }

    #[test]
    fn unknown_keys_are_named_with_the_valid_ones() {
        let text = usage_text(parse_cli_input_json(delete_job(), r#"{"x": 1}"#));
        assert_eq!(
            text,
            "Parameter validation failed:\nUnknown parameter in input: \"x\", must be one of: jobId, force, namespaceId"
        );
    }

    #[test]
    fn wrong_types_and_bad_json_are_usage_errors() {
        let text = usage_text(parse_cli_input_json(delete_job(), r#"{"force": "yes"}"#));
        assert!(
            text.contains("Invalid type for parameter force, value: \"yes\", type: string, valid types: boolean"),
            "{text}"
        );
        let create = Operation::find("create-job").unwrap();
        let text = usage_text(parse_cli_input_json(create, r#"{"targets": ["a", 2]}"#));
        assert!(text.contains("parameter targets[1]"), "{text}");
        let text = usage_text(parse_cli_input_json(delete_job(), "{not json"));
        assert!(text.contains("Invalid JSON received"), "{text}");
        let text = usage_text(parse_cli_input_json(delete_job(), "[1]"));
        assert!(text.contains("expected a JSON object"), "{text}");
    }

    #[test]
    fn required_parameters_are_checked_after_the_merge() {
        let text = usage_text(check_required(delete_job(), &Request::new()));
        assert_eq!(
            text,
            "sprig: error: the following arguments are required: --job-id"
        );
        let create = Operation::find("create-job").unwrap();
        let text = usage_text(check_required(create, &object(json!({"jobId": "j"}))));
        assert!(text.ends_with("required: --targets"), "{text}");
        assert!(check_required(delete_job(), &object(json!({"jobId": "j"}))).is_ok());
    }
}
