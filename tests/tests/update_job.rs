//! UpdateJob and GetJobDocument as AWS IoT has them, through raw MQTT control requests against the real
//! gateway.

use serde_json::json;
use sprig_tests::{create_job, hash_password, Gateway, Operator};

fn rejected(reply: sprig_tests::Reply) -> (String, String) {
    match reply {
        Ok(body) => panic!("expected a rejection, got {body}"),
        Err(rejection) => rejection,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn update_job_changes_the_description_and_names_what_sprig_does_not_support() {
    let gateway = Gateway::start();
    let mut op = gateway.operator().await;
    op.request("CreateJob", create_job("j1", Some("acme"), &["t1"]))
        .await
        .unwrap();
    let created = op
        .request("DescribeJob", json!({"jobId": "j1"}))
        .await
        .unwrap();

    let updated = op
        .request(
            "UpdateJob",
            json!({"jobId": "j1", "description": "firmware 4.2", "namespaceId": "acme"}),
        )
        .await;
    assert_eq!(updated, Ok(json!({})));
    let described = op
        .request("DescribeJob", json!({"jobId": "j1"}))
        .await
        .unwrap();
    assert_eq!(described["job"]["description"], "firmware 4.2");
    assert_eq!(described["job"]["status"], "IN_PROGRESS");
    assert!(described["job"]["lastUpdatedAt"].as_f64() >= created["job"]["lastUpdatedAt"].as_f64());
    // Nothing to change is no error (and changes nothing).
    assert_eq!(
        op.request("UpdateJob", json!({"jobId": "j1"})).await,
        Ok(json!({}))
    );

    // Configurations sprig's jobs do not have are refused by name; a null one is as good as none.
    for field in [
        "timeoutConfig",
        "presignedUrlConfig",
        "jobExecutionsRolloutConfig",
        "abortConfig",
        "jobExecutionsRetryConfig",
    ] {
        let mut body = json!({"jobId": "j1", "description": "x"});
        body[field] = json!({});
        let (code, message) = rejected(op.request("UpdateJob", body).await);
        assert_eq!(code, "InvalidRequestException");
        assert!(
            message.starts_with(&format!("{field}: not supported")),
            "{message}"
        );
        body = json!({"jobId": "j1"});
        body[field] = json!(null);
        assert_eq!(op.request("UpdateJob", body).await, Ok(json!({})));
    }
    let unchanged = op
        .request("DescribeJob", json!({"jobId": "j1"}))
        .await
        .unwrap();
    assert_eq!(unchanged["job"]["description"], "firmware 4.2");

    // Another namespace, an unknown job, malformed input.
    for (body, code) in [
        (
            json!({"jobId": "j1", "description": "d", "namespaceId": "other"}),
            "ResourceNotFoundException",
        ),
        (
            json!({"jobId": "nope", "description": "d"}),
            "ResourceNotFoundException",
        ),
        (json!({"description": "d"}), "InvalidRequestException"),
        (
            json!({"jobId": "j1", "description": "d".repeat(2029)}),
            "InvalidRequestException",
        ),
        (
            json!({"jobId": "j1", "targets": ["t2"]}),
            "InvalidRequestException",
        ),
    ] {
        let (got, message) = rejected(op.request("UpdateJob", body.clone()).await);
        assert_eq!(got, code, "{body}: {message}");
    }

    // A canceled job may still be updated: AWS names no state exception for UpdateJob.
    op.request("CancelJob", json!({"jobId": "j1"}))
        .await
        .unwrap();
    assert_eq!(
        op.request(
            "UpdateJob",
            json!({"jobId": "j1", "description": "canceled"})
        )
        .await,
        Ok(json!({}))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn get_job_document_answers_the_document_to_callers_who_may_see_the_job() {
    let acme_hash = hash_password("acme-pw");
    let gateway = Gateway::start_with(|c| {
        format!(
            "{c}\n[[auth.operators]]\nusername = \"acme\"\npassword_hash = \"{acme_hash}\"\nnamespaces = [\"acme\"]\n"
        )
    });
    let mut op = gateway.operator().await;
    let document = r#"{"operation":"install","files":[{"url":"http://x/fw.bin"}]}"#;
    let mut request = create_job("j1", None, &["t1"]);
    request["document"] = json!(document);
    op.request("CreateJob", request).await.unwrap();

    for body in [
        json!({"jobId": "j1"}),
        json!({"jobId": "j1", "beforeSubstitution": true}),
    ] {
        let answer = op.request("GetJobDocument", body).await.unwrap();
        assert_eq!(answer, json!({ "document": document }));
    }
    let mut acme = Operator::connect(gateway.addr, "acme", "acme-pw")
        .await
        .unwrap();
    let hidden = rejected(acme.request("GetJobDocument", json!({"jobId": "j1"})).await);
    assert_eq!(hidden.0, "ResourceNotFoundException");
    for (body, code) in [
        (json!({"jobId": "nope"}), "ResourceNotFoundException"),
        (json!({"jobId": "a/b"}), "InvalidRequestException"),
        (json!({}), "InvalidRequestException"),
    ] {
        let (got, message) = rejected(op.request("GetJobDocument", body.clone()).await);
        assert_eq!(got, code, "{body}: {message}");
    }
}
