//! AWS IoT's HTTP API on the real `sprig` binary, at the HTTP level: what any client gets before it signs
//! (the AWS CLI and boto3 themselves are driven by tests/interop/test_aws_cli.py).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use sprig_tests::{api_addr, Gateway};

/// Sends `request` (raw HTTP/1.1) to the gateway's API and returns the whole response.
fn exchange(gateway: &Gateway, request: &str) -> String {
    let config = std::fs::read_to_string(&gateway.config_path).unwrap();
    let addr = api_addr(&config).expect("an [api] listener");
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

#[test]
fn an_unsigned_request_is_refused_as_aws_refuses_it() {
    let gateway = Gateway::start();
    let response = exchange(
        &gateway,
        "DELETE /jobs/fw-42?force=true HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    );
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    let lower = response.to_ascii_lowercase();
    assert!(
        lower.contains("x-amzn-errortype: missingauthenticationtokenexception"),
        "{response}"
    );
    assert!(
        response.ends_with(r#"{"message":"Missing Authentication Token"}"#),
        "{response}"
    );
}

#[test]
fn a_body_over_the_limit_is_refused_before_it_is_read_whole() {
    let gateway = Gateway::start();
    let length = 600 * 1024;
    let head = format!(
        "PUT /jobs/j1 HTTP/1.1\r\nHost: gw\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    );
    let response = exchange(&gateway, &(head + &"x".repeat(length)));
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("x-amzn-errortype: invalidrequestexception"),
        "{response}"
    );
}
