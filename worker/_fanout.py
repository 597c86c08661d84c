"""One Watch stream per job: rank 0 follows the controller, the other ranks follow rank 0.

Under ``torch.distributed`` only rank 0 attaches to the controller, holds the Watch stream
and reports. Every other rank gets the job from rank 0 over a gloo side group:

* at construction, one blocking broadcast (:func:`handshake`): rank 0's job state, or an
  error marker when rank 0 could not attach, so that no rank is left waiting on a peer that
  already gave up. One all-reduce then checks that every rank built the same scheduler
  (job id, spec, base LRs) before any of them trains;
* when the agreed version changes, one broadcast of the new state at the step where every
  rank switches (:mod:`worker._agreement` announces it a whole exchange ahead).

The state travels as protobuf bytes (:mod:`lrctl.convert`), never pickled: a new version of
the same incarnation is sent as a delta (the events the other ranks do not hold yet), a
recreated job in full. The controller therefore sees one stream and one reporter per job,
whatever the world size, a controller restart is one reconnect rather than one per GPU, and
only rank 0 needs the controller's address and token.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from lrctl.convert import job_delta_from_proto, job_delta_to_proto, job_from_proto, job_to_proto
from lrctl.v1 import lrctl_pb2
from worker._config import WorkerError
from worker._link import Held

__all__ = ["Plan", "RankGroup", "decode_held", "encode_held", "handshake"]

_FULL, _DELTA, _ERROR = b"F", b"D", b"E"
_I64_MAX = torch.iinfo(torch.int64).max


class RankGroup:
    """The gloo side group of a ``torch.distributed`` run (gloo even when training uses NCCL).

    Every rank must create it, in the same order relative to its other collectives (each
    rank builds its scheduler at the same point of its script).
    """

    def __init__(self) -> None:
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.group: Any = dist.new_group(backend="gloo")
        self._header = torch.zeros(2, dtype=torch.int64)
        self._bcast = dist.BroadcastOptions()
        self._bcast.rootRank = 0
        self._bcast.rootTensor = 0
        self._min = dist.AllreduceOptions()
        self._min.reduceOp = dist.ReduceOp.MIN  # type: ignore[assignment]

    # The process group's own methods: dist.all_reduce/broadcast add ~50 µs of Python
    # bookkeeping per call, which the per-step exchange does not need.

    def all_reduce_min(self, tensor: torch.Tensor) -> Any:
        """Launch an element-wise MIN all-reduce of ``tensor`` in place; return its work."""
        return self.group.allreduce([tensor], self._min)

    def broadcast_bytes(self, data: bytes | None, length: int) -> bytes:
        """Blocking: rank 0 sends ``data`` (``length`` bytes); every rank returns it."""
        if length == 0:
            return b""
        if self.rank == 0:
            if data is None or len(data) != length:
                raise RuntimeError(
                    f"rank 0 announced {length} bytes but holds {0 if data is None else len(data)}"
                )
            buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        else:
            buffer = torch.empty(length, dtype=torch.uint8)
        self.group.broadcast([buffer], self._bcast).wait()
        return data if data is not None else buffer.numpy().tobytes()

    def broadcast_message(self, data: bytes | None) -> bytes:
        """Blocking: rank 0's ``data`` to every rank, its length first (two broadcasts)."""
        header = self._header
        header[0] = 0 if data is None else len(data)
        self.group.broadcast([header], self._bcast).wait()
        return self.broadcast_bytes(data, int(header[0]))

    def lowest_failing_rank(self, failed: bool) -> int | None:
        """Blocking: the lowest rank that passed ``failed=True``, or None if none did."""
        flag = torch.tensor([self.rank if failed else _I64_MAX], dtype=torch.int64)
        self.group.allreduce([flag], self._min).wait()
        low = int(flag[0])
        return None if low == _I64_MAX else low

    def all_gather_floats(self, values: Sequence[float]) -> list[list[float]]:
        """Blocking: every rank's ``values`` (same length on every rank), by rank."""
        mine = torch.tensor(list(values), dtype=torch.float64)
        out = [torch.empty_like(mine) for _ in range(self.world_size)]
        self.group.allgather([out], [mine]).wait()
        return [t.tolist() for t in out]

    def close(self) -> None:
        """Release the side group (the default group is the user's)."""
        if self.group is not None and dist.is_initialized():
            dist.destroy_process_group(self.group)
        self.group = None


@dataclass(frozen=True)
class Plan:
    """What rank 0 decides for every rank at construction (sent in the handshake)."""

    agree_every: int
    """Exchange every this many steps; 0: paced by rank 0 (:class:`worker._agreement.Pacer`)."""
    check_every: int
    """Compare the ranks' LR checksums at most every this many steps; 0: never."""
    first_call: int = 1
    """The ``step()`` call of the first exchange."""
    second_call: int = 2
    """The ``step()`` call of the second one (later ones are announced by the exchanges)."""


@dataclass(frozen=True)
class _Facts:
    """What every rank must share with rank 0 to follow its job."""

    job: str
    spec: str
    num_groups: int
    base_lrs: tuple[float, ...]


def handshake(
    group: RankGroup,
    attach: Callable[[], Held] | None,
    *,
    job: str,
    spec: str,
    base_lrs: Sequence[float],
    plan: Plan,
) -> tuple[Held, Plan]:
    """Blocking, on every rank: rank 0 attaches and sends the job; all check they match.

    Args:
        group: The side group.
        attach: Rank 0 only: attaches to the controller and returns what it holds.
        job, spec, base_lrs: This rank's job id, canonical spec text and base LRs.
        plan: Rank 0's plan; ignored elsewhere (rank 0's is returned on every rank).

    Returns:
        The job held at construction, and rank 0's plan.

    Raises:
        WorkerError: rank 0 could not attach (on every rank, with rank 0's reason), or a
            rank built another scheduler than rank 0 (on every rank, naming the rank).
    """
    mine = _Facts(job, spec, len(base_lrs), tuple(float(b) for b in base_lrs))
    if group.rank == 0:
        if attach is None:
            raise ValueError("rank 0 needs attach()")
        try:
            held = attach()
        except BaseException as exc:
            # Tell the other ranks before raising: they are already waiting for this.
            group.broadcast_message(_ERROR + f"{type(exc).__name__}: {exc}".encode())
            raise
        header = {
            "job": job,
            "spec": spec,
            "base_lrs": list(mine.base_lrs),
            "agree_every": plan.agree_every,
            "check_every": plan.check_every,
            "first_call": plan.first_call,
            "second_call": plan.second_call,
        }
        group.broadcast_message(
            _FULL + json.dumps(header).encode() + b"\0" + encode_held(held, None)[1:]
        )
        theirs, problem = mine, None
    else:
        data = group.broadcast_message(None)
        if data[:1] == _ERROR:
            raise WorkerError(
                f"rank 0 could not attach to job {job!r}, so rank "
                f"{group.rank} cannot follow it: {data[1:].decode(errors='replace')}"
            )
        text, _, body = data[1:].partition(b"\0")
        header = json.loads(text)
        theirs = _Facts(
            header["job"], header["spec"], len(header["base_lrs"]), tuple(header["base_lrs"])
        )
        plan = Plan(
            int(header["agree_every"]),
            int(header["check_every"]),
            int(header["first_call"]),
            int(header["second_call"]),
        )
        held = decode_held(_FULL + body, None)
        problem = _mismatch(mine, theirs)
    failing = group.lowest_failing_rank(problem is not None)
    if problem is not None:
        raise WorkerError(f"rank {group.rank} cannot follow rank 0's job: {problem}")
    if failing is not None:
        raise WorkerError(
            f"rank {failing} built another scheduler than rank 0 for job "
            f"{job!r} (see rank {failing}'s error); no rank trains"
        )
    return held, plan


def _mismatch(mine: _Facts, rank0: _Facts) -> str | None:
    if mine.job != rank0.job:
        return f"job id {mine.job!r} here, {rank0.job!r} on rank 0 (set LRCTL_JOB alike)"
    if mine.spec != rank0.spec:
        return f"schedule {mine.spec} here, {rank0.spec} on rank 0"
    if mine.base_lrs != rank0.base_lrs:
        return (
            f"base LRs (initial_lr of {mine.num_groups} param groups) {list(mine.base_lrs)} "
            f"here, {list(rank0.base_lrs)} on rank 0"
        )
    return None


def encode_held(held: Held, base: Held | None) -> bytes:
    """Encode ``held.job`` for ranks that hold ``base`` (None: nothing yet).

    A later version of the same incarnation travels as a delta (the new events only); a
    first state or a recreated job in full.
    """
    job = held.job
    if (
        base is not None
        and job.created_version == base.job.created_version
        and job.version >= base.version
    ):
        return _DELTA + job_delta_to_proto(job, base.version).SerializeToString()
    return _FULL + job_to_proto(job).SerializeToString()


def decode_held(data: bytes, base: Held | None) -> Held:
    """Decode :func:`encode_held`'s bytes on a rank that holds ``base``."""
    kind, body = data[:1], data[1:]
    msg = lrctl_pb2.Job.FromString(body)
    if kind == _DELTA:
        if base is None:
            raise WorkerError("received a job delta without holding the job")
        return Held(job_delta_from_proto(msg, base.job), previous=base.previous)
    if kind != _FULL:
        raise WorkerError(f"unknown job encoding {kind!r} from rank 0")
    job = job_from_proto(msg)
    if base is not None and job.created_version > base.job.created_version:
        return Held(job, previous=base)  # a recreation: keep what came before
    return Held(job, previous=None if base is None else base.previous)
