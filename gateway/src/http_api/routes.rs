//! AWS IoT's REST paths for the jobs operations, as botocore's `iot` model (2015-05-28) writes them, and
//! how a request becomes the control API's JSON: the path's labels and the query's parameters become
//! members of the body, typed as the model types them (`force=true` a boolean, `maxResults=5` a number).
//! Pure: no I/O.

use percent_encoding::percent_decode_str;
use serde_json::{Map, Number, Value};

use crate::control::op;

/// How a query parameter is typed in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Boolean,
    Integer,
}

use Kind::{Boolean, Integer, Text};

/// One operation's REST binding: method, path pattern (`{label}` segments), query parameters.
struct Binding {
    operation: &'static str,
    method: &'static str,
    path: &'static str,
    query: &'static [(&'static str, Kind)],
}

/// The bindings, from botocore's model. Labels typed as numbers there are marked in [`NUMERIC_LABELS`].
const BINDINGS: &[Binding] = &[
    Binding {
        operation: op::LIST_JOBS,
        method: "GET",
        path: "/jobs",
        query: &[
            ("status", Text),
            ("targetSelection", Text),
            ("maxResults", Integer),
            ("nextToken", Text),
            ("thingGroupName", Text),
            ("thingGroupId", Text),
            ("namespaceId", Text),
        ],
    },
    Binding {
        operation: op::CREATE_JOB,
        method: "PUT",
        path: "/jobs/{jobId}",
        query: &[],
    },
    Binding {
        operation: op::DESCRIBE_JOB,
        method: "GET",
        path: "/jobs/{jobId}",
        query: &[("beforeSubstitution", Boolean)],
    },
    Binding {
        operation: op::UPDATE_JOB,
        method: "PATCH",
        path: "/jobs/{jobId}",
        query: &[("namespaceId", Text)],
    },
    Binding {
        operation: op::DELETE_JOB,
        method: "DELETE",
        path: "/jobs/{jobId}",
        query: &[("force", Boolean), ("namespaceId", Text)],
    },
    Binding {
        operation: op::CANCEL_JOB,
        method: "PUT",
        path: "/jobs/{jobId}/cancel",
        query: &[("force", Boolean)],
    },
    Binding {
        operation: op::GET_JOB_DOCUMENT,
        method: "GET",
        path: "/jobs/{jobId}/job-document",
        query: &[("beforeSubstitution", Boolean)],
    },
    Binding {
        operation: op::LIST_JOB_EXECUTIONS_FOR_JOB,
        method: "GET",
        path: "/jobs/{jobId}/things",
        query: &[
            ("status", Text),
            ("maxResults", Integer),
            ("nextToken", Text),
        ],
    },
    Binding {
        operation: op::LIST_JOB_EXECUTIONS_FOR_THING,
        method: "GET",
        path: "/things/{thingName}/jobs",
        query: &[
            ("status", Text),
            ("namespaceId", Text),
            ("maxResults", Integer),
            ("nextToken", Text),
            ("jobId", Text),
        ],
    },
    Binding {
        operation: op::DESCRIBE_JOB_EXECUTION,
        method: "GET",
        path: "/things/{thingName}/jobs/{jobId}",
        query: &[("executionNumber", Integer)],
    },
    Binding {
        operation: op::CANCEL_JOB_EXECUTION,
        method: "PUT",
        path: "/things/{thingName}/jobs/{jobId}/cancel",
        query: &[("force", Boolean)],
    },
    Binding {
        operation: op::DELETE_JOB_EXECUTION,
        method: "DELETE",
        path: "/things/{thingName}/jobs/{jobId}/executionNumber/{executionNumber}",
        query: &[("force", Boolean), ("namespaceId", Text)],
    },
];

/// Path labels the model types as numbers.
const NUMERIC_LABELS: &[&str] = &["executionNumber"];

/// Why a request has no operation, or its parameters are not what the model says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No operation at this path (or not with this method).
    #[error("no operation at {method} {path}")]
    Unknown { method: String, path: String },
    /// A parameter or the body is malformed: InvalidRequestException.
    #[error("{0}")]
    Invalid(String),
}

/// A request as the control API takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Routed {
    pub operation: &'static str,
    /// The control API's request body: the REST body's members, the path's labels, the query's
    /// parameters.
    pub body: Map<String, Value>,
}

/// The operation `method path?query` calls, with `body` (JSON, or empty) and the labels and parameters
/// merged into one request.
pub fn route(
    method: &str,
    path: &str,
    query: Option<&str>,
    body: &[u8],
) -> Result<Routed, RouteError> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    for binding in BINDINGS.iter().filter(|b| b.method == method) {
        let Some(labels) = match_path(binding.path, &segments)? else {
            continue;
        };
        let mut request = body_members(body)?;
        for (name, value) in labels {
            request.insert(name.to_owned(), label_value(name, &value)?);
        }
        for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            if let Some((name, kind)) = binding.query.iter().find(|(n, _)| *n == name) {
                request.insert((*name).to_owned(), typed(name, &value, *kind)?);
            }
        }
        return Ok(Routed {
            operation: binding.operation,
            body: request,
        });
    }
    Err(RouteError::Unknown {
        method: method.to_owned(),
        path: path.to_owned(),
    })
}

/// The labels of `pattern` in `segments` (percent-decoded), if the path has its shape.
fn match_path<'p>(
    pattern: &'p str,
    segments: &[&str],
) -> Result<Option<Vec<(&'p str, String)>>, RouteError> {
    let wanted: Vec<&str> = pattern.split('/').collect();
    if wanted.len() != segments.len() {
        return Ok(None);
    }
    let mut labels = Vec::new();
    for (want, got) in wanted.iter().zip(segments) {
        match want.strip_prefix('{').and_then(|w| w.strip_suffix('}')) {
            Some(label) => {
                let value = percent_decode_str(got).decode_utf8().map_err(|_| {
                    RouteError::Invalid(format!("{label}: not UTF-8 once percent-decoded"))
                })?;
                if value.is_empty() {
                    return Ok(None);
                }
                labels.push((label, value.into_owned()));
            }
            None if want == got => {}
            None => return Ok(None),
        }
    }
    Ok(Some(labels))
}

/// The REST body's members: a JSON object, or nothing.
fn body_members(body: &[u8]) -> Result<Map<String, Value>, RouteError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(members)) => Ok(members),
        Ok(_) => Err(RouteError::Invalid(
            "the request body must be a JSON object".into(),
        )),
        Err(e) => Err(RouteError::Invalid(format!(
            "the request body is not valid JSON: {e}"
        ))),
    }
}

fn label_value(name: &str, value: &str) -> Result<Value, RouteError> {
    let kind = if NUMERIC_LABELS.contains(&name) {
        Integer
    } else {
        Text
    };
    typed(name, value, kind)
}

/// A parameter's text as its model type.
fn typed(name: &str, value: &str, kind: Kind) -> Result<Value, RouteError> {
    match kind {
        Text => Ok(Value::String(value.to_owned())),
        Boolean => match value {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(RouteError::Invalid(format!(
                "{name}: `{value}` is not a boolean (true or false)"
            ))),
        },
        Integer => value
            .parse::<i64>()
            .map(|n| Value::Number(Number::from(n)))
            .map_err(|_| RouteError::Invalid(format!("{name}: `{value}` is not an integer"))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn routed(method: &str, path: &str, query: Option<&str>, body: &str) -> (&'static str, Value) {
        let routed = route(method, path, query, body.as_bytes()).unwrap();
        (routed.operation, Value::Object(routed.body))
    }

    #[test]
    fn delete_job_takes_force_and_the_namespace_from_the_query() {
        assert_eq!(
            routed(
                "DELETE",
                "/jobs/fw-42",
                Some("force=true&namespaceId=acme"),
                ""
            ),
            (
                op::DELETE_JOB,
                json!({"jobId": "fw-42", "force": true, "namespaceId": "acme"})
            )
        );
        assert_eq!(
            routed("DELETE", "/jobs/fw-42", Some("force=false"), ""),
            (op::DELETE_JOB, json!({"jobId": "fw-42", "force": false}))
        );
    }

    #[test]
    fn the_method_picks_the_operation_of_a_path() {
        let body = r#"{"targets":["arn:aws:iot:eu-west-1:1:thing/t1"],"document":"{}"}"#;
        let (operation, request) = routed("PUT", "/jobs/j1", None, body);
        assert_eq!(operation, op::CREATE_JOB);
        assert_eq!(request["jobId"], "j1");
        assert_eq!(request["document"], "{}");
        assert_eq!(routed("GET", "/jobs/j1", None, "").0, op::DESCRIBE_JOB);
        assert_eq!(routed("PATCH", "/jobs/j1", None, "{}").0, op::UPDATE_JOB);
        assert_eq!(routed("GET", "/jobs", None, "").0, op::LIST_JOBS);
        assert_eq!(
            routed("GET", "/jobs/j1/job-document", None, "").0,
            op::GET_JOB_DOCUMENT
        );
        assert_eq!(
            routed("PUT", "/jobs/j1/cancel", Some("force=true"), "{}"),
            (op::CANCEL_JOB, json!({"jobId": "j1", "force": true}))
        );
    }

    #[test]
    fn execution_paths_name_the_thing_and_number_the_execution() {
        assert_eq!(
            routed(
                "DELETE",
                "/things/t%3A1/jobs/j1/executionNumber/3",
                Some("force=true"),
                ""
            ),
            (
                op::DELETE_JOB_EXECUTION,
                json!({"thingName": "t:1", "jobId": "j1", "executionNumber": 3, "force": true})
            )
        );
        assert_eq!(
            routed("GET", "/things/t1/jobs/j1", Some("executionNumber=2"), ""),
            (
                op::DESCRIBE_JOB_EXECUTION,
                json!({"thingName": "t1", "jobId": "j1", "executionNumber": 2})
            )
        );
        assert_eq!(
            routed(
                "GET",
                "/things/t1/jobs",
                Some("maxResults=5&nextToken=abc%3D&status=QUEUED"),
                ""
            ),
            (
                op::LIST_JOB_EXECUTIONS_FOR_THING,
                json!({"thingName": "t1", "maxResults": 5, "nextToken": "abc=", "status": "QUEUED"})
            )
        );
        assert_eq!(
            routed("GET", "/jobs/j1/things", Some("maxResults=1"), "").0,
            op::LIST_JOB_EXECUTIONS_FOR_JOB
        );
        assert_eq!(
            routed(
                "PUT",
                "/things/t1/jobs/j1/cancel",
                None,
                r#"{"expectedVersion":2}"#
            ),
            (
                op::CANCEL_JOB_EXECUTION,
                json!({"thingName": "t1", "jobId": "j1", "expectedVersion": 2})
            )
        );
    }

    #[test]
    fn bad_parameters_and_bodies_name_what_is_wrong_and_unknown_paths_are_unknown() {
        let invalid =
            |method, path, query, body: &str| match route(method, path, query, body.as_bytes()) {
                Err(RouteError::Invalid(message)) => message,
                other => panic!("{other:?}"),
            };
        assert!(invalid("DELETE", "/jobs/j1", Some("force=yes"), "").starts_with("force:"));
        assert!(invalid("GET", "/jobs", Some("maxResults=many"), "").starts_with("maxResults:"));
        assert!(invalid("PUT", "/jobs/j1", None, "[1]").contains("JSON object"));
        assert!(invalid("PUT", "/jobs/j1", None, "{").contains("not valid JSON"));
        for (method, path) in [
            ("GET", "/thingz"),
            ("POST", "/jobs/j1"),
            ("GET", "/jobs//things"),
        ] {
            assert!(
                matches!(
                    route(method, path, None, b""),
                    Err(RouteError::Unknown { .. })
                ),
                "{method} {path}"
            );
        }
        // Parameters the operation does not have are not passed on.
        assert_eq!(
            routed("GET", "/jobs/j1", Some("force=true&x=1"), ""),
            (op::DESCRIBE_JOB, json!({"jobId": "j1"}))
        );
    }
}
