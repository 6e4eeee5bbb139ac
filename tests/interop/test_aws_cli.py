"""AWS's own clients against sprig's HTTP API: the AWS CLI (`aws iot ...`) and boto3, unchanged, pointed
at the gateway with `--endpoint-url` / `endpoint_url`, signing with the local operator's access key as
`sprig credentials` prints it.

Scenarios (each on the gateway of the run unless it needs a config of its own):
- the seed's DeleteJob: `--no-force` on a job in progress refused (InvalidStateTransitionException, exit
  254, AWS's message format), `--force` with `--namespace-id` accepted (exit 0, no output), the job goes
  DELETION_IN_PROGRESS and then away; a terminal job deleted without force;
- every exception of the seed's list raised by botocore as its modeled class: ResourceNotFoundException,
  InvalidRequestException, InvalidStateTransitionException, LimitExceededException (an 11th deletion),
  ThrottlingException (a gateway with a request rate of 1/s), ServiceUnavailableException (a gateway
  whose data dir is a full 4 MiB tmpfs; skipped, saying so, where tmpfs cannot be mounted);
- `--cli-input-json` and `--generate-cli-skeleton` of the real CLI;
- botocore's paginators (`list_jobs`, `list_job_executions_for_job`, `list_job_executions_for_thing`)
  walked to the end in pages of 10;
- UpdateJob, GetJobDocument, DescribeJobExecution, CancelJobExecution and DeleteJobExecution through
  boto3;
- a wrong secret and an unknown access key refused with 403 and AWS's codes;
- the API's TLS listener, its certificate verified by boto3 and the CLI against the test CA.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

import boto3
import botocore.config
import botocore.exceptions

from sprig_gateway import Gateway, Pki, free_port, with_setting

NAME = "test_aws_cli"
REGION = "eu-west-1"
AWS_TIMEOUT_S = 60
GONE_TIMEOUT_S = 60


class Api:
    """The gateway's HTTP API as AWS's clients see it: its endpoint and the local operator's keys."""

    def __init__(self, gateway: Gateway, endpoint: str | None = None):
        self.gateway = gateway
        self.endpoint = endpoint or f"http://127.0.0.1:{gateway.api_port}"
        self.keys = credentials(gateway)

    def env(self, **overrides: str) -> dict:
        """The environment for the AWS CLI: these keys, no config or credentials files, no retries."""
        env = dict(os.environ)
        env.update(
            AWS_ACCESS_KEY_ID=self.keys["AWS_ACCESS_KEY_ID"],
            AWS_SECRET_ACCESS_KEY=self.keys["AWS_SECRET_ACCESS_KEY"],
            AWS_DEFAULT_REGION=REGION,
            AWS_CONFIG_FILE="/dev/null",
            AWS_SHARED_CREDENTIALS_FILE="/dev/null",
            AWS_EC2_METADATA_DISABLED="true",
            AWS_MAX_ATTEMPTS="1",
            AWS_PAGER="",
        )
        env.update(overrides)
        return env

    def aws(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        """`aws iot ARGS --endpoint-url ...`, the CLI of the virtualenv."""
        cli = Path(sys.executable).parent / "aws"
        return subprocess.run([str(cli), "iot", *args, "--endpoint-url", self.endpoint],
                              env=self.env(**env), capture_output=True, text=True, timeout=AWS_TIMEOUT_S)

    def client(self, secret: str | None = None, key: str | None = None, verify: str | None = None):
        """boto3's `iot` client on the gateway (no retries: a refusal is seen as it is)."""
        return boto3.client(
            "iot", endpoint_url=self.endpoint, region_name=REGION, verify=verify,
            aws_access_key_id=key or self.keys["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=secret or self.keys["AWS_SECRET_ACCESS_KEY"],
            config=botocore.config.Config(retries={"max_attempts": 1, "mode": "standard"}),
        )


def credentials(gateway: Gateway) -> dict:
    """`sprig credentials`: its `AWS_ACCESS_KEY_ID=...` and `AWS_SECRET_ACCESS_KEY=...` lines."""
    done = gateway.cli("credentials")
    assert done.returncode == 0, f"sprig credentials exited {done.returncode}: {done.stderr}"
    keys = {}
    for line in done.stdout.splitlines():
        line = line.removeprefix("export ").strip()
        if "=" in line:
            name, value = line.split("=", 1)
            keys[name] = value.strip("'\"")
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= keys.keys(), done.stdout
    return keys


def thing_arn(thing: str) -> str:
    return f"arn:aws:iot:{REGION}:123456789012:thing/{thing}"


def create_job(iot, job_id: str, things: list[str], namespace: str | None = None) -> None:
    request = dict(jobId=job_id, targets=[thing_arn(t) for t in things], document='{"action":"update"}')
    if namespace:
        request["namespaceId"] = namespace
    iot.create_job(**request)


def expect_error(call: Callable[[], object], code: str, status: int) -> str:
    """Runs `call`, which must raise botocore's modeled exception `code` with HTTP `status`; its message."""
    try:
        call()
    except botocore.exceptions.ClientError as e:
        got = (e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"])
        assert got == (code, status), f"wanted {code} ({status}), got {got}: {e}"
        return e.response["Error"]["Message"]
    raise AssertionError(f"wanted {code}, the call succeeded")


def wait_until_gone(iot, job_id: str, namespace: str | None = None) -> None:
    """Until DescribeJob says ResourceNotFoundException (a forced deletion finishes in the background)."""
    deadline = time.monotonic() + GONE_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            status = iot.describe_job(jobId=job_id)["job"]["status"]
            assert status == "DELETION_IN_PROGRESS", status
        except iot.exceptions.ResourceNotFoundException:
            return
        time.sleep(0.05)
    raise AssertionError(f"{job_id} still there {GONE_TIMEOUT_S} s after its deletion")


# -- the scenarios --------------------------------------------------------------------------------------


def delete_job_as_the_seed_describes(api: Api) -> None:
    iot = api.client()
    create_job(iot, "fw-42", ["seed-1", "seed-2"], namespace="acme")
    # A job in progress: --no-force is refused, in AWS's words, with the CLI's exit code for it.
    done = api.aws("delete-job", "--job-id", "fw-42", "--no-force", "--namespace-id", "acme")
    # AWS CLI v1 exits 255 on a service error (v2: 254).
    assert done.returncode == 255, (done.returncode, done.stdout, done.stderr)
    assert "An error occurred (InvalidStateTransitionException) when calling the DeleteJob operation: " \
        in done.stderr, done.stderr
    # --force with the namespace: accepted, no output; the job is DELETION_IN_PROGRESS, then gone.
    done = api.aws("delete-job", "--job-id", "fw-42", "--force", "--namespace-id", "acme")
    assert (done.returncode, done.stdout.strip()) == (0, ""), (done.returncode, done.stdout, done.stderr)
    wait_until_gone(iot, "fw-42")
    # A terminal job needs no force.
    create_job(iot, "done-1", ["seed-3"])
    iot.cancel_job(jobId="done-1", force=True)
    assert iot.describe_job(jobId="done-1")["job"]["status"] == "CANCELED"
    done = api.aws("delete-job", "--job-id", "done-1")
    assert done.returncode == 0, done.stderr
    wait_until_gone(iot, "done-1")


def every_exception_of_the_seed(api: Api) -> None:
    iot = api.client()
    expect_error(lambda: iot.delete_job(jobId="no-such-job"), "ResourceNotFoundException", 404)
    message = expect_error(lambda: iot.delete_job(jobId="bad*id"), "InvalidRequestException", 400)
    assert "jobId" in message, message
    create_job(iot, "running-1", ["exc-1"])
    expect_error(lambda: iot.delete_job(jobId="running-1", force=False), "InvalidStateTransitionException", 409)
    # botocore raises the modeled class, not only a ClientError with the code.
    try:
        iot.delete_job(jobId="running-1")
    except iot.exceptions.InvalidStateTransitionException:
        pass
    else:
        raise AssertionError("no InvalidStateTransitionException")


def limit_exceeded_on_the_eleventh_deletion(api: Api) -> None:
    """Ten deletions in progress (big jobs, deleted one execution per step): the 11th is refused."""
    iot = api.client()
    things = [f"big-{i}" for i in range(3000)]
    for i in range(11):
        create_job(iot, f"big{i}", things)
    for i in range(10):
        iot.delete_job(jobId=f"big{i}", force=True)
    expect_error(lambda: iot.delete_job(jobId="big10", force=True), "LimitExceededException", 410)
    try:
        iot.delete_job(jobId="big10", force=True)
    except iot.exceptions.LimitExceededException:
        pass


def throttled_beyond_the_request_rate(api: Api) -> None:
    """On a gateway whose operators may make one request per second: the second at once is throttled."""
    iot = api.client()
    iot.list_jobs()
    expect_error(lambda: iot.list_jobs(), "ThrottlingException", 400)


def service_unavailable_on_a_full_disk(api: Api) -> None:
    """On a gateway whose store is on a full tmpfs: CreateJob is refused as the store cannot write."""
    iot = api.client()
    for i in range(1000):
        things = [f"fill-{i}-{t}" for t in range(200)]
        try:
            create_job(iot, f"fill{i:04}", things)
        except iot.exceptions.ServiceUnavailableException as e:
            assert "no space left" in str(e), e
            return
    raise AssertionError("1000 jobs fitted on a 4 MiB disk")


def cli_input_json_and_skeleton(api: Api) -> None:
    done = api.aws("delete-job", "--generate-cli-skeleton")
    assert done.returncode == 0, done.stderr
    skeleton = json.loads(done.stdout)
    assert set(skeleton) == {"jobId", "force", "namespaceId"}, skeleton
    iot = api.client()
    create_job(iot, "from-json", ["json-1"], namespace="acme")
    request = json.dumps({"jobId": "from-json", "force": True, "namespaceId": "acme"})
    done = api.aws("delete-job", "--cli-input-json", request)
    assert done.returncode == 0, done.stderr
    wait_until_gone(iot, "from-json")
    # A request the CLI takes apart from JSON answers as the typed one: DescribeJob's output is AWS's.
    create_job(iot, "described", ["json-2"])
    done = api.aws("describe-job", "--cli-input-json", json.dumps({"jobId": "described"}))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["job"]["jobId"] == "described", done.stdout


def paginators_walk_to_the_end(api: Api) -> None:
    iot = api.client()
    things = [f"page-{t}" for t in range(25)]
    for i in range(25):
        create_job(iot, f"page{i:02}", things[:1] if i else things)
    pages = iot.get_paginator("list_jobs").paginate(PaginationConfig={"PageSize": 10})
    listed = [job["jobId"] for page in pages for job in page["jobs"]]
    assert {f"page{i:02}" for i in range(25)} <= set(listed), listed
    assert len(listed) == len(set(listed)), "a job listed twice"
    pages = iot.get_paginator("list_job_executions_for_job").paginate(
        jobId="page00", PaginationConfig={"PageSize": 10})
    executions = [e["thingArn"] for page in pages for e in page["executionSummaries"]]
    assert len(executions) == len(set(executions)) == 25, executions
    pages = iot.get_paginator("list_job_executions_for_thing").paginate(
        thingName="page-0", PaginationConfig={"PageSize": 10})
    jobs = [e["jobId"] for page in pages for e in page["executionSummaries"]]
    assert sorted(jobs) == [f"page{i:02}" for i in range(25)], jobs


def the_other_operations_answer_as_botocore_models_them(api: Api) -> None:
    """UpdateJob, GetJobDocument, DescribeJobExecution, CancelJobExecution and DeleteJobExecution."""
    iot = api.client()
    create_job(iot, "ops-1", ["ops-a", "ops-b"])
    iot.update_job(jobId="ops-1", description="firmware 42")
    assert iot.describe_job(jobId="ops-1")["job"]["description"] == "firmware 42"
    assert json.loads(iot.get_job_document(jobId="ops-1")["document"]) == {"action": "update"}
    execution = iot.describe_job_execution(jobId="ops-1", thingName="ops-a")["execution"]
    assert (execution["status"], execution["executionNumber"]) == ("QUEUED", 1), execution
    iot.cancel_job_execution(jobId="ops-1", thingName="ops-a")
    assert iot.describe_job_execution(jobId="ops-1", thingName="ops-a")["execution"]["status"] == "CANCELED"
    expect_error(lambda: iot.delete_job_execution(jobId="ops-1", thingName="ops-b", executionNumber=1),
                 "InvalidStateTransitionException", 409)
    iot.delete_job_execution(jobId="ops-1", thingName="ops-a", executionNumber=1)
    expect_error(lambda: iot.describe_job_execution(jobId="ops-1", thingName="ops-a"),
                 "ResourceNotFoundException", 404)


def wrong_keys_are_refused(api: Api) -> None:
    wrong = api.client(secret="x" * 40)
    try:
        wrong.list_jobs()
    except botocore.exceptions.ClientError as e:
        code = e.response["Error"]["Code"]
        assert code in ("InvalidSignatureException", "SignatureDoesNotMatch"), code
        assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    else:
        raise AssertionError("a wrong secret was accepted")
    unknown = api.client(key="AKIAUNKNOWNUNKNOWN00")
    expect_error(lambda: unknown.list_jobs(), "UnrecognizedClientException", 403)
    done = api.aws("list-jobs", AWS_SECRET_ACCESS_KEY="y" * 40)
    refused = "(InvalidSignatureException)" in done.stderr or "(SignatureDoesNotMatch)" in done.stderr
    assert done.returncode == 255 and refused, done.stderr


def over_https(pki: Pki) -> Callable[[Api], None]:
    """The API's TLS listener: boto3 and the CLI verify its certificate against the test CA."""
    def scenario(api: Api) -> None:
        https = Api(api.gateway, endpoint=f"https://localhost:{api.gateway.api_tls_port}")
        iot = https.client(verify=str(pki.ca))
        create_job(iot, "tls-1", ["tls-thing"])
        assert iot.describe_job(jobId="tls-1")["job"]["status"] == "IN_PROGRESS"
        done = https.aws("delete-job", "--job-id", "tls-1", "--force", AWS_CA_BUNDLE=str(pki.ca))
        assert done.returncode == 0, done.stderr
        wait_until_gone(iot, "tls-1")
    return scenario


def with_api_tls(pki: Pki) -> Callable[[str], str]:
    def edit(config: str) -> str:
        config = with_setting(config, '# tls_listen = ["0.0.0.0:8443"]',
                              f'tls_listen = ["127.0.0.1:{free_port()}"]')
        config = with_setting(config, '# tls_cert = "api-cert.pem"', f"tls_cert = {json.dumps(str(pki.server_cert))}")
        return with_setting(config, '# tls_key = "api-key.pem"', f"tls_key = {json.dumps(str(pki.server_key))}")
    return edit


# -- running them ---------------------------------------------------------------------------------------

SCENARIOS: list[tuple[str, Callable[[Api], None], Callable[[str], str]]] = [
    ("delete_job_as_the_seed_describes", delete_job_as_the_seed_describes, lambda c: c),
    ("every_exception_of_the_seed", every_exception_of_the_seed, lambda c: c),
    ("limit_exceeded_on_the_eleventh_deletion", limit_exceeded_on_the_eleventh_deletion,
     lambda c: with_setting(c, "deletion_batch_size = 500", "deletion_batch_size = 1")),
    ("throttled_beyond_the_request_rate", throttled_beyond_the_request_rate,
     lambda c: with_setting(with_setting(c, "requests_per_second = 50", "requests_per_second = 1"),
                            "request_burst = 100", "request_burst = 1")),
    ("cli_input_json_and_skeleton", cli_input_json_and_skeleton, lambda c: c),
    ("paginators_walk_to_the_end", paginators_walk_to_the_end, lambda c: c),
    ("the_other_operations_answer_as_botocore_models_them",
     the_other_operations_answer_as_botocore_models_them, lambda c: c),
    ("wrong_keys_are_refused", wrong_keys_are_refused, lambda c: c),
]


def run(name: str, scenario: Callable[[Api], None], edit: Callable[[str], str],
        workdir: Path | None = None) -> bool:
    started = time.monotonic()
    try:
        with Gateway(edit=edit, workdir=workdir) as gateway:
            scenario(Api(gateway))
        print(f"{name} ... ok ({time.monotonic() - started:.1f} s)", flush=True)
        return True
    except Exception:
        print(f"{name} ... FAILED\n{traceback.format_exc()}", flush=True)
        return False


def full_disk_scenario() -> bool | None:
    """The ServiceUnavailableException scenario on a 4 MiB tmpfs; None where tmpfs cannot be mounted."""
    workdir = Path(tempfile.mkdtemp(prefix="sprig-interop-full-"))
    mount = workdir / "data"  # the data dir only: the config and the log stay writable
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        print(f"service_unavailable_on_a_full_disk ... SKIPPED (cannot mount a tmpfs: "
              f"{done.stderr.strip()})", flush=True)
        return None
    try:
        return run("service_unavailable_on_a_full_disk", service_unavailable_on_a_full_disk,
                   lambda c: c, workdir=workdir)
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    results = [run(name, scenario, edit) for name, scenario, edit in SCENARIOS]
    with tempfile.TemporaryDirectory(prefix="sprig-interop-pki-") as directory:
        pki = Pki(Path(directory))
        results.append(run("over_https", over_https(pki), with_api_tls(pki)))
    full_disk = full_disk_scenario()
    if full_disk is not None:
        results.append(full_disk)
    passed = sum(results)
    print(f"  {NAME}: {passed}/{len(results)} runs passed")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
