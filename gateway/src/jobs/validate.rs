//! Input rules of the control plane, each failing with an `InvalidRequestException` that names the field
//! and the rule.

use super::JobsError;

fn invalid(field: &str, rule: &str, got: &str) -> JobsError {
    let shown: String = got.chars().take(80).collect();
    let more = if got.chars().count() > 80 { "…" } else { "" };
    JobsError::InvalidRequest(format!(
        "{field}: {rule}; got \"{shown}{more}\" ({} characters)",
        got.chars().count()
    ))
}

fn id_chars(s: &str, extra: &[u8]) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || extra.contains(&b))
}

/// `jobId`: 1–64 characters of `[a-zA-Z0-9_-]`.
pub fn job_id(field: &str, s: &str) -> Result<(), JobsError> {
    if (1..=64).contains(&s.len()) && id_chars(s, b"") {
        Ok(())
    } else {
        Err(invalid(
            field,
            "must be 1-64 characters of [a-zA-Z0-9_-]",
            s,
        ))
    }
}

/// `namespaceId`: 1–64 characters of `[a-zA-Z0-9_-]` (AWS gives the pattern; sprig bounds the length).
pub fn namespace_id(s: &str) -> Result<(), JobsError> {
    if (1..=64).contains(&s.len()) && id_chars(s, b"") {
        Ok(())
    } else {
        Err(invalid(
            "namespaceId",
            "must be 1-64 characters of [a-zA-Z0-9_-]",
            s,
        ))
    }
}

/// True when `s` is a valid thing name: 1–128 characters of `[a-zA-Z0-9:_-]` (AWS IoT's pattern).
pub fn is_thing_name(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-:".contains(&b))
}

/// `thingName`: 1–128 characters of `[a-zA-Z0-9:_-]`.
pub fn thing_name(field: &str, s: &str) -> Result<(), JobsError> {
    if is_thing_name(s) {
        Ok(())
    } else {
        Err(invalid(
            field,
            "must be 1-128 characters of [a-zA-Z0-9:_-]",
            s,
        ))
    }
}

/// Free text with a maximum length (description, comment).
pub fn text(field: &str, s: &str, max: usize) -> Result<(), JobsError> {
    if s.chars().count() <= max {
        Ok(())
    } else {
        Err(invalid(
            field,
            &format!("must be at most {max} characters"),
            s,
        ))
    }
}

/// `reasonCode`: up to 128 characters of `[A-Z0-9_]`.
pub fn reason_code(s: &str) -> Result<(), JobsError> {
    if s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    {
        Ok(())
    } else {
        Err(invalid(
            "reasonCode",
            "must be at most 128 characters of [A-Z0-9_]",
            s,
        ))
    }
}

/// `statusDetails`: the rules AWS IoT Jobs applies (the sdk's, which devices and plugins meet too).
pub fn status_details(
    details: &std::collections::BTreeMap<String, String>,
) -> Result<(), JobsError> {
    sprig_sdk::validate_status_details(details)
        .map_err(|why| JobsError::InvalidRequest(format!("statusDetails: {why}")))
}

/// `maxResults`: 1–250, default 50.
pub fn max_results(n: Option<u32>) -> Result<usize, JobsError> {
    match n {
        None => Ok(50),
        Some(n @ 1..=250) => Ok(n as usize),
        Some(n) => Err(JobsError::InvalidRequest(format!(
            "maxResults: must be between 1 and 250; got {n}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_follow_the_aws_pattern() {
        assert!(job_id("jobId", "a").is_ok());
        assert!(job_id("jobId", &"a".repeat(64)).is_ok());
        for bad in ["", "a/b", "a+b", "a#b", "a b", "é"] {
            let err = job_id("jobId", bad).unwrap_err().to_string();
            assert!(
                err.starts_with("jobId: must be 1-64 characters of [a-zA-Z0-9_-]"),
                "{err}"
            );
        }
        let err = job_id("jobId", &"a".repeat(65)).unwrap_err().to_string();
        assert!(err.contains("(65 characters)"), "{err}");
    }

    #[test]
    fn other_fields_name_themselves() {
        assert!(namespace_id("aws-gg-deployment").is_ok());
        assert!(namespace_id("a/b")
            .unwrap_err()
            .to_string()
            .starts_with("namespaceId:"));
        assert!(thing_name("targets[0]", "arn:thing").is_ok());
        assert!(reason_code("lower").is_err());
        assert_eq!(max_results(None).unwrap(), 50);
        assert!(max_results(Some(0)).is_err() && max_results(Some(251)).is_err());
    }
}
