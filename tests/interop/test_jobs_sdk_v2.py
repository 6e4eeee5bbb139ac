"""AWS's jobs flow with the AWS IoT Device SDK v2 for Python's `IotJobsClientV2` (MQTT 5), against sprig.

`IotJobsClientV2` is the SDK's request/response client: each request subscribes to its reply topics
(`.../start-next/+` and so on) before it publishes, and matches the reply by `clientToken`; notifications
come as streams. The connection is the one of AWS's V2 jobs sample (`samples/service_clients/jobs.py`):
`mqtt5_client_builder.mtls_from_path` with a device certificate and the SDK's defaults otherwise (clean
start, metrics in the CONNECT username), `ClientOptions(2, 2, 30)` for the request/response client, and both
notification streams (notify and notify-next) opened. Two things the published sample leaves to AWS IoT are
given here: the test CA (`ca_filepath`) and the client id (sprig requires client id = certificate CN =
thing name; the sample sends none, which AWS IoT Core answers with an assigned id).

The sample is an interactive sandbox; the flow driven here is the one of the V1 sample (see
test_jobs_sdk_v1.py) on the V2 client: get the pending jobs, open the streams, try to start the next job,
start the next job whenever notify-next names one (unless one is under way), and report each started job
SUCCEEDED. Each run: a job queued before connecting, then one created while connected; both must end
SUCCEEDED per `sprig describe-job-execution`. 10 runs (SPRIG_INTEROP_RUNS), fresh job ids, one gateway.
"""

from __future__ import annotations

import concurrent.futures
import tempfile
import threading
from pathlib import Path

import awsiot
from awscrt import mqtt5, mqtt_request_response
from awsiot import iotjobs, mqtt5_client_builder

import flow
from flow import Journal, Run, describe_error
from sprig_gateway import Gateway, Pki, PresenceWatcher, StepFailed

TEST = "test_jobs_sdk_v2"
THING = "interop-sdk-v2"
ESTABLISHED = mqtt_request_response.SubscriptionStatusEventType.SUBSCRIPTION_ESTABLISHED
HALTED = mqtt_request_response.SubscriptionStatusEventType.SUBSCRIPTION_HALTED


class JobsDeviceV2(flow.SampleStateMachine):
    """A device running the jobs flow on an `IotJobsClientV2` (the V1 sample's state machine); what it sees
    goes to `journal`."""

    def __init__(self, client: mqtt5.Client, thing: str, journal: Journal):
        # The request/response options of AWS's V2 jobs sample.
        options = mqtt_request_response.ClientOptions(
            max_request_response_subscriptions=2, max_streaming_subscriptions=2, operation_timeout_in_seconds=30)
        super().__init__(thing, journal)
        self.jobs = iotjobs.IotJobsClientV2(client, options)
        self.streams: list[mqtt_request_response.StreamingOperation] = []

    def get_pending_jobs(self) -> None:
        """GetPendingJobExecutions, waited for (the request/response client subscribes, then publishes)."""
        response = self.journal.result("get-pending request", self.jobs.get_pending_job_executions(
            iotjobs.GetPendingJobExecutionsRequest(thing_name=self.thing)))
        self.journal.record("get-pending accepted",
                            queued=[job.job_id for job in response.queued_jobs or []],
                            in_progress=[job.job_id for job in response.in_progress_jobs or []])

    def open_streams(self) -> None:
        """Opens the notify and notify-next streams, as the sample does, and waits until both are subscribed."""
        j = self.journal
        streams = [
            ("notify", self.jobs.create_job_executions_changed_stream,
             iotjobs.JobExecutionsChangedSubscriptionRequest(thing_name=self.thing), self.on_job_executions_changed),
            ("notify-next", self.jobs.create_next_job_execution_changed_stream,
             iotjobs.NextJobExecutionChangedSubscriptionRequest(thing_name=self.thing),
             self.on_next_job_execution_changed),
        ]
        established = {}
        for name, create, request, listener in streams:
            established[name] = concurrent.futures.Future()
            options = awsiot.ServiceStreamOptions(
                incoming_event_listener=j.guard(f"{name} event", listener),
                subscription_status_listener=j.guard(f"{name} status", self.on_stream_status(name, established[name])),
                deserialization_failure_listener=lambda failure, name=name: j.error(
                    f"{name}: undecodable event: {describe_error(failure)}"))
            stream = create(request, options)
            stream.open()
            self.streams.append(stream)
        for name, future in established.items():
            j.result(f"{name} stream subscribed", future)

    def request_start_next(self) -> None:
        """StartNextPendingJobExecution, its reply handled when it comes."""
        self.journal.record("start-next requested")
        future = self.jobs.start_next_pending_job_execution(
            iotjobs.StartNextPendingJobExecutionRequest(thing_name=self.thing))
        future.add_done_callback(self.journal.guard("start-next reply", self.on_start_next_done))

    # -- callbacks (SDK threads) -------------------------------------------------------------------

    def on_stream_status(self, name: str, established: concurrent.futures.Future):
        def status(event: mqtt_request_response.SubscriptionStatusEvent) -> None:
            kind = mqtt_request_response.SubscriptionStatusEventType(event.type)
            self.journal.record(f"{name} stream {kind.name}")
            if kind == ESTABLISHED and not established.done():
                established.set_result(None)
            elif kind == HALTED:
                self.journal.error(f"{name} stream halted: {event.error}")
        return status

    def on_job_executions_changed(self, event: iotjobs.JobExecutionsChangedEvent) -> None:
        jobs = event.jobs or {}
        self.journal.record("notify", None, **{status: [job.job_id for job in summaries]
                                               for status, summaries in jobs.items()})

    def on_start_next_done(self, future: concurrent.futures.Future) -> None:
        error = future.exception()
        if error is not None:
            self.journal.error(f"start-next failed: {describe_error(error)}")
            return
        execution = future.result().execution
        if not execution:
            self.journal.record("start-next accepted", None)
            self.done_working_on_job()
            return
        self.journal.record("start-next accepted", execution.job_id, status=execution.status)
        threading.Thread(target=self.journal.guard("job thread", self.work_on_job),
                         args=(execution.job_id,), name="job_thread", daemon=True).start()

    def work_on_job(self, job_id: str) -> None:
        future = self.jobs.update_job_execution(iotjobs.UpdateJobExecutionRequest(
            thing_name=self.thing, job_id=job_id, status=iotjobs.JobStatus.SUCCEEDED))
        future.add_done_callback(self.journal.guard("update reply", lambda f: self.on_update_done(job_id, f)))

    def on_update_done(self, job_id: str, future: concurrent.futures.Future) -> None:
        error = future.exception()
        if error is not None:
            self.journal.error(f"update of {job_id} failed: {describe_error(error)}")
            return
        state = future.result().execution_state
        self.journal.record("update accepted", job_id, status=state.status if state else None)
        self.done_working_on_job()

class Connection:
    """The sample's MQTT 5 client (mtls_from_path), with its lifecycle events in the journal."""

    def __init__(self, gateway: Gateway, pki: Pki, cert: Path, key: Path, journal: Journal):
        self.journal = journal
        self.connected: concurrent.futures.Future = concurrent.futures.Future()
        self.stopped: concurrent.futures.Future = concurrent.futures.Future()
        self.stopping = False
        self.client = mqtt5_client_builder.mtls_from_path(
            endpoint="127.0.0.1", port=gateway.tls_port, cert_filepath=str(cert), pri_key_filepath=str(key),
            ca_filepath=str(pki.ca), client_id=THING,
            # What the sample passes (the MQTT 5 builder does not use these two: it starts clean, keep-alive 1200 s).
            clean_session=True, keep_alive_secs=1200,
            on_lifecycle_connection_success=journal.guard("connection success", self.on_success),
            on_lifecycle_connection_failure=journal.guard("connection failure", self.on_failure),
            on_lifecycle_disconnection=journal.guard("disconnection", self.on_disconnection),
            on_lifecycle_stopped=journal.guard("stopped", lambda event: self.stopped.set_result(True)))

    def start(self) -> mqtt5.Client:
        self.client.start()
        self.journal.result("connect (CONNACK)", self.connected)
        return self.client

    def stop(self) -> None:
        self.stopping = True
        self.client.stop()
        self.journal.result("stop the client", self.stopped)

    def on_success(self, event: mqtt5.LifecycleConnectSuccessData) -> None:
        self.journal.record("CONNACK", session_present=event.connack_packet.session_present)
        if not self.connected.done():
            self.connected.set_result(event)

    def on_failure(self, event: mqtt5.LifecycleConnectFailureData) -> None:
        reason = event.connack_packet.reason_code if event.connack_packet else None
        message = f"connection failed: {describe_error(event.exception)}, CONNACK reason {reason!r}"
        if not self.connected.done():
            self.connected.set_exception(StepFailed("connect (CONNACK)", message))
        self.journal.error(message)

    def on_disconnection(self, event: mqtt5.LifecycleDisconnectData) -> None:
        if not self.stopping:
            reason = event.disconnect_packet.reason_code if event.disconnect_packet else None
            self.journal.error(f"disconnected: {describe_error(event.exception)}, DISCONNECT reason {reason!r}")


def one_run(gateway: Gateway, pki: Pki, cert: Path, key: Path, presence: PresenceWatcher, run: Run) -> None:
    """The flow once: a job queued before connecting, then one created while connected."""
    j = run.journal
    queued, live = run.job_ids["queued"], run.job_ids["live"]
    gateway.create_job(queued, THING, {"operation": "interop", "job": queued})

    presence_mark = presence.count()
    connection = Connection(gateway, pki, cert, key, j)
    try:
        device = JobsDeviceV2(connection.start(), THING, j)
        device.get_pending_jobs()
        j.wait("get-pending lists the queued job", "get-pending accepted",
               check=lambda e: queued in e.detail["queued"] + e.detail["in_progress"])
        device.open_streams()
        device.try_start_next_job()

        flow.run_both_jobs(j, gateway, THING, queued, live)
    except BaseException:
        flow.quietly(lambda: stop(connection, presence, presence_mark, j))  # keep the first failure
        raise
    stop(connection, presence, presence_mark, j)
    flow.expect_succeeded(gateway, THING, (queued, live))


def stop(connection: Connection, presence: PresenceWatcher, presence_mark: int, j: Journal) -> None:
    """Stops the client, and waits until the gateway has seen the device go."""
    connection.stop()
    presence.wait("disconnected", presence_mark, "the gateway sees the device disconnect", flow.STEP_TIMEOUT_S)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="sprig-interop-v2-") as tmp:
        pki = Pki(Path(tmp) / "pki")
        cert, key = pki.device(THING)
        with Gateway(pki, workdir=Path(tmp)) as gateway:
            presence = PresenceWatcher(gateway, THING)
            try:
                return flow.repeat(TEST, gateway, lambda run: one_run(gateway, pki, cert, key, presence, run),
                                   ["queued", "live"], "v2")
            finally:
                presence.close()


if __name__ == "__main__":
    flow.main(main)
