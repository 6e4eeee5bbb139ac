//! AWS Signature Version 4: which operator signed an HTTP API request, decided from the request alone.
//!
//! This module owns the check the HTTP API runs before anything else: it reads the `Authorization` header
//! (or a presigned URL's `X-Amz-*` query parameters), checks the credential scope and the signing time
//! against `now`, finds the access key among the operators' ([`AccessKeys`]: `[[auth.operators]]` and
//! the local operator's file), recomputes the signature of the request as received with the key's secret,
//! and compares the two in constant time. The signature is computed by `aws-sigv4`, AWS's own signer: this
//! module only hands it the parts the client signed (the headers its `SignedHeaders` lists, the raw path
//! and query, the payload's hash), so the canonical request is AWS's, not a copy of it. It does no I/O and
//! reads no clock: the HTTP layer passes the request's parts, the body (or its SHA-256) and the time, and
//! turns a [`SigV4Error`] into the 403 answer whose code and message AWS's front end gives, which botocore
//! reads.
//!
//! What clients sign, and so what is accepted: the scope's service is `iot` (botocore) or `execute-api`
//! (other SDKs' models), any region; the payload is the body's SHA-256 (botocore sends no
//! `x-amz-content-sha256` for `iot`); `host` and `x-amz-date` are among the signed headers; the time is
//! within [`MAX_SKEW`] of `now`. A presigned URL (botocore's `generate_presigned_url`) is accepted until
//! its `X-Amz-Expires`, for a request without a body (its payload is `UNSIGNED-PAYLOAD`) or with the body
//! it signed.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
};
use aws_sigv4::sign::v4;
use http::HeaderMap;
use subtle::ConstantTimeEq;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

use super::{grants_of, Grants, LocalOperator, Operator, SetupError, LOCAL_OPERATOR_USERNAME};
use crate::config::AuthConfig;

/// How far a request's signing time may be from `now`, either way (AWS's limit).
pub const MAX_SKEW: Duration = Duration::from_secs(5 * 60);

/// The services a credential scope may name: botocore signs `iot` requests as `iot`, other SDKs' models
/// name the IoT control plane's signing name `execute-api`.
pub const SERVICES: [&str; 2] = ["iot", "execute-api"];

/// The only algorithm verified.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// The longest `X-Amz-Expires` of a presigned URL (AWS's: seven days).
pub const MAX_PRESIGNED_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

/// SHA-256 of nothing: the payload hash of a request without a body.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// The query parameters of a presigned URL that carry its signature (they are not part of what is signed,
/// or are signed in a place of their own).
const PRESIGN_PARAMS: [&str; 6] = [
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
];

/// `X-Amz-Date`'s format: ISO 8601 basic, UTC.
const AMZ_DATE: &[BorrowedFormatItem<'static>] =
    format_description!("[year][month][day]T[hour][minute][second]Z");

/// A request as the HTTP layer received it: what [`verify`] reads.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    /// `GET`, `PUT`, ...
    pub method: &'a str,
    /// The path exactly as sent, still percent-encoded (`/things/pump%3A1/jobs`): the signature covers
    /// its encoding. With axum, the whole path (`OriginalUri`), not what a nested router sees.
    pub path: &'a str,
    /// The query exactly as sent, without the `?`.
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The request target's authority (HTTP/2's `:authority`), used as `host` when there is no `Host`
    /// header.
    pub authority: Option<&'a str>,
}

impl<'a> RequestParts<'a> {
    /// The parts of a request as hyper and axum hand it over.
    pub fn from_http(parts: &'a http::request::Parts) -> RequestParts<'a> {
        RequestParts {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers: &parts.headers,
            authority: parts.uri.authority().map(|a| a.as_str()),
        }
    }
}

/// The request's body as the signature covers it.
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    /// The whole body.
    Bytes(&'a [u8]),
    /// The body's SHA-256, lowercase hex, for a layer that hashed it while reading it.
    Sha256Hex(&'a str),
}

/// Finds the operator an access key id belongs to, and the key's secret.
pub trait KeyLookup {
    fn find(&self, access_key_id: &str) -> Option<(&Arc<Operator>, &str)>;
}

/// Every access key that may sign HTTP API requests: the `[[auth.operators]]` that have one, and the
/// local operator's (all namespaces, as on MQTT).
#[derive(Default)]
pub struct AccessKeys {
    keys: HashMap<String, (Arc<Operator>, String)>,
}

impl AccessKeys {
    /// The keys of `config`'s operators and of `local` (its key, if its file has one yet). An operator
    /// configured with the local operator's key id is refused: the key would name two operators.
    pub fn new(config: &AuthConfig, local: &LocalOperator) -> Result<AccessKeys, SetupError> {
        let mut keys = HashMap::new();
        if let Some(key) = &local.access_key {
            let operator = Operator {
                username: LOCAL_OPERATOR_USERNAME.to_owned(),
                grants: Grants::all(),
            };
            keys.insert(
                key.access_key_id.clone(),
                (Arc::new(operator), key.secret_access_key.clone()),
            );
        }
        for (index, op) in config.operators.iter().enumerate() {
            let (Some(id), Some(secret)) = (&op.access_key_id, &op.secret_access_key) else {
                continue;
            };
            if keys.contains_key(id) {
                return Err(SetupError::AccessKeyOfLocalOperator {
                    index,
                    access_key_id: id.clone(),
                });
            }
            let operator = Operator {
                username: op.username.clone(),
                grants: grants_of(op),
            };
            keys.insert(id.clone(), (Arc::new(operator), secret.clone()));
        }
        Ok(AccessKeys { keys })
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl KeyLookup for AccessKeys {
    fn find(&self, access_key_id: &str) -> Option<(&Arc<Operator>, &str)> {
        self.keys
            .get(access_key_id)
            .map(|(operator, secret)| (operator, secret.as_str()))
    }
}

impl fmt::Debug for AccessKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<(&String, &str)> = self
            .keys
            .iter()
            .map(|(id, (op, _))| (id, op.username.as_str()))
            .collect();
        ids.sort();
        f.debug_struct("AccessKeys").field("keys", &ids).finish()
    }
}

/// Why a request was not authenticated. Each is a 403 whose `x-amzn-ErrorType` is [`SigV4Error::code`]
/// and whose JSON body's `message` is [`SigV4Error::message`] (also the `Display`), as AWS answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigV4Error {
    /// Neither an `Authorization` header nor a presigned query.
    MissingAuthenticationToken,
    /// An `Authorization` header or presigned query that is not a well-formed SigV4 one (what is wrong).
    IncompleteSignature(String),
    /// The access key id is nobody's.
    UnrecognizedClient,
    /// The signature is not the request's, signed with the key's secret.
    SignatureDoesNotMatch,
    /// The credential scope names another date than the signing time, a service other than
    /// [`SERVICES`], or a bad terminator (AWS's message).
    BadScope(String),
    /// Signed longer ago than allowed ([`MAX_SKEW`], or a presigned URL's expiry).
    Expired {
        signed: String,
        now: String,
        allowed: Duration,
    },
    /// Signed further in the future than [`MAX_SKEW`].
    NotYetCurrent { signed: String, now: String },
}

impl SigV4Error {
    /// The HTTP status: 403 for every one, as AWS answers.
    pub fn status(&self) -> u16 {
        403
    }

    /// AWS's error code, for `x-amzn-ErrorType`.
    pub fn code(&self) -> &'static str {
        match self {
            SigV4Error::MissingAuthenticationToken => "MissingAuthenticationTokenException",
            SigV4Error::IncompleteSignature(_) => "IncompleteSignatureException",
            SigV4Error::UnrecognizedClient => "UnrecognizedClientException",
            SigV4Error::SignatureDoesNotMatch
            | SigV4Error::BadScope(_)
            | SigV4Error::Expired { .. }
            | SigV4Error::NotYetCurrent { .. } => "InvalidSignatureException",
        }
    }

    /// AWS's message.
    pub fn message(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for SigV4Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SigV4Error::MissingAuthenticationToken => f.write_str("Missing Authentication Token"),
            SigV4Error::IncompleteSignature(why) | SigV4Error::BadScope(why) => f.write_str(why),
            SigV4Error::UnrecognizedClient => {
                f.write_str("The security token included in the request is invalid.")
            }
            SigV4Error::SignatureDoesNotMatch => f.write_str(
                "The request signature we calculated does not match the signature you provided. \
                 Check your AWS Secret Access Key and signing method. Consult the service \
                 documentation for details.",
            ),
            SigV4Error::Expired {
                signed,
                now,
                allowed,
            } => {
                let earliest = now_minus(now, *allowed);
                write!(
                    f,
                    "Signature expired: {signed} is now earlier than {earliest} ({now} - {})",
                    span(*allowed)
                )
            }
            SigV4Error::NotYetCurrent { signed, now } => {
                let latest = now_plus(now, MAX_SKEW);
                write!(
                    f,
                    "Signature not yet current: {signed} is still later than {latest} ({now} + {})",
                    span(MAX_SKEW)
                )
            }
        }
    }
}

impl std::error::Error for SigV4Error {}

/// `5 min.` or `30 sec.`, as AWS writes the allowed skew.
fn span(allowed: Duration) -> String {
    let secs = allowed.as_secs();
    if secs.is_multiple_of(60) {
        format!("{} min.", secs / 60)
    } else {
        format!("{secs} sec.")
    }
}

fn now_minus(now: &str, by: Duration) -> String {
    parse_amz_date(now)
        .and_then(|t| t.checked_sub(by))
        .map(amz_date)
        .unwrap_or_default()
}

fn now_plus(now: &str, by: Duration) -> String {
    parse_amz_date(now)
        .and_then(|t| t.checked_add(by))
        .map(amz_date)
        .unwrap_or_default()
}

/// `time` as `X-Amz-Date` writes it: `20260504T123045Z`.
pub fn amz_date(time: SystemTime) -> String {
    OffsetDateTime::from(time)
        .format(AMZ_DATE)
        .expect("a SystemTime formats as an X-Amz-Date")
}

/// An `X-Amz-Date` (`20260504T123045Z`) as a time; `None` unless it is exactly that shape.
pub fn parse_amz_date(text: &str) -> Option<SystemTime> {
    if text.len() != 16 || !text.is_ascii() {
        return None;
    }
    PrimitiveDateTime::parse(text, AMZ_DATE)
        .ok()
        .map(|t| t.assume_utc().into())
}

/// Decides which operator signed `request`, whose body is `payload`, at `now`: the operator whose access
/// key signed it, or why not (see [`SigV4Error`]). Checks, in order: the signature's form, its scope,
/// the signing time against `now`, the key, the signature itself.
pub fn verify(
    request: &RequestParts<'_>,
    payload: Payload<'_>,
    keys: &impl KeyLookup,
    now: SystemTime,
) -> Result<Arc<Operator>, SigV4Error> {
    let signature = Signature::read(request)?;
    signature.check_scope()?;
    signature.check_time(now)?;
    let (operator, secret) = keys
        .find(&signature.access_key_id)
        .ok_or(SigV4Error::UnrecognizedClient)?;
    let bodies = match (&signature.presigned, payload) {
        // A presigned URL's signature does not cover its body (botocore signs UNSIGNED-PAYLOAD): only
        // a request that has none may go without, so no body is ever taken unsigned.
        (Some(_), Payload::Bytes([])) => {
            vec![SignableBody::UnsignedPayload, SignableBody::Bytes(&[])]
        }
        (Some(_), Payload::Sha256Hex(hash)) if hash.eq_ignore_ascii_case(EMPTY_SHA256) => vec![
            SignableBody::UnsignedPayload,
            SignableBody::Precomputed(EMPTY_SHA256.to_owned()),
        ],
        (_, Payload::Bytes(bytes)) => vec![SignableBody::Bytes(bytes)],
        (_, Payload::Sha256Hex(hash)) => {
            vec![SignableBody::Precomputed(hash.to_ascii_lowercase())]
        }
    };
    for body in bodies {
        let expected = signature.expected(request, secret, body)?;
        if bool::from(expected.as_bytes().ct_eq(signature.signature.as_bytes())) {
            return Ok(operator.clone());
        }
    }
    tracing::debug!(
        access_key_id = signature.access_key_id,
        username = operator.username,
        method = request.method,
        path = request.path,
        signed_headers = signature.signed_headers.join(";"),
        "SigV4: the signature does not match the request"
    );
    Err(SigV4Error::SignatureDoesNotMatch)
}

/// A SigV4 signature as the request carries it (header or presigned query), not yet checked.
#[derive(Debug)]
struct Signature {
    access_key_id: String,
    /// The scope's date (`YYYYMMDD`), region, service and terminator.
    date: String,
    region: String,
    service: String,
    terminator: String,
    signed_headers: Vec<String>,
    signature: String,
    /// `X-Amz-Date`, as sent and as a time.
    amz_date: String,
    signed_at: SystemTime,
    /// For a presigned URL: its `X-Amz-Expires`, and its query without the signature's parameters.
    presigned: Option<(Duration, String)>,
}

impl Signature {
    fn read(request: &RequestParts<'_>) -> Result<Signature, SigV4Error> {
        let mut authorization = request.headers.get_all(http::header::AUTHORIZATION).iter();
        let header = authorization.next();
        if authorization.next().is_some() {
            return Err(incomplete("Only one Authorization header is allowed."));
        }
        let presigned = request
            .query
            .is_some_and(|q| query_pairs(q).any(|(k, _)| k == "X-Amz-Algorithm"));
        match (header, presigned) {
            (None, false) => Err(SigV4Error::MissingAuthenticationToken),
            (Some(_), true) => Err(incomplete(
                "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter or the \
                 Authorization header should be specified",
            )),
            (Some(value), false) => {
                let value = value
                    .to_str()
                    .map_err(|_| incomplete("The Authorization header is not printable ASCII."))?;
                Signature::from_header(value, request.headers)
            }
            (None, true) => Signature::from_query(request.query.unwrap_or_default()),
        }
    }

    /// `AWS4-HMAC-SHA256 Credential=AKID/20260504/local/iot/aws4_request, SignedHeaders=host;x-amz-date,
    /// Signature=<64 hex>`, with the time in `X-Amz-Date`.
    fn from_header(value: &str, headers: &HeaderMap) -> Result<Signature, SigV4Error> {
        let value = value.trim();
        let (algorithm, rest) = value.split_once(' ').unwrap_or((value, ""));
        if algorithm != ALGORITHM {
            return Err(incomplete(&format!(
                "Unsupported Authorization type `{algorithm}`: sprig verifies AWS Signature Version 4 \
                 ({ALGORITHM})."
            )));
        }
        let (mut credential, mut signed_headers, mut signature) = (None, None, None);
        for part in rest.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((key, value)) = part.split_once('=') else {
                return Err(incomplete(&format!(
                    "Invalid key=value pair (missing equal-sign) in Authorization header: '{part}'."
                )));
            };
            match key.trim() {
                "Credential" => credential = Some(value.trim()),
                "SignedHeaders" => signed_headers = Some(value.trim()),
                "Signature" => signature = Some(value.trim()),
                _ => {}
            }
        }
        let mut missing = Vec::new();
        for (name, value) in [
            ("Credential", credential),
            ("Signature", signature),
            ("SignedHeaders", signed_headers),
        ] {
            if value.is_none() {
                missing.push(format!("Authorization header requires '{name}' parameter."));
            }
        }
        let amz_date = headers.get("x-amz-date").and_then(|v| v.to_str().ok());
        if amz_date.is_none() {
            missing.push(if headers.contains_key(http::header::DATE) {
                "Authorization header requires existence of a 'X-Amz-Date' header: sprig does not \
                 read the signing time from 'Date'."
                    .to_owned()
            } else {
                "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
                    .to_owned()
            });
        }
        let (Some(credential), Some(signed_headers), Some(signature), Some(amz_date)) =
            (credential, signed_headers, signature, amz_date)
        else {
            return Err(incomplete(&missing.join(" ")));
        };
        Signature::new(credential, signed_headers, signature, amz_date, None, true)
    }

    /// A presigned URL's `X-Amz-Algorithm`, `X-Amz-Credential`, `X-Amz-Date`, `X-Amz-Expires`,
    /// `X-Amz-SignedHeaders` and `X-Amz-Signature`.
    fn from_query(query: &str) -> Result<Signature, SigV4Error> {
        let mut found: [Option<String>; 6] = Default::default();
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match PRESIGN_PARAMS.iter().position(|p| *p == key) {
                Some(i) => {
                    let value = percent_encoding::percent_decode_str(value)
                        .decode_utf8()
                        .map_err(|_| incomplete(&format!("{key} is not UTF-8.")))?;
                    if found[i].replace(value.into_owned()).is_some() {
                        return Err(incomplete(&format!("{key} is given twice.")));
                    }
                }
                None => rest.push(pair),
            }
        }
        let [Some(algorithm), Some(credential), Some(amz_date), Some(expires), Some(signed_headers), Some(signature)] =
            found
        else {
            return Err(incomplete(
                "AWS query-string parameters must include 'X-Amz-Algorithm', 'X-Amz-Credential', \
                 'X-Amz-Signature', 'X-Amz-Date', 'X-Amz-SignedHeaders', and 'X-Amz-Expires'. \
                 Re-examine the query-string parameters.",
            ));
        };
        if algorithm != ALGORITHM {
            return Err(incomplete(&format!(
                "X-Amz-Algorithm only supports \"{ALGORITHM}\", not \"{algorithm}\"."
            )));
        }
        let expires = expires
            .parse::<u64>()
            .ok()
            .map(Duration::from_secs)
            .filter(|e| !e.is_zero() && *e <= MAX_PRESIGNED_EXPIRY)
            .ok_or_else(|| {
                incomplete(&format!(
                    "X-Amz-Expires must be a number of seconds from 1 to {}, not '{expires}'.",
                    MAX_PRESIGNED_EXPIRY.as_secs()
                ))
            })?;
        Signature::new(
            &credential,
            &signed_headers,
            &signature,
            &amz_date,
            Some((expires, rest.join("&"))),
            false,
        )
    }

    fn new(
        credential: &str,
        signed_headers: &str,
        signature: &str,
        amz_date: &str,
        presigned: Option<(Duration, String)>,
        in_header: bool,
    ) -> Result<Signature, SigV4Error> {
        // The key id is everything before the last four parts of the scope.
        let mut scope = credential.rsplitn(5, '/');
        let (Some(terminator), Some(service), Some(region), Some(date), Some(access_key_id)) = (
            scope.next(),
            scope.next(),
            scope.next(),
            scope.next(),
            scope.next(),
        ) else {
            return Err(incomplete(&format!(
                "Credential must be ACCESS_KEY_ID/YYYYMMDD/REGION/SERVICE/aws4_request, not '{credential}'."
            )));
        };
        let signed_at = parse_amz_date(amz_date).ok_or_else(|| {
            let name = if in_header { "X-Amz-Date header" } else { "X-Amz-Date parameter" };
            incomplete(&format!(
                "The {name} must be an ISO 8601 basic UTC time (20260504T123045Z), not '{amz_date}'."
            ))
        })?;
        let signed_headers: Vec<String> = signed_headers.split(';').map(str::to_owned).collect();
        let required: &[&str] = if in_header {
            &["host", "x-amz-date"]
        } else {
            &["host"]
        };
        for name in required {
            if !signed_headers.iter().any(|h| h == name) {
                return Err(incomplete(&format!(
                    "'{name}' must be a 'SignedHeader' in the AWS Authorization."
                )));
            }
        }
        Ok(Signature {
            access_key_id: access_key_id.to_owned(),
            date: date.to_owned(),
            region: region.to_owned(),
            service: service.to_owned(),
            terminator: terminator.to_owned(),
            signed_headers,
            signature: signature.to_owned(),
            amz_date: amz_date.to_owned(),
            signed_at,
            presigned,
        })
    }

    /// The scope names the signing date, one of [`SERVICES`], a region and `aws4_request`.
    fn check_scope(&self) -> Result<(), SigV4Error> {
        if self.date != self.amz_date[..8] {
            return Err(SigV4Error::BadScope(format!(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from \
                 HTTP: '{}' != '{}', from '{}'.",
                self.date,
                &self.amz_date[..8],
                self.amz_date
            )));
        }
        if !SERVICES.contains(&self.service.as_str()) {
            return Err(SigV4Error::BadScope(format!(
                "Credential should be scoped to correct service: '{}'. ",
                SERVICES[0]
            )));
        }
        if self.region.is_empty() {
            return Err(SigV4Error::BadScope(
                "Credential should be scoped to a valid region. ".to_owned(),
            ));
        }
        if self.terminator != "aws4_request" {
            return Err(SigV4Error::BadScope(format!(
                "Credential should be scoped with a valid terminator: 'aws4_request', not '{}'. ",
                self.terminator
            )));
        }
        Ok(())
    }

    /// Signed at most [`MAX_SKEW`] before `now` (a presigned URL: at most its expiry before) and at most
    /// [`MAX_SKEW`] after.
    fn check_time(&self, now: SystemTime) -> Result<(), SigV4Error> {
        let allowed = match &self.presigned {
            Some((expires, _)) => *expires,
            None => MAX_SKEW,
        };
        let expired = self
            .signed_at
            .checked_add(allowed)
            .is_some_and(|deadline| deadline < now);
        let early = now
            .checked_add(MAX_SKEW)
            .is_some_and(|latest| self.signed_at > latest);
        if expired {
            return Err(SigV4Error::Expired {
                signed: self.amz_date.clone(),
                now: amz_date(now),
                allowed,
            });
        }
        if early {
            return Err(SigV4Error::NotYetCurrent {
                signed: self.amz_date.clone(),
                now: amz_date(now),
            });
        }
        Ok(())
    }

    /// The signature `aws-sigv4` computes for the request, as this signature says it was signed (its
    /// headers, scope and time), with `secret` and `body`. A request aws-sigv4 cannot canonicalize the
    /// same way (a signed header that did not arrive, a value that is not text) has none that matches.
    fn expected(
        &self,
        request: &RequestParts<'_>,
        secret: &str,
        body: SignableBody<'_>,
    ) -> Result<String, SigV4Error> {
        let mismatch = |why: &dyn fmt::Display| {
            tracing::debug!(
                access_key_id = self.access_key_id,
                path = request.path,
                "SigV4: the request cannot be signed as its signature says: {why}"
            );
            SigV4Error::SignatureDoesNotMatch
        };
        let mut headers: Vec<(&str, &str)> = Vec::with_capacity(self.signed_headers.len());
        for name in &self.signed_headers {
            let before = headers.len();
            for value in request.headers.get_all(name.as_str()) {
                let value = value
                    .to_str()
                    .map_err(|_| mismatch(&format!("header {name} is not text")))?;
                headers.push((name, value));
            }
            if headers.len() == before {
                match (name.as_str(), request.authority) {
                    ("host", Some(authority)) => headers.push(("host", authority)),
                    _ => {
                        return Err(mismatch(&format!(
                            "signed header {name} is not in the request"
                        )))
                    }
                }
            }
        }
        let query = match &self.presigned {
            Some((_, rest)) => Some(rest.as_str()),
            None => request.query,
        };
        let uri = match query.filter(|q| !q.is_empty()) {
            Some(query) => format!("{}?{query}", request.path),
            None => request.path.to_owned(),
        };
        let signable = SignableRequest::new(request.method, uri, headers.into_iter(), body)
            .map_err(|e| mismatch(&e))?;

        let mut settings = SigningSettings::default();
        // Sign exactly the headers the client signed: aws-sigv4 leaves out user-agent and a few others by
        // default, which a client may have signed.
        settings.excluded_headers = None;
        if let Some((expires, _)) = &self.presigned {
            settings.signature_location = SignatureLocation::QueryParams;
            settings.expires_in = Some(*expires);
        }
        let identity = Credentials::new(
            self.access_key_id.as_str(),
            secret,
            None,
            None,
            "sprig-access-keys",
        )
        .into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(&self.service)
            .time(self.signed_at)
            .settings(settings)
            .build()
            .map_err(|e| mismatch(&e))?
            .into();
        let output = sign(signable, &params).map_err(|e| mismatch(&e))?;

        // aws-sigv4 adds host and x-amz-date itself: the headers it signed must be the client's, or the
        // canonical requests differ and so must the signatures.
        let signed_by_us = match &self.presigned {
            Some(_) => output
                .output()
                .params()
                .iter()
                .find(|(name, _)| *name == "X-Amz-SignedHeaders")
                .map(|(_, value)| value.to_string()),
            None => output
                .output()
                .headers()
                .find(|(name, _)| name.eq_ignore_ascii_case("authorization"))
                .and_then(|(_, value)| signed_headers_of(value).map(str::to_owned)),
        };
        let theirs = self.signed_headers.join(";");
        if signed_by_us.as_deref() != Some(theirs.as_str()) {
            return Err(mismatch(&format!(
                "signed headers {theirs} canonicalize as {signed_by_us:?}"
            )));
        }
        Ok(output.signature().to_owned())
    }
}

/// The `SignedHeaders=` value of an `Authorization` header.
fn signed_headers_of(authorization: &str) -> Option<&str> {
    authorization
        .split([',', ' '])
        .find_map(|part| part.trim().strip_prefix("SignedHeaders="))
}

/// The raw `key=value` pairs of a query.
fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

fn incomplete(why: &str) -> SigV4Error {
    SigV4Error::IncompleteSignature(why.to_owned())
}

#[cfg(test)]
mod tests;
