//! JSON as the AWS CLI prints it: 4-space indentation, fields in the order of the operation's shape.
//!
//! `serde_json::Value` keeps object keys sorted, so printing a response as-is would list `jobArn` after
//! `description`. Instead, [`Shaped`] walks a value together with its [`Shape`] and emits known fields in
//! the shape's order, then any field the shape does not know (a newer gateway may add some). [`Skeleton`]
//! walks a shape alone and emits an empty value of each type, for `--generate-cli-skeleton`.

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::Value;

use super::operations::{Operation, Shape};

/// Serializes `value` as 4-space-indented JSON (the AWS CLI's layout).
pub fn pretty<T: Serialize + ?Sized>(value: &T) -> String {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    value
        .serialize(&mut serializer)
        .expect("serializing to memory cannot fail");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// `--generate-cli-skeleton input`: every request parameter with an empty value of its type.
pub fn input_skeleton(op: &Operation) -> String {
    pretty(&InputSkeleton(op))
}

/// `--generate-cli-skeleton output`: the response shape (`{}` when there is no response).
pub fn output_skeleton(op: &Operation) -> String {
    match op.output {
        Some(shape) => pretty(&Skeleton(shape)),
        None => "{}".to_owned(),
    }
}

/// A response, printed in the field order of the operation's output shape.
pub fn response(op: &Operation, value: &Value) -> String {
    pretty(&Shaped {
        value,
        shape: op.output,
    })
}

struct InputSkeleton<'a>(&'a Operation);

impl Serialize for InputSkeleton<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.params.len()))?;
        for param in self.0.params {
            map.serialize_entry(param.name, &Skeleton(param.shape))?;
        }
        map.end()
    }
}

/// The empty value of a shape: `""`, `true`, `0`, `[…]` with one element, `{"KeyName": …}` for maps.
struct Skeleton(Shape);

impl Serialize for Skeleton {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Shape::String => serializer.serialize_str(""),
            Shape::Boolean => serializer.serialize_bool(true),
            Shape::Integer | Shape::Timestamp => serializer.serialize_i64(0),
            Shape::List(item) => {
                let mut seq = serializer.serialize_seq(Some(1))?;
                seq.serialize_element(&Skeleton(*item))?;
                seq.end()
            }
            Shape::Map(value) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("KeyName", &Skeleton(*value))?;
                map.end()
            }
            Shape::Struct(fields) => {
                let mut map = serializer.serialize_map(Some(fields.len()))?;
                for (name, shape) in fields {
                    map.serialize_entry(name, &Skeleton(*shape))?;
                }
                map.end()
            }
        }
    }
}

/// A value with the shape that orders its fields (`None`: print as is).
struct Shaped<'a> {
    value: &'a Value,
    shape: Option<Shape>,
}

impl Serialize for Shaped<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match (self.value, self.shape) {
            (Value::Array(items), Some(Shape::List(item))) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for value in items {
                    seq.serialize_element(&Shaped {
                        value,
                        shape: Some(*item),
                    })?;
                }
                seq.end()
            }
            (Value::Object(object), Some(Shape::Map(item))) => {
                let mut map = serializer.serialize_map(Some(object.len()))?;
                for (key, value) in object {
                    map.serialize_entry(
                        key,
                        &Shaped {
                            value,
                            shape: Some(*item),
                        },
                    )?;
                }
                map.end()
            }
            (Value::Object(object), Some(Shape::Struct(fields))) => {
                let mut map = serializer.serialize_map(Some(object.len()))?;
                for (name, shape) in fields {
                    if let Some(value) = object.get(*name) {
                        let shape = Some(*shape);
                        map.serialize_entry(name, &Shaped { value, shape })?;
                    }
                }
                for (key, value) in object {
                    if !fields.iter().any(|(name, _)| name == key) {
                        map.serialize_entry(key, value)?;
                    }
                }
                map.end()
            }
            (value, _) => value.serialize(serializer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn op(command: &str) -> &'static Operation {
        Operation::find(command).unwrap()
    }

    #[test]
    fn delete_job_skeletons_match_the_aws_cli() {
        assert_eq!(
            input_skeleton(op("delete-job")),
            "{\n    \"jobId\": \"\",\n    \"force\": true,\n    \"namespaceId\": \"\"\n}"
        );
        assert_eq!(output_skeleton(op("delete-job")), "{}");
    }

    #[test]
    fn create_job_skeletons_list_every_field_in_order() {
        let input = input_skeleton(op("create-job"));
        assert_eq!(
            input,
            r#"{
    "jobId": "",
    "targets": [
        ""
    ],
    "document": "",
    "description": "",
    "targetSelection": "",
    "namespaceId": ""
}"#
        );
        assert_eq!(
            output_skeleton(op("create-job")),
            "{\n    \"jobArn\": \"\",\n    \"jobId\": \"\",\n    \"description\": \"\"\n}"
        );
    }

    #[test]
    fn integers_and_maps_have_their_empty_values() {
        let input: Value = serde_json::from_str(&input_skeleton(op("list-jobs"))).unwrap();
        assert_eq!(input["maxResults"], json!(0));
        let output: Value =
            serde_json::from_str(&output_skeleton(op("describe-job-execution"))).unwrap();
        assert_eq!(
            output["execution"]["statusDetails"],
            json!({"detailsMap": {"KeyName": ""}})
        );
    }

    #[test]
    fn responses_follow_the_shape_order_and_keep_unknown_fields() {
        let value = json!({"description": "d", "jobId": "j1", "jobArn": "arn", "extra": 1});
        assert_eq!(
            response(op("create-job"), &value),
            "{\n    \"jobArn\": \"arn\",\n    \"jobId\": \"j1\",\n    \"description\": \"d\",\n    \"extra\": 1\n}"
        );
        let listed = json!({"jobs": [{"status": "IN_PROGRESS", "jobId": "a"}]});
        let text = response(op("list-jobs"), &listed);
        assert!(
            text.find("\"jobId\"").unwrap() < text.find("\"status\"").unwrap(),
            "{text}"
        );
    }
}
