"""What the interop tests share: a journal of what a device saw, with bounded waits, and the repeated runs.

A test drives one device through AWS's jobs sample flow several times (`runs`) against one gateway. Each run
gets fresh job ids and a deadline. Device callbacks (SDK threads) `record` what happened in a
:class:`Journal`; the test thread `wait`s for the next expected entry, for at most the step timeout and
never past the run's deadline. An error a callback reports (a `rejected` reply, an exception) fails the
waiting step at once instead of letting it time out.

Timeouts (seconds) can be changed with the environment: SPRIG_INTEROP_STEP_TIMEOUT_S (default 5) and
SPRIG_INTEROP_RUN_DEADLINE_S (default 20); SPRIG_INTEROP_RUNS (default 10) sets the number of runs, and
SPRIG_INTEROP_VERBOSE=1 prints the journal of passing runs too.
"""

from __future__ import annotations

import concurrent.futures
import os
import secrets
import shutil
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from sprig_gateway import Gateway, StepFailed, target_dir

STEP_TIMEOUT_S = float(os.environ.get("SPRIG_INTEROP_STEP_TIMEOUT_S", "5"))
RUN_DEADLINE_S = float(os.environ.get("SPRIG_INTEROP_RUN_DEADLINE_S", "20"))
RUNS = int(os.environ.get("SPRIG_INTEROP_RUNS", "10"))
# SPRIG_INTEROP_VERBOSE=1: print the journal of passing runs too.
VERBOSE = os.environ.get("SPRIG_INTEROP_VERBOSE") == "1"


@dataclass
class Entry:
    """One thing the device saw or did: `kind` (e.g. "start-next accepted") and its details."""

    kind: str
    job_id: Optional[str] = None
    detail: dict = field(default_factory=dict)
    at: float = field(default_factory=time.monotonic)

    def __str__(self) -> str:
        job = f" {self.job_id}" if self.job_id else ""
        detail = f" {self.detail}" if self.detail else ""
        return f"{self.kind}{job}{detail}"


class Journal:
    """Entries recorded by the device's callbacks, in order; waits for entries with a deadline."""

    def __init__(self, deadline: float):
        self.deadline = deadline
        self.started = time.monotonic()
        self._entries: list[Entry] = []
        self._errors: list[str] = []
        self._changed = threading.Condition()

    def record(self, kind: str, job_id: Optional[str] = None, **detail: Any) -> None:
        """Adds an entry (called from SDK callback threads)."""
        with self._changed:
            self._entries.append(Entry(kind, job_id, detail))
            self._changed.notify_all()

    def error(self, message: str) -> None:
        """Records an error the device hit; the step being waited for fails with it."""
        with self._changed:
            self._errors.append(message)
            self._entries.append(Entry("ERROR", None, {"message": message}))
            self._changed.notify_all()

    def mark(self) -> int:
        """A position in the journal: `wait(..., after=mark)` only looks at later entries."""
        with self._changed:
            return len(self._entries)

    def _timeout(self) -> tuple[float, str]:
        """How long the next step may take (the step timeout, cut at the run's deadline), and that in words."""
        left = self.deadline - time.monotonic()
        if left < STEP_TIMEOUT_S:
            return max(0.0, left), f"before the run's deadline ({RUN_DEADLINE_S:.0f} s)"
        return STEP_TIMEOUT_S, f"within {STEP_TIMEOUT_S:.1f} s"

    def wait(self, step: str, kind: str, job_id: Optional[str] = None, after: int = 0,
             check: Callable[[Entry], bool] = lambda entry: True) -> Entry:
        """The first entry from `after` on of this `kind` (and job) that passes `check`; else StepFailed."""
        timeout, within = self._timeout()
        end = time.monotonic() + timeout
        with self._changed:
            while True:
                if self._errors:
                    raise StepFailed(step, f"the device got an error: {self._errors[0]}")
                for entry in self._entries[after:]:
                    if entry.kind == kind and (job_id is None or entry.job_id == job_id) and check(entry):
                        return entry
                left = end - time.monotonic()
                if left <= 0:
                    raise StepFailed(step, f"nothing {within}")
                self._changed.wait(left)

    def result(self, step: str, future: concurrent.futures.Future) -> Any:
        """The result of an SDK future, waited for within the step timeout; StepFailed otherwise."""
        timeout, within = self._timeout()
        try:
            result = future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            raise StepFailed(step, f"not completed {within}") from None
        except Exception as e:  # the SDK's own error: say which
            raise StepFailed(step, f"failed: {describe_error(e)}") from None
        self.record(f"done: {step}")
        return result

    def guard(self, name: str, callback: Callable) -> Callable:
        """`callback`, recording any exception it raises as an error (SDK threads would only log it)."""

        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return callback(*args, **kwargs)
            except Exception as e:
                self.error(f"{name} raised {describe_error(e)}")

        return guarded

    def find(self, kind: str, job_id: Optional[str] = None) -> list[Entry]:
        """The entries of this `kind` (and job) so far."""
        with self._changed:
            return [e for e in self._entries if e.kind == kind and (job_id is None or e.job_id == job_id)]

    def entries(self) -> list[str]:
        """The journal as text lines, with the time of each entry since the run started."""
        with self._changed:
            return [f"+{e.at - self.started:6.3f}s {e}" for e in self._entries]


def describe_error(error: BaseException) -> str:
    """An SDK exception as one line, with the modeled service error of V2 clients when there is one."""
    modeled = getattr(error, "modeled_error", None)
    inner = getattr(error, "inner_error", None)
    text = f"{type(error).__name__}: {getattr(error, 'message', None) or error}"
    if modeled is not None:
        text += f" (service error: {modeled})"
    elif inner is not None:
        text += f" (cause: {describe_error(inner)})"
    return text


@dataclass
class Run:
    """One run of a flow: its number, its job ids, its journal; `failure` is set when it failed."""

    number: int
    job_ids: dict[str, str]
    journal: Journal
    failure: Optional[str] = None
    seconds: float = 0.0


def job_id(prefix: str, run: int, role: str) -> str:
    """A fresh job id, e.g. `v1-r3-queued-1a2b3c` (AWS's pattern [a-zA-Z0-9_-], at most 64 characters)."""
    return f"{prefix}-r{run}-{role}-{secrets.token_hex(3)}"


def repeat(test_name: str, gateway: Gateway, flow: Callable[[Run], None], job_roles: list[str],
           id_prefix: str) -> int:
    """Runs `flow` RUNS times against `gateway`, each with fresh job ids (one per role) and a deadline.

    Prints one line per run (and, for a failed run, its journal and what the gateway logged meanwhile),
    cancels (force) whatever a failed run left pending so the next run starts clean, and returns the
    process exit status: 0 when every run passed.
    """
    runs: list[Run] = []
    for number in range(1, RUNS + 1):
        started = time.monotonic()
        run = Run(number, {role: job_id(id_prefix, number, role) for role in job_roles},
                  Journal(started + RUN_DEADLINE_S))
        log_mark = gateway.log_mark()
        try:
            flow(run)
        except StepFailed as e:
            run.failure = str(e)
        except Exception as e:  # a bug in the test or an SDK surprise: report it as this run's failure
            run.failure = f"unexpected {describe_error(e)}\n{traceback.format_exc()}"
        run.seconds = time.monotonic() - started
        runs.append(run)
        note = "; notify-next on subscribe" if notified_on_subscribe(run) else ""
        if run.failure is None:
            print(f"  run {number}/{RUNS}: ok ({run.seconds:.2f} s{note})", flush=True)
            if VERBOSE:
                print("    device journal:", *(f"      {line}" for line in run.journal.entries()), sep="\n")
            continue
        print(f"  run {number}/{RUNS}: FAILED after {run.seconds:.2f} s{note} at {run.failure}", flush=True)
        print("    device journal:", *(f"      {line}" for line in run.journal.entries()), sep="\n")
        print("    gateway log during the run:",
              *(f"      {line}" for line in gateway.log_since(log_mark)), sep="\n", flush=True)
        clean_up_after(gateway, run)

    failed = [r for r in runs if r.failure]
    times = sorted(r.seconds for r in runs)
    print(f"  {test_name}: {len(runs) - len(failed)}/{len(runs)} runs passed; run time "
          f"min {times[0]:.2f} s, median {times[len(times) // 2]:.2f} s, max {times[-1]:.2f} s", flush=True)
    on_subscribe = [r.number for r in runs if notified_on_subscribe(r)]
    if on_subscribe:
        print(f"  {test_name}: note: in {len(on_subscribe)} of {len(runs)} runs the gateway sent notify-next "
              f"naming the QUEUED job created before the device connected, as the device subscribed: "
              f"AWS IoT sends notify-next only when the next job changes (runs {on_subscribe})")
    for r in failed:
        print(f"  {test_name}: run {r.number} failed at {r.failure.splitlines()[0]}")
    if failed:
        keep = target_dir() / "interop-logs" / f"{test_name}-gateway.log"
        keep.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(gateway.log_path, keep)
        print(f"  {test_name}: gateway log kept in {keep}")
    return 1 if failed else 0


class SampleStateMachine:
    """The state machine of AWS's jobs sample, shared by the V1 and V2 devices: `is_working_on_job` while a
    start-next or a job is under way, `is_next_job_waiting` when notify-next announced a job meanwhile.
    A subclass sends the start-next request (`request_start_next`) its client's way."""

    def __init__(self, thing: str, journal: Journal):
        self.thing = thing
        self.journal = journal
        self.lock = threading.Lock()
        self.is_working_on_job = False
        self.is_next_job_waiting = False

    def request_start_next(self) -> None:
        raise NotImplementedError

    def try_start_next_job(self) -> None:
        """Sends start-next unless a job is under way (the sample's `try_start_next_job`)."""
        with self.lock:
            if self.is_working_on_job:
                self.journal.record("start-next skipped: already working on a job")
                return
            self.is_working_on_job = True
            self.is_next_job_waiting = False
        self.request_start_next()

    def done_working_on_job(self) -> None:
        """Frees the device; starts the next job if notify-next announced one meanwhile."""
        with self.lock:
            self.is_working_on_job = False
            try_again = self.is_next_job_waiting
        if try_again:
            self.try_start_next_job()

    def on_next_job_execution_changed(self, event: Any) -> None:
        """notify-next (an SDK thread): starts the announced job now, or once the current one is done."""
        execution = event.execution
        self.journal.record("notify-next", execution.job_id if execution else None,
                            **({"status": execution.status} if execution else {}))
        if not execution:
            return
        with self.lock:
            start_now = not self.is_working_on_job
            if not start_now:
                self.is_next_job_waiting = True
        if start_now:
            self.try_start_next_job()


def run_both_jobs(j: Journal, gateway: Gateway, thing: str, queued: str, live: str) -> None:
    """The sample's steps once its subscriptions are made and its first start-next is sent: the job created
    before it connected runs to SUCCEEDED, then one created while it is connected, announced by notify-next."""
    j.wait(f"start-next accepted for {queued} (created before connecting)", "start-next accepted", queued)
    j.wait(f"update SUCCEEDED accepted for {queued}", "update accepted", queued)

    mark = j.mark()
    gateway.create_job(live, thing, {"operation": "interop", "job": live})
    j.wait(f"notify-next announces {live} (created while connected)", "notify-next", live, after=mark)
    j.wait(f"start-next accepted for {live}", "start-next accepted", live, after=mark)
    j.wait(f"update SUCCEEDED accepted for {live}", "update accepted", live, after=mark)


def expect_succeeded(gateway: Gateway, thing: str, jobs: tuple[str, ...]) -> None:
    """The operator's view agrees: each of `jobs` ended SUCCEEDED on `thing`."""
    for job in jobs:
        status = gateway.execution_status(job, thing)
        if status != "SUCCEEDED":
            raise StepFailed(f"describe-job-execution {job}", f"status {status}, expected SUCCEEDED")


def notified_on_subscribe(run: Run) -> bool:
    """Did notify-next name the job created before the device connected while that job was still QUEUED?

    Nothing changed that job's place as the next one once the device connected, so AWS IoT would not send
    that notification: the gateway sent the current state because the device subscribed. Informational
    (what the sample then does is what the run checks).
    """
    queued = run.job_ids.get("queued")
    return any(e.detail.get("status") == "QUEUED" for e in run.journal.find("notify-next", queued))


def clean_up_after(gateway: Gateway, run: Run) -> None:
    """Force-cancels the failed run's jobs, so their executions no longer block the next run."""
    for job in run.job_ids.values():
        done = gateway.cli("cancel-job", "--job-id", job, "--force")
        expected = ("ResourceNotFoundException", "InvalidStateTransitionException")  # gone, or COMPLETED
        if done.returncode != 0 and not any(code in done.stderr for code in expected):
            print(f"    clean-up: cancel-job {job} exited {done.returncode}: {done.stderr.strip()}")


def quietly(action: Callable[[], Any]) -> None:
    """Runs a clean-up `action` after a failure, printing (not raising) what went wrong in it."""
    try:
        action()
    except Exception as e:
        print(f"    clean-up after the failure also failed: {describe_error(e)}", flush=True)


def main(test: Callable[[], int]) -> None:
    """Runs a test's `main`, turning an error outside the runs (set-up, teardown) into exit status 1.

    SIGTERM (run.sh's timeout) raises SystemExit in the main thread, so the gateway is still stopped.
    """
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        status = test()
    except StepFailed as e:
        print(f"  FAILED at {e}", flush=True)
        status = 1
    except Exception:
        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    sys.exit(status)
