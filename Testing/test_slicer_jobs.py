"""Background jobs and batch runs of the Slicer module: progress, cancel, failures, summary."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from segmote.errors import InputError
from SegMoTELib.jobs import BackgroundJob, JobCancelled, run_batch, user_message

WAIT_SECONDS = 30


def test_job_returns_result_and_progress():
    def work(progress, cancel):
        progress(0.5, "half")
        return np.arange(3)

    job = BackgroundJob(work)
    job.start()
    state = job.wait(WAIT_SECONDS)

    assert not state.running
    assert state.error is None
    assert state.fraction == 1.0
    assert state.message == "half"
    assert state.result.tolist() == [0, 1, 2]


def test_job_cancel_stops_work():
    started = threading.Event()
    steps = []

    def work(progress, cancel):
        while not cancel.wait(0.01):
            steps.append(len(steps))
            progress(min(0.9, len(steps) / 1000), f"step {len(steps)}")
            started.set()
        raise JobCancelled()

    job = BackgroundJob(work)
    job.start()
    assert started.wait(WAIT_SECONDS)
    assert job.state().running
    job.cancel()
    state = job.wait(WAIT_SECONDS)

    assert not state.running
    assert isinstance(state.error, JobCancelled)
    assert state.result is None
    assert len(steps) > 0


def test_job_reports_error_without_raising():
    def work(progress, cancel):
        raise InputError("invalid prompt: add a foreground point")

    job = BackgroundJob(work)
    job.start()
    state = job.wait(WAIT_SECONDS)

    assert isinstance(state.error, InputError)
    assert user_message(state.error) == "invalid prompt: add a foreground point"


def test_job_starts_once():
    job = BackgroundJob(lambda progress, cancel: None)
    job.start()
    job.wait(WAIT_SECONDS)
    with pytest.raises(RuntimeError, match="already started"):
        job.start()


def test_user_message_names_unexpected_errors():
    assert user_message(KeyError("spacing")) == "KeyError: 'spacing'"
    assert user_message(JobCancelled()) == "cancelled"


def test_batch_goes_on_after_a_failure():
    reports = []
    done = []

    def run_one(item, progress, cancel):
        progress(0.5, "segmenting")
        if item < 0:
            raise InputError(f"volume {item} has no voxels")
        return item * 10

    summary = run_batch([1, -2, 3], ["a", "b", "c"], run_one, lambda f, m: reports.append((f, m)),
                        threading.Event(), on_done=lambda index, result: done.append((index, result)))

    assert [entry.status for entry in summary.entries] == ["done", "failed", "done"]
    assert summary.entries[1].message == "volume -2 has no voxels"
    assert done == [(0, 10), (2, 30)]
    assert reports[-1] == (1.0, "finished")
    # Each volume gets a third of the bar, and its name in the message.
    assert (0.5 / 3, "a (1/3): segmenting") in reports
    assert (1.5 / 3, "b (2/3): segmenting") in reports
    text = summary.text()
    assert text.splitlines()[0] == "2 done, 1 failed, 0 cancelled of 3 volumes."
    assert "b: failed: volume -2 has no voxels" in text


def test_batch_cancel_marks_the_rest():
    cancel = threading.Event()

    def run_one(item, progress, cancel_event):
        if item == 2:
            cancel_event.set()
            raise JobCancelled()
        return item

    summary = run_batch([1, 2, 3, 4], ["a", "b", "c", "d"], run_one, lambda f, m: None, cancel)

    assert [entry.status for entry in summary.entries] == ["done", "cancelled", "cancelled", "cancelled"]
    assert summary.count("done") == 1
    assert summary.text().splitlines()[0] == "1 done, 0 failed, 3 cancelled of 4 volumes."


def test_batch_rejects_mismatched_names():
    with pytest.raises(ValueError, match="names"):
        run_batch([1, 2], ["a"], lambda item, progress, cancel: item, lambda f, m: None, threading.Event())
