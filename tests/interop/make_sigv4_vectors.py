"""Prints the botocore-signed requests that `gateway/src/auth/sigv4/tests.rs` keeps as fixed test vectors.

A one-off, not a test: run it (python3 with botocore) when the vectors need remaking, and paste its output
over the `BOTOCORE_VECTORS` table. It makes the real `iot` client sign its requests for a gateway at
http://gateway:8080 at a fixed time, and catches each request before it is sent (nothing goes on the
network). Then a presigned URL (`generate_presigned_url`), and a request signed by botocore's SigV4Auth
with the scope's service `execute-api` (what other SDKs' models name), region `eu-west-1`.

    python3 tests/interop/make_sigv4_vectors.py
"""

import datetime
import json

import botocore
import botocore.auth
import botocore.session
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.credentials import Credentials

SIGNED_AT = datetime.datetime(2026, 5, 4, 12, 30, 45, tzinfo=datetime.timezone.utc)
ACCESS_KEY_ID = "SPRGTEST0000000000AB"
SECRET_ACCESS_KEY = "sprigTestSecret0123456789abcdefghijklmnop"
ENDPOINT = "http://gateway:8080"

botocore.auth.get_current_datetime = lambda: SIGNED_AT


class _Body:
    def stream(self, **_):
        return iter([b"{}"])


def signed_requests():
    client = botocore.session.get_session().create_client(
        "iot",
        region_name="local",
        endpoint_url=ENDPOINT,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
    )
    sent = []

    def catch(request, **_):
        sent.append(request)
        return AWSResponse(request.url, 200, {}, _Body())

    client.meta.events.register("before-send.iot", catch)
    calls = [
        ("DeleteJob", lambda: client.delete_job(jobId="fw-42", force=True, namespaceId="acme")),
        (
            "CreateJob",
            lambda: client.create_job(
                jobId="j1",
                targets=["arn:aws:iot:local:123456789012:thing/pump-1"],
                document=json.dumps({"operation": "reboot", "delay s": 5}),
                description="reboot pumps",
            ),
        ),
        (
            "ListJobExecutionsForThing",
            lambda: client.list_job_executions_for_thing(
                thingName="pump:1", namespaceId="acme", maxResults=2, nextToken="a/b+c= d"
            ),
        ),
    ]
    for name, call in calls:
        call()
        yield name, sent[-1]

    url = client.generate_presigned_url(
        "delete_job", Params={"jobId": "fw-42", "force": True, "namespaceId": "acme"}, ExpiresIn=600
    )
    yield "DeleteJob (presigned URL, 600 s)", AWSRequest(method="DELETE", url=url)

    request = AWSRequest(method="DELETE", url=f"{ENDPOINT}/jobs/fw-42?force=true")
    botocore.auth.SigV4Auth(
        Credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY), "execute-api", "eu-west-1"
    ).add_auth(request)
    yield "DeleteJob (execute-api)", request


def rust_str(value):
    if isinstance(value, bytes):
        value = value.decode()
    return json.dumps(value)


def main():
    print(f"// Made by tests/interop/make_sigv4_vectors.py with botocore {botocore.__version__}.")
    for name, request in signed_requests():
        url = request.url[len(ENDPOINT):]
        path, _, query = url.partition("?")
        # Headers the HTTP client adds on the wire, which the signature covers (`host`) or not.
        headers = {"host": ENDPOINT.split("//")[1]}
        for key, value in request.headers.items():
            if key.lower() == "user-agent":
                value = f"Botocore/{botocore.__version__}"
            headers[key] = value
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        print("    BotocoreVector {")
        print(f"        operation: {rust_str(name)},")
        print(f"        method: {rust_str(request.method)},")
        print(f"        path: {rust_str(path)},")
        print(f"        query: {rust_str(query)},")
        print("        headers: &[")
        for key, value in headers.items():
            print(f"            ({rust_str(key)}, {rust_str(value)}),")
        print("        ],")
        print(f"        body: {rust_str(body)},")
        print("    },")


if __name__ == "__main__":
    main()
