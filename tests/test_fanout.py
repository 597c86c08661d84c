"""What rank 0 sends the other ranks: the job in full, then deltas, never pickled."""

from __future__ import annotations

import dataclasses

from lrctl.model import Job, JobState
from lrctl.overrides import Event, Op
from worker._fanout import decode_held, encode_held
from worker._link import Held

JOB = Job(
    "j",
    "StepLR(step_size=10)",
    (0.1, 0.05),
    version=2,
    events=(Event(2, Op.SCALE, 0.5, effective_step=7),),
)


def test_a_new_version_travels_as_the_new_events_only() -> None:
    first = decode_held(encode_held(Held(JOB), None), None)
    assert first.job.events == JOB.events and first.version == 2
    newer = dataclasses.replace(
        JOB,
        version=4,
        state=JobState.FINISHED,
        events=(*JOB.events, Event(3, Op.SET, 1e-3, group=1), Event(4, Op.CLEAR)),
    )
    data = encode_held(Held(newer), first)
    assert data[:1] == b"D" and len(data) < len(encode_held(Held(newer), None))
    got = decode_held(data, first)
    assert got.job.version == 4 and got.job.finished
    assert [(e.version, e.op, e.value, e.group) for e in got.job.events] == [
        (2, Op.SCALE, 0.5, None),
        (3, Op.SET, 1e-3, 1),
        (4, Op.CLEAR, None, None),
    ]
    assert got.job.events[0].effective_step == 7


def test_a_recreated_job_travels_in_full_and_keeps_the_previous_incarnation() -> None:
    first = decode_held(encode_held(Held(JOB), None), None)
    recreated = Job("j", "ExponentialLR(gamma=0.9)", (0.1, 0.05), version=5, created_version=5)
    data = encode_held(Held(recreated), first)
    assert data[:1] == b"F"
    got = decode_held(data, first)
    assert got.job.schedule == "ExponentialLR(gamma=0.9)" and got.previous is first
    assert got.at(2).schedule == "StepLR(step_size=10)"
