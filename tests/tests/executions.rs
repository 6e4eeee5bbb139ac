//! The operators' job execution operations as AWS IoT has them (ListJobExecutionsForThing,
//! CancelJobExecution, DeleteJobExecution), through raw MQTT control requests against the real gateway,
//! with real devices on the other side.

use std::time::Duration;

use serde_json::{json, Value};
use sprig_tests::device::{Device, Protocol};
use sprig_tests::{create_job, hash_password, Gateway, Operator};

const WAIT: Duration = Duration::from_secs(5);

fn rejected(reply: sprig_tests::Reply) -> String {
    match reply {
        Ok(body) => panic!("expected a rejection, got {body}"),
        Err((code, _)) => code,
    }
}

/// `(jobId, status)` of each summary of a ListJobExecutionsForThing answer, and its nextToken.
fn listed(answer: &Value) -> (Vec<(String, String)>, Option<String>) {
    let summaries = answer["executionSummaries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let status = &s["jobExecutionSummary"]["status"];
            (
                s["jobId"].as_str().unwrap().to_owned(),
                status.as_str().unwrap().to_owned(),
            )
        })
        .collect();
    (summaries, answer["nextToken"].as_str().map(str::to_owned))
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(job, status)| (job.to_string(), status.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn list_job_executions_for_thing_lists_finished_and_pending_executions_the_caller_may_see() {
    let acme_hash = hash_password("acme-pw");
    let gateway = Gateway::start_with(|c| {
        format!(
            "{c}\n[[auth.operators]]\nusername = \"acme\"\npassword_hash = \"{acme_hash}\"\nnamespaces = [\"acme\"]\n"
        )
    });
    let mut op = gateway.operator().await;
    op.request("CreateJob", create_job("j1", None, &["t1", "t2"]))
        .await
        .unwrap();
    op.request("CreateJob", create_job("j2", Some("acme"), &["t1"]))
        .await
        .unwrap();
    op.request("CreateJob", create_job("j3", None, &["t2"]))
        .await
        .unwrap();
    // t1 runs j1 to the end: no longer pending, still listed.
    let mut t1 = Device::connect(gateway.addr, "t1", Protocol::V311).await;
    let (accepted, body) = t1.request("start-next", json!({})).await;
    assert!(accepted && body["execution"]["jobId"] == "j1", "{body}");
    let (accepted, body) = t1
        .request("j1/update", json!({"status": "SUCCEEDED"}))
        .await;
    assert!(accepted, "{body}");

    let all = op
        .request("ListJobExecutionsForThing", json!({"thingName": "t1"}))
        .await
        .unwrap();
    assert_eq!(
        listed(&all),
        (pairs(&[("j1", "SUCCEEDED"), ("j2", "QUEUED")]), None)
    );
    let done = &all["executionSummaries"][0]["jobExecutionSummary"];
    assert_eq!(done["executionNumber"], 1);
    assert!(done["startedAt"].is_number() && done["queuedAt"].is_number());
    assert!(done["lastUpdatedAt"].as_f64() >= done["startedAt"].as_f64());
    assert!(all["executionSummaries"][1]["jobExecutionSummary"]
        .get("startedAt")
        .is_none());

    // Filters: status, namespace, job.
    for (filter, expected) in [
        (json!({"status": "QUEUED"}), vec![("j2", "QUEUED")]),
        (json!({"status": "FAILED"}), vec![]),
        (json!({"namespaceId": "acme"}), vec![("j2", "QUEUED")]),
        (json!({"jobId": "j1"}), vec![("j1", "SUCCEEDED")]),
        (json!({"jobId": "j3"}), vec![]),
    ] {
        let mut request = filter.clone();
        request["thingName"] = json!("t1");
        let answer = op
            .request("ListJobExecutionsForThing", request)
            .await
            .unwrap();
        assert_eq!(listed(&answer), (pairs(&expected), None), "{filter}");
    }

    // Pages: maxResults, and nextToken naming the last job of the page.
    let first = op
        .request(
            "ListJobExecutionsForThing",
            json!({"thingName": "t1", "maxResults": 1}),
        )
        .await
        .unwrap();
    assert_eq!(
        listed(&first),
        (pairs(&[("j1", "SUCCEEDED")]), Some("j1".into()))
    );
    let second = op
        .request(
            "ListJobExecutionsForThing",
            json!({"thingName": "t1", "maxResults": 1, "nextToken": "j1"}),
        )
        .await
        .unwrap();
    assert_eq!(listed(&second), (pairs(&[("j2", "QUEUED")]), None));

    // Another thing, and a thing with no executions (sprig has no thing registry: an empty list).
    let t2 = op
        .request("ListJobExecutionsForThing", json!({"thingName": "t2"}))
        .await
        .unwrap();
    assert_eq!(
        listed(&t2),
        (pairs(&[("j1", "QUEUED"), ("j3", "QUEUED")]), None)
    );
    let nobody = op
        .request("ListJobExecutionsForThing", json!({"thingName": "nobody"}))
        .await
        .unwrap();
    assert_eq!(listed(&nobody), (vec![], None));

    // An operator sees the executions of its namespaces' jobs only; another namespace does not exist.
    let mut acme = Operator::connect(gateway.addr, "acme", "acme-pw")
        .await
        .unwrap();
    let theirs = acme
        .request("ListJobExecutionsForThing", json!({"thingName": "t1"}))
        .await
        .unwrap();
    assert_eq!(listed(&theirs), (pairs(&[("j2", "QUEUED")]), None));
    let other = acme
        .request(
            "ListJobExecutionsForThing",
            json!({"thingName": "t1", "namespaceId": "globex"}),
        )
        .await;
    assert_eq!(rejected(other), "ResourceNotFoundException");

    // Malformed requests name the field.
    for bad in [
        json!({}),
        json!({"thingName": "a/b"}),
        json!({"thingName": "t1", "maxResults": 0}),
        json!({"thingName": "t1", "maxResults": 251}),
        json!({"thingName": "t1", "status": "DONE"}),
        json!({"thingName": "t1", "jobId": "a b"}),
        json!({"thingName": "t1", "thingGroupName": "g"}),
    ] {
        let reply = op.request("ListJobExecutionsForThing", bad.clone()).await;
        assert_eq!(rejected(reply), "InvalidRequestException", "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_job_execution_follows_the_rules_aws_documents() {
    let gateway = Gateway::start();
    let mut op = gateway.operator().await;
    op.request("CreateJob", create_job("j1", None, &["t1", "t2"]))
        .await
        .unwrap();
    let mut t1 = Device::connect(gateway.addr, "t1", Protocol::V311).await;
    t1.subscribe(&["$aws/things/t1/jobs/notify"]).await;

    // QUEUED: canceled without force, with the status details given; the device is told.
    let canceled = op
        .request(
            "CancelJobExecution",
            json!({"jobId": "j1", "thingName": "t1", "expectedVersion": 1,
                   "statusDetails": {"reason": "superseded"}}),
        )
        .await;
    assert_eq!(canceled, Ok(json!({})));
    let told = t1.expect_message("$aws/things/t1/jobs/notify", WAIT).await;
    assert_eq!(told["jobs"], json!({}), "{told}");
    let described = op
        .request(
            "DescribeJobExecution",
            json!({"jobId": "j1", "thingName": "t1"}),
        )
        .await
        .unwrap();
    let execution = &described["execution"];
    assert_eq!(
        (
            &execution["status"],
            &execution["versionNumber"],
            &execution["forceCanceled"]
        ),
        (&json!("CANCELED"), &json!(2), &json!(false))
    );
    assert_eq!(
        execution["statusDetails"]["detailsMap"],
        json!({"reason": "superseded"})
    );
    // A terminal execution cannot be canceled, even with force.
    let again = op
        .request(
            "CancelJobExecution",
            json!({"jobId": "j1", "thingName": "t1", "force": true}),
        )
        .await;
    assert_eq!(rejected(again), "InvalidStateTransitionException");

    // IN_PROGRESS: only with force, and only at the version the caller expects.
    let mut t2 = Device::connect(gateway.addr, "t2", Protocol::V311).await;
    let (accepted, body) = t2.request("start-next", json!({})).await;
    assert!(accepted, "{body}");
    let gentle = op
        .request(
            "CancelJobExecution",
            json!({"jobId": "j1", "thingName": "t2"}),
        )
        .await
        .unwrap_err();
    assert_eq!(gentle.0, "InvalidStateTransitionException");
    assert!(gentle.1.contains("force"), "{}", gentle.1);
    let stale = op
        .request(
            "CancelJobExecution",
            json!({"jobId": "j1", "thingName": "t2", "force": true, "expectedVersion": 1}),
        )
        .await;
    assert_eq!(rejected(stale), "VersionConflictException");
    let forced = op
        .request(
            "CancelJobExecution",
            json!({"jobId": "j1", "thingName": "t2", "force": true, "expectedVersion": 2}),
        )
        .await;
    assert_eq!(forced, Ok(json!({})));
    // The device can no longer report on it; the job's last pending execution ended: COMPLETED.
    let (accepted, body) = t2
        .request("j1/update", json!({"status": "SUCCEEDED"}))
        .await;
    assert!(
        !accepted && body["code"] == "InvalidStateTransition",
        "{body}"
    );
    let job = op
        .request("DescribeJob", json!({"jobId": "j1"}))
        .await
        .unwrap();
    assert_eq!(job["job"]["status"], "COMPLETED");
    assert_eq!(job["job"]["jobProcessDetails"]["numberOfCanceledThings"], 2);

    // Unknown job or thing, and malformed input.
    for (body, code) in [
        (
            json!({"jobId": "nope", "thingName": "t1"}),
            "ResourceNotFoundException",
        ),
        (
            json!({"jobId": "j1", "thingName": "t9"}),
            "ResourceNotFoundException",
        ),
        (json!({"jobId": "j1"}), "InvalidRequestException"),
        (
            json!({"jobId": "j1", "thingName": "t1", "statusDetails": {"k": ""}}),
            "InvalidRequestException",
        ),
        (
            json!({"jobId": "j1", "thingName": "t1", "expectedVersion": "1"}),
            "InvalidRequestException",
        ),
    ] {
        let reply = op.request("CancelJobExecution", body.clone()).await;
        assert_eq!(rejected(reply), code, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_job_execution_follows_the_rules_aws_documents() {
    let mut gateway = Gateway::start();
    let mut op = gateway.operator().await;
    op.request("CreateJob", create_job("j1", None, &["t1", "t2", "t3"]))
        .await
        .unwrap();
    let mut t1 = Device::connect(gateway.addr, "t1", Protocol::V311).await;
    let (accepted, body) = t1.request("start-next", json!({})).await;
    assert!(accepted, "{body}");
    let (accepted, body) = t1
        .request("j1/update", json!({"status": "SUCCEEDED"}))
        .await;
    assert!(accepted, "{body}");
    let mut t2 = Device::connect(gateway.addr, "t2", Protocol::V311).await;
    let (accepted, body) = t2.request("start-next", json!({})).await;
    assert!(accepted, "{body}");
    let mut t3 = Device::connect(gateway.addr, "t3", Protocol::V311).await;
    t3.subscribe(&["$aws/things/t3/jobs/notify-next"]).await;
    let delete = |thing: &str, number: i64, extra: Value| {
        let mut body = json!({"jobId": "j1", "thingName": thing, "executionNumber": number});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };

    // A terminal execution: removed, and uncounted.
    let deleted = op
        .request("DeleteJobExecution", delete("t1", 1, json!({})))
        .await;
    assert_eq!(deleted, Ok(json!({})));
    let gone = op
        .request(
            "DescribeJobExecution",
            json!({"jobId": "j1", "thingName": "t1"}),
        )
        .await;
    assert_eq!(rejected(gone), "ResourceNotFoundException");
    let listed_for_t1 = op
        .request("ListJobExecutionsForThing", json!({"thingName": "t1"}))
        .await
        .unwrap();
    assert_eq!(listed(&listed_for_t1), (vec![], None));
    let job = op
        .request("DescribeJob", json!({"jobId": "j1"}))
        .await
        .unwrap();
    let counts = &job["job"]["jobProcessDetails"];
    assert_eq!(
        (
            &counts["numberOfSucceededThings"],
            &counts["numberOfInProgressThings"],
            &counts["numberOfQueuedThings"]
        ),
        (&json!(0), &json!(1), &json!(1))
    );
    let again = op
        .request("DeleteJobExecution", delete("t1", 1, json!({})))
        .await;
    assert_eq!(rejected(again), "ResourceNotFoundException");

    // Another execution number or another namespace: not found.
    for extra in [json!({}), json!({"namespaceId": "acme", "force": true})] {
        let number = if extra.as_object().unwrap().is_empty() {
            2
        } else {
            1
        };
        let reply = op
            .request("DeleteJobExecution", delete("t3", number, extra.clone()))
            .await;
        assert_eq!(rejected(reply), "ResourceNotFoundException", "{extra}");
    }
    // Pending executions only with force; the device is told it has nothing left.
    let queued = op
        .request("DeleteJobExecution", delete("t3", 1, json!({})))
        .await
        .unwrap_err();
    assert_eq!(queued.0, "InvalidStateTransitionException");
    assert!(queued.1.contains("unless force is true"), "{}", queued.1);
    op.request(
        "DeleteJobExecution",
        delete("t3", 1, json!({"force": true})),
    )
    .await
    .unwrap();
    let told = t3
        .expect_message("$aws/things/t3/jobs/notify-next", WAIT)
        .await;
    assert!(told.get("execution").is_none(), "{told}");
    let running = op
        .request("DeleteJobExecution", delete("t2", 1, json!({})))
        .await;
    assert_eq!(rejected(running), "InvalidStateTransitionException");
    op.request(
        "DeleteJobExecution",
        delete("t2", 1, json!({"force": true})),
    )
    .await
    .unwrap();
    // Its device can no longer read or report on it; the job has nothing pending: COMPLETED.
    let (accepted, body) = t2
        .request("j1/update", json!({"status": "SUCCEEDED"}))
        .await;
    assert!(!accepted && body["code"] == "ResourceNotFound", "{body}");
    assert_eq!(op.job_status("j1").await, "COMPLETED");

    // Malformed requests.
    for bad in [
        json!({"jobId": "j1", "thingName": "t1"}),
        json!({"jobId": "j1", "thingName": "t1", "executionNumber": "1"}),
        json!({"jobId": "j1", "thingName": "t1", "executionNumber": 1, "namespaceId": "a/b"}),
    ] {
        let reply = op.request("DeleteJobExecution", bad.clone()).await;
        assert_eq!(rejected(reply), "InvalidRequestException", "{bad}");
    }
    drop(op);
    gateway.stop_and_check_store("1 jobs, 0 executions");
}
