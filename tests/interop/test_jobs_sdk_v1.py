"""AWS's jobs sample flow with the AWS IoT Device SDK v2 for Python's `IotJobsClient` (MQTT 3.1.1), against sprig.

The device is what AWS publishes as `samples/jobs.py` (the IotJobsClient version, before the samples moved to
IotJobsClientV2), rewritten as a class the test can observe, with the same connection and the same order of
subscriptions and requests:

* the SDK's default connection as the sample makes it: `mqtt_connection_builder.mtls_from_path` with a device
  certificate (subject CN = thing name = client id), `clean_session=False`, keep-alive 30 s, and the SDK's
  default metrics in the CONNECT username (`?SDK=IoTDeviceSDK/Python&Platform=...`);
* subscribe to get-pending accepted/rejected, publish get-pending;
* subscribe to notify-next, to start-next accepted/rejected, to update accepted/rejected for any job ('+');
* try to start the next job; when notify-next names a job, publish start-next right away (or remember it if
  a job is being worked on); when start-next is accepted with an execution, "work" on it (no delay here) and
  publish an update to SUCCEEDED; when that is accepted, start the next job if one was announced meanwhile.

Each run: a job created before the device connects (started by the sample's own start-next), then a job
created while it is connected (started because notify-next announced it); both must end SUCCEEDED, as
`sprig describe-job-execution` tells. 10 runs (SPRIG_INTEROP_RUNS), each with fresh job ids, the same thing
reconnecting to its persistent session, against one gateway.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

from awscrt import mqtt
from awsiot import iotjobs, mqtt_connection_builder

import flow
from flow import Journal, Run
from sprig_gateway import Gateway, Pki, PresenceWatcher

TEST = "test_jobs_sdk_v1"
THING = "interop-sdk-v1"
QOS = mqtt.QoS.AT_LEAST_ONCE


class SampleDevice(flow.SampleStateMachine):
    """The device side of AWS's jobs sample on an `IotJobsClient`; what it sees goes to `journal`."""

    def __init__(self, connection: mqtt.Connection, thing: str, journal: Journal):
        super().__init__(thing, journal)
        self.jobs = iotjobs.IotJobsClient(connection)
        self.current_job: str | None = None

    # -- what the sample does on its main thread, step by step -------------------------------------

    def get_pending_jobs(self) -> None:
        """Subscribes to get-pending accepted and rejected (each SUBACK awaited), then publishes get-pending."""
        j = self.journal
        request = iotjobs.GetPendingJobExecutionsRequest(thing_name=self.thing)
        future, _ = self.jobs.subscribe_to_get_pending_job_executions_accepted(
            request=request, qos=QOS, callback=j.guard("get-pending accepted", self.on_get_pending_accepted))
        j.result("subscribe get-pending/accepted", future)
        future, _ = self.jobs.subscribe_to_get_pending_job_executions_rejected(
            request=request, qos=QOS, callback=j.guard("get-pending rejected", self.on_rejected("get-pending")))
        j.result("subscribe get-pending/rejected", future)
        j.result("publish get-pending", self.jobs.publish_get_pending_job_executions(request=request, qos=QOS))

    def subscribe_to_job_topics(self) -> None:
        """notify-next; start-next accepted and rejected; update accepted and rejected for any job id."""
        j = self.journal
        future, _ = self.jobs.subscribe_to_next_job_execution_changed_events(
            request=iotjobs.NextJobExecutionChangedSubscriptionRequest(thing_name=self.thing),
            qos=QOS, callback=j.guard("notify-next", self.on_next_job_execution_changed))
        j.result("subscribe notify-next", future)

        start = iotjobs.StartNextPendingJobExecutionSubscriptionRequest(thing_name=self.thing)
        accepted, _ = self.jobs.subscribe_to_start_next_pending_job_execution_accepted(
            request=start, qos=QOS, callback=j.guard("start-next accepted", self.on_start_next_accepted))
        rejected, _ = self.jobs.subscribe_to_start_next_pending_job_execution_rejected(
            request=start, qos=QOS, callback=j.guard("start-next rejected", self.on_rejected("start-next")))
        j.result("subscribe start-next/accepted", accepted)
        j.result("subscribe start-next/rejected", rejected)

        update = iotjobs.UpdateJobExecutionSubscriptionRequest(thing_name=self.thing, job_id="+")
        accepted, _ = self.jobs.subscribe_to_update_job_execution_accepted(
            request=update, qos=QOS, callback=j.guard("update accepted", self.on_update_accepted))
        rejected, _ = self.jobs.subscribe_to_update_job_execution_rejected(
            request=update, qos=QOS, callback=j.guard("update rejected", self.on_rejected("update")))
        j.result("subscribe +/update/accepted", accepted)
        j.result("subscribe +/update/rejected", rejected)

    def request_start_next(self) -> None:
        """Publishes start-next (the sample's `try_start_next_job`, once it decided to)."""
        future = self.jobs.publish_start_next_pending_job_execution(
            iotjobs.StartNextPendingJobExecutionRequest(thing_name=self.thing), QOS)
        future.add_done_callback(self.journal.guard("start-next PUBACK", self.on_published("start-next")))

    # -- callbacks (SDK threads) -------------------------------------------------------------------

    def on_get_pending_accepted(self, response: iotjobs.GetPendingJobExecutionsResponse) -> None:
        self.journal.record("get-pending accepted",
                            queued=[job.job_id for job in response.queued_jobs or []],
                            in_progress=[job.job_id for job in response.in_progress_jobs or []])

    def on_start_next_accepted(self, response: iotjobs.StartNextJobExecutionResponse) -> None:
        execution = response.execution
        if not execution:
            self.journal.record("start-next accepted", None)
            self.done_working_on_job()
            return
        self.journal.record("start-next accepted", execution.job_id, status=execution.status)
        # The sample works on the job in a thread of its own, then reports SUCCEEDED.
        threading.Thread(target=self.journal.guard("job thread", self.work_on_job),
                         args=(execution.job_id,), name="job_thread", daemon=True).start()

    def work_on_job(self, job_id: str) -> None:
        self.current_job = job_id
        request = iotjobs.UpdateJobExecutionRequest(
            thing_name=self.thing, job_id=job_id, status=iotjobs.JobStatus.SUCCEEDED)
        future = self.jobs.publish_update_job_execution(request, QOS)
        future.add_done_callback(self.journal.guard("update PUBACK", self.on_published("update", job_id)))

    def on_update_accepted(self, response: iotjobs.UpdateJobExecutionResponse) -> None:
        # The reply does not name the job; the sample works on one job at a time.
        state = response.execution_state
        self.journal.record("update accepted", self.current_job, status=state.status if state else None)
        self.done_working_on_job()

    def on_rejected(self, request: str):
        def rejected(error: iotjobs.RejectedError) -> None:
            self.journal.error(f"{request} rejected: {error.code}: {error.message}")
        return rejected

    def on_published(self, request: str, job_id: str | None = None):
        def published(future) -> None:
            future.result()  # raises (and the guard records it) if the publish failed
            self.journal.record(f"{request} published", job_id)
        return published


def connect(gateway: Gateway, pki: Pki, cert: Path, key: Path, journal: Journal) -> mqtt.Connection:
    """The sample's connection: mtls_from_path, clean_session=False, keep-alive 30 s, SDK defaults otherwise."""
    connection = mqtt_connection_builder.mtls_from_path(
        endpoint="127.0.0.1", port=gateway.tls_port, cert_filepath=str(cert), pri_key_filepath=str(key),
        ca_filepath=str(pki.ca), client_id=THING, clean_session=False, keep_alive_secs=30,
        on_connection_interrupted=lambda connection, error, **kw: journal.error(f"connection interrupted: {error}"))
    connack = journal.result("connect (CONNACK)", connection.connect())
    journal.record("CONNACK", session_present=connack["session_present"])
    return connection


def disconnect(connection: mqtt.Connection, presence: PresenceWatcher, presence_mark: int, j: Journal) -> None:
    """Disconnects, and waits until the gateway has seen the device go (so the next run's CONNECT is new)."""
    j.result("disconnect", connection.disconnect())
    presence.wait("disconnected", presence_mark, "the gateway sees the device disconnect", flow.STEP_TIMEOUT_S)


def one_run(gateway: Gateway, pki: Pki, cert: Path, key: Path, presence: PresenceWatcher, run: Run) -> None:
    """The sample's flow once: a job queued before connecting, then one created while connected."""
    j = run.journal
    queued, live = run.job_ids["queued"], run.job_ids["live"]
    gateway.create_job(queued, THING, {"operation": "interop", "job": queued})

    presence_mark = presence.count()
    connection = connect(gateway, pki, cert, key, j)
    try:
        device = SampleDevice(connection, THING, j)
        device.get_pending_jobs()
        device.subscribe_to_job_topics()
        device.try_start_next_job()  # the sample's first attempt, once every subscription is acknowledged

        j.wait("get-pending lists the queued job", "get-pending accepted",
               check=lambda e: queued in e.detail["queued"] + e.detail["in_progress"])
        flow.run_both_jobs(j, gateway, THING, queued, live)
    except BaseException:
        flow.quietly(lambda: disconnect(connection, presence, presence_mark, j))  # keep the first failure
        raise
    disconnect(connection, presence, presence_mark, j)
    flow.expect_succeeded(gateway, THING, (queued, live))


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="sprig-interop-v1-") as tmp:
        pki = Pki(Path(tmp) / "pki")
        cert, key = pki.device(THING)
        gateway = Gateway(pki, workdir=Path(tmp))
        with gateway:
            presence = PresenceWatcher(gateway, THING)
            try:
                status = flow.repeat(TEST, gateway, lambda run: one_run(gateway, pki, cert, key, presence, run),
                                     ["queued", "live"], "v1")
            finally:
                presence.close()
        return status


if __name__ == "__main__":
    flow.main(main)
