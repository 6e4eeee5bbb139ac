//! How the control API's answers look over HTTP, as botocore reads AWS IoT's: the response shape as the
//! body (with status 200), or an exception as the status code of botocore's `iot` model with the
//! `x-amzn-ErrorType` header and a JSON body `{"message"}` (botocore takes the code from the header).
//! Pure.

use bytes::Bytes;
use serde_json::{json, Value};

/// An HTTP answer: status, error type (for `x-amzn-ErrorType`), JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpReply {
    pub status: u16,
    pub error_type: Option<String>,
    pub body: Bytes,
}

impl HttpReply {
    /// An exception: `code` is AWS's name for it; its status follows the model.
    pub fn error(code: &str, message: &str) -> HttpReply {
        HttpReply {
            status: status_of(code),
            error_type: Some(code.to_owned()),
            body: Bytes::from(json!({ "message": message }).to_string()),
        }
    }

    /// The control API's reply (`accepted`: the response; else `{code, message}`) as botocore expects
    /// it. The control API's `clientToken` echo is not part of the REST responses.
    pub fn from_control(accepted: bool, body: &[u8]) -> HttpReply {
        // A response without the echo (a REST request has none unless its JSON body carries a
        // clientToken) is passed on as serde_json wrote it: parsing and writing it again gives the same
        // bytes, at a cost the HTTP API benchmark sees. serde_json writes a `clientToken` key as these
        // bytes (a string that merely contains the word has its quotes escaped).
        if accepted && !contains(body, br#""clientToken""#) {
            return HttpReply {
                status: 200,
                error_type: None,
                body: Bytes::copy_from_slice(body),
            };
        }
        let mut value: Value = serde_json::from_slice(body).unwrap_or_else(|_| json!({}));
        if let Value::Object(members) = &mut value {
            members.remove("clientToken");
        }
        if accepted {
            return HttpReply {
                status: 200,
                error_type: None,
                body: Bytes::from(value.to_string()),
            };
        }
        let code = value["code"].as_str().unwrap_or("InternalFailureException");
        let message = value["message"].as_str().unwrap_or("");
        HttpReply::error(code, message)
    }
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// The HTTP status of each exception, as botocore's `iot` model (2015-05-28) gives it (its
/// `error.httpStatusCode`); SigV4's refusals are 403 as AWS's front end answers them.
pub fn status_of(code: &str) -> u16 {
    match code {
        "InvalidRequestException" | "ThrottlingException" => 400,
        "UnauthorizedException" => 401,
        "MissingAuthenticationTokenException"
        | "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "SignatureDoesNotMatch"
        | "AccessDeniedException" => 403,
        "ResourceNotFoundException" | "UnknownOperationException" => 404,
        "InvalidStateTransitionException"
        | "VersionConflictException"
        | "ConflictException"
        | "ConflictingResourceUpdateException"
        | "ResourceAlreadyExistsException" => 409,
        "LimitExceededException" => 410,
        "InternalFailureException" | "InternalException" => 500,
        "ServiceUnavailableException" => 503,
        _ => 400,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_botocores_model() {
        for (code, status) in [
            ("InvalidRequestException", 400),
            ("ResourceNotFoundException", 404),
            ("InvalidStateTransitionException", 409),
            ("LimitExceededException", 410),
            ("ThrottlingException", 400),
            ("UnauthorizedException", 401),
            ("ServiceUnavailableException", 503),
            ("VersionConflictException", 409),
            ("InvalidSignatureException", 403),
        ] {
            assert_eq!(status_of(code), status, "{code}");
        }
    }

    #[test]
    fn control_replies_become_responses_and_exceptions() {
        let ok = HttpReply::from_control(true, br#"{"jobId":"j1","clientToken":"t"}"#);
        assert_eq!((ok.status, ok.error_type.as_deref()), (200, None));
        assert_eq!(&ok.body[..], br#"{"jobId":"j1"}"#);
        // Without the echo, the response is the control API's, byte for byte: the same bytes a parse and
        // a rewrite give.
        let response =
            br#"{"job":{"document":"{\"clientToken\":1}","jobId":"j1","status":"IN_PROGRESS"}}"#;
        let ok = HttpReply::from_control(true, response);
        assert_eq!((ok.status, ok.error_type.as_deref()), (200, None));
        assert_eq!(&ok.body[..], &response[..]);
        let rewritten = serde_json::from_slice::<Value>(response)
            .unwrap()
            .to_string();
        assert_eq!(&ok.body[..], rewritten.as_bytes());

        let refused = HttpReply::from_control(
            false,
            br#"{"code":"InvalidStateTransitionException","message":"not terminal","clientToken":"t"}"#,
        );
        assert_eq!(refused.status, 409);
        assert_eq!(
            refused.error_type.as_deref(),
            Some("InvalidStateTransitionException")
        );
        assert_eq!(&refused.body[..], br#"{"message":"not terminal"}"#);
    }
}
