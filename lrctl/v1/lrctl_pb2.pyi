import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_FINISHED: _ClassVar[JobState]

class OverrideOp(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OVERRIDE_OP_UNSPECIFIED: _ClassVar[OverrideOp]
    OVERRIDE_OP_SCALE: _ClassVar[OverrideOp]
    OVERRIDE_OP_SET: _ClassVar[OverrideOp]
    OVERRIDE_OP_CLEAR: _ClassVar[OverrideOp]
    OVERRIDE_OP_REPLACE_SCHEDULE: _ClassVar[OverrideOp]
    OVERRIDE_OP_PLATEAU_REDUCE: _ClassVar[OverrideOp]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_FINISHED: JobState
OVERRIDE_OP_UNSPECIFIED: OverrideOp
OVERRIDE_OP_SCALE: OverrideOp
OVERRIDE_OP_SET: OverrideOp
OVERRIDE_OP_CLEAR: OverrideOp
OVERRIDE_OP_REPLACE_SCHEDULE: OverrideOp
OVERRIDE_OP_PLATEAU_REDUCE: OverrideOp

class OverrideEvent(_message.Message):
    __slots__ = ("version", "op", "value", "schedule", "param_group", "effective_step", "actor", "reason", "created_at", "applied_at")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    PARAM_GROUP_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_STEP_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    APPLIED_AT_FIELD_NUMBER: _ClassVar[int]
    version: int
    op: OverrideOp
    value: float
    schedule: str
    param_group: int
    effective_step: int
    actor: str
    reason: str
    created_at: _timestamp_pb2.Timestamp
    applied_at: _timestamp_pb2.Timestamp
    def __init__(self, version: _Optional[int] = ..., op: _Optional[_Union[OverrideOp, str]] = ..., value: _Optional[float] = ..., schedule: _Optional[str] = ..., param_group: _Optional[int] = ..., effective_step: _Optional[int] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., applied_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "schedule", "base_lrs", "version", "step", "lrs", "state", "events", "created_at", "updated_at", "verbose", "workers", "created_version", "epoch", "world_size", "watch_streams", "applied_version")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    BASE_LRS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    LRS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    VERBOSE_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    CREATED_VERSION_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    WATCH_STREAMS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_VERSION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    schedule: str
    base_lrs: _containers.RepeatedScalarFieldContainer[float]
    version: int
    step: int
    lrs: _containers.RepeatedScalarFieldContainer[float]
    state: JobState
    events: _containers.RepeatedCompositeFieldContainer[OverrideEvent]
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    verbose: bool
    workers: int
    created_version: int
    epoch: int
    world_size: int
    watch_streams: int
    applied_version: int
    def __init__(self, job_id: _Optional[str] = ..., schedule: _Optional[str] = ..., base_lrs: _Optional[_Iterable[float]] = ..., version: _Optional[int] = ..., step: _Optional[int] = ..., lrs: _Optional[_Iterable[float]] = ..., state: _Optional[_Union[JobState, str]] = ..., events: _Optional[_Iterable[_Union[OverrideEvent, _Mapping]]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., verbose: _Optional[bool] = ..., workers: _Optional[int] = ..., created_version: _Optional[int] = ..., epoch: _Optional[int] = ..., world_size: _Optional[int] = ..., watch_streams: _Optional[int] = ..., applied_version: _Optional[int] = ...) -> None: ...

class CreateJobRequest(_message.Message):
    __slots__ = ("job_id", "schedule", "base_lrs", "replace", "verbose", "attach", "world_size")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    BASE_LRS_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    VERBOSE_FIELD_NUMBER: _ClassVar[int]
    ATTACH_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    schedule: str
    base_lrs: _containers.RepeatedScalarFieldContainer[float]
    replace: bool
    verbose: bool
    attach: bool
    world_size: int
    def __init__(self, job_id: _Optional[str] = ..., schedule: _Optional[str] = ..., base_lrs: _Optional[_Iterable[float]] = ..., replace: _Optional[bool] = ..., verbose: _Optional[bool] = ..., attach: _Optional[bool] = ..., world_size: _Optional[int] = ...) -> None: ...

class CreateJobResponse(_message.Message):
    __slots__ = ("job", "created", "epoch")
    JOB_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    job: Job
    created: bool
    epoch: int
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ..., created: _Optional[bool] = ..., epoch: _Optional[int] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "include_finished")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FINISHED_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    include_finished: bool
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., include_finished: _Optional[bool] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class FinishJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class OverrideRequest(_message.Message):
    __slots__ = ("job_id", "op", "value", "schedule", "param_group", "actor", "reason", "expected_version")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    PARAM_GROUP_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    op: OverrideOp
    value: float
    schedule: str
    param_group: int
    actor: str
    reason: str
    expected_version: int
    def __init__(self, job_id: _Optional[str] = ..., op: _Optional[_Union[OverrideOp, str]] = ..., value: _Optional[float] = ..., schedule: _Optional[str] = ..., param_group: _Optional[int] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ..., expected_version: _Optional[int] = ...) -> None: ...

class OverrideResponse(_message.Message):
    __slots__ = ("event", "job")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    event: OverrideEvent
    job: Job
    def __init__(self, event: _Optional[_Union[OverrideEvent, _Mapping]] = ..., job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class HistoryRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class HistoryResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[OverrideEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[OverrideEvent, _Mapping]]] = ...) -> None: ...

class PreviewRequest(_message.Message):
    __slots__ = ("schedule", "base_lrs", "steps")
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    BASE_LRS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    schedule: str
    base_lrs: _containers.RepeatedScalarFieldContainer[float]
    steps: int
    def __init__(self, schedule: _Optional[str] = ..., base_lrs: _Optional[_Iterable[float]] = ..., steps: _Optional[int] = ...) -> None: ...

class LRRow(_message.Message):
    __slots__ = ("lr",)
    LR_FIELD_NUMBER: _ClassVar[int]
    lr: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, lr: _Optional[_Iterable[float]] = ...) -> None: ...

class PreviewResponse(_message.Message):
    __slots__ = ("rows", "schedule")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[LRRow]
    schedule: str
    def __init__(self, rows: _Optional[_Iterable[_Union[LRRow, _Mapping]]] = ..., schedule: _Optional[str] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("job_id", "from_version", "worker_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    from_version: int
    worker_id: str
    def __init__(self, job_id: _Optional[str] = ..., from_version: _Optional[int] = ..., worker_id: _Optional[str] = ...) -> None: ...

class WatchResponse(_message.Message):
    __slots__ = ("kind", "version", "job", "event")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[WatchResponse.Kind]
        KIND_SNAPSHOT: _ClassVar[WatchResponse.Kind]
        KIND_EVENT: _ClassVar[WatchResponse.Kind]
        KIND_RESYNC: _ClassVar[WatchResponse.Kind]
        KIND_HEARTBEAT: _ClassVar[WatchResponse.Kind]
        KIND_FINISHED: _ClassVar[WatchResponse.Kind]
    KIND_UNSPECIFIED: WatchResponse.Kind
    KIND_SNAPSHOT: WatchResponse.Kind
    KIND_EVENT: WatchResponse.Kind
    KIND_RESYNC: WatchResponse.Kind
    KIND_HEARTBEAT: WatchResponse.Kind
    KIND_FINISHED: WatchResponse.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    kind: WatchResponse.Kind
    version: int
    job: Job
    event: OverrideEvent
    def __init__(self, kind: _Optional[_Union[WatchResponse.Kind, str]] = ..., version: _Optional[int] = ..., job: _Optional[_Union[Job, _Mapping]] = ..., event: _Optional[_Union[OverrideEvent, _Mapping]] = ...) -> None: ...

class AppliedVersion(_message.Message):
    __slots__ = ("version", "effective_step")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_STEP_FIELD_NUMBER: _ClassVar[int]
    version: int
    effective_step: int
    def __init__(self, version: _Optional[int] = ..., effective_step: _Optional[int] = ...) -> None: ...

class PlateauMetric(_message.Message):
    __slots__ = ("step", "value")
    STEP_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    step: int
    value: float
    def __init__(self, step: _Optional[int] = ..., value: _Optional[float] = ...) -> None: ...

class Divergence(_message.Message):
    __slots__ = ("step", "version", "lr_checksums", "detail")
    STEP_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LR_CHECKSUMS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    step: int
    version: int
    lr_checksums: _containers.RepeatedScalarFieldContainer[float]
    detail: str
    def __init__(self, step: _Optional[int] = ..., version: _Optional[int] = ..., lr_checksums: _Optional[_Iterable[float]] = ..., detail: _Optional[str] = ...) -> None: ...

class ReportRequest(_message.Message):
    __slots__ = ("job_id", "rank", "step", "applied_version", "lrs", "applied", "plateau_metrics", "final", "epoch", "world_size", "divergences")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    APPLIED_VERSION_FIELD_NUMBER: _ClassVar[int]
    LRS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    PLATEAU_METRICS_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    DIVERGENCES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    rank: int
    step: int
    applied_version: int
    lrs: _containers.RepeatedScalarFieldContainer[float]
    applied: _containers.RepeatedCompositeFieldContainer[AppliedVersion]
    plateau_metrics: _containers.RepeatedCompositeFieldContainer[PlateauMetric]
    final: bool
    epoch: int
    world_size: int
    divergences: _containers.RepeatedCompositeFieldContainer[Divergence]
    def __init__(self, job_id: _Optional[str] = ..., rank: _Optional[int] = ..., step: _Optional[int] = ..., applied_version: _Optional[int] = ..., lrs: _Optional[_Iterable[float]] = ..., applied: _Optional[_Iterable[_Union[AppliedVersion, _Mapping]]] = ..., plateau_metrics: _Optional[_Iterable[_Union[PlateauMetric, _Mapping]]] = ..., final: _Optional[bool] = ..., epoch: _Optional[int] = ..., world_size: _Optional[int] = ..., divergences: _Optional[_Iterable[_Union[Divergence, _Mapping]]] = ...) -> None: ...

class ReportResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...
