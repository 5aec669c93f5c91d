import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Optimizer(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPTIMIZER_UNSPECIFIED: _ClassVar[Optimizer]
    OPTIMIZER_LBFGS: _ClassVar[Optimizer]
    OPTIMIZER_ADAM: _ClassVar[Optimizer]

class Init(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INIT_UNSPECIFIED: _ClassVar[Init]
    INIT_CONTENT: _ClassVar[Init]
    INIT_NOISE: _ClassVar[Init]
    INIT_STYLE: _ClassVar[Init]
    INIT_IMAGE: _ClassVar[Init]

class Pooling(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POOLING_UNSPECIFIED: _ClassVar[Pooling]
    POOLING_MAX: _ClassVar[Pooling]
    POOLING_AVERAGE: _ClassVar[Pooling]

class ColorPreservation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COLOR_PRESERVATION_UNSPECIFIED: _ClassVar[ColorPreservation]
    COLOR_PRESERVATION_NONE: _ClassVar[ColorPreservation]
    COLOR_PRESERVATION_LUMINANCE: _ClassVar[ColorPreservation]
    COLOR_PRESERVATION_HISTOGRAM: _ClassVar[ColorPreservation]

class ImageFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_FORMAT_UNSPECIFIED: _ClassVar[ImageFormat]
    IMAGE_FORMAT_PNG: _ClassVar[ImageFormat]
    IMAGE_FORMAT_JPEG: _ClassVar[ImageFormat]
    IMAGE_FORMAT_WEBP: _ClassVar[ImageFormat]
    IMAGE_FORMAT_PNG16: _ClassVar[ImageFormat]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
OPTIMIZER_UNSPECIFIED: Optimizer
OPTIMIZER_LBFGS: Optimizer
OPTIMIZER_ADAM: Optimizer
INIT_UNSPECIFIED: Init
INIT_CONTENT: Init
INIT_NOISE: Init
INIT_STYLE: Init
INIT_IMAGE: Init
POOLING_UNSPECIFIED: Pooling
POOLING_MAX: Pooling
POOLING_AVERAGE: Pooling
COLOR_PRESERVATION_UNSPECIFIED: ColorPreservation
COLOR_PRESERVATION_NONE: ColorPreservation
COLOR_PRESERVATION_LUMINANCE: ColorPreservation
COLOR_PRESERVATION_HISTOGRAM: ColorPreservation
IMAGE_FORMAT_UNSPECIFIED: ImageFormat
IMAGE_FORMAT_PNG: ImageFormat
IMAGE_FORMAT_JPEG: ImageFormat
IMAGE_FORMAT_WEBP: ImageFormat
IMAGE_FORMAT_PNG16: ImageFormat
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState

class Image(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class StyleImage(_message.Message):
    __slots__ = ("image", "weight", "mask")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    image: Image
    weight: float
    mask: Image
    def __init__(self, image: _Optional[_Union[Image, _Mapping]] = ..., weight: _Optional[float] = ..., mask: _Optional[_Union[Image, _Mapping]] = ...) -> None: ...

class TransferOptions(_message.Message):
    __slots__ = ("iterations", "max_size", "content_weight", "style_weight", "tv_weight", "content_layers", "style_layers", "style_layer_weights", "optimizer", "learning_rate", "init", "seed", "output_format", "output_quality", "preview_every", "preview_max_size", "backend", "device", "max_duration_seconds", "pooling", "color_preservation", "style_scale", "scale_iterations", "scale_factor", "tile_size", "tile_overlap")
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_SIZE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    STYLE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    TV_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    CONTENT_LAYERS_FIELD_NUMBER: _ClassVar[int]
    STYLE_LAYERS_FIELD_NUMBER: _ClassVar[int]
    STYLE_LAYER_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    INIT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_QUALITY_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_EVERY_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_MAX_SIZE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MAX_DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    COLOR_PRESERVATION_FIELD_NUMBER: _ClassVar[int]
    STYLE_SCALE_FIELD_NUMBER: _ClassVar[int]
    SCALE_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    SCALE_FACTOR_FIELD_NUMBER: _ClassVar[int]
    TILE_SIZE_FIELD_NUMBER: _ClassVar[int]
    TILE_OVERLAP_FIELD_NUMBER: _ClassVar[int]
    iterations: int
    max_size: int
    content_weight: float
    style_weight: float
    tv_weight: float
    content_layers: _containers.RepeatedScalarFieldContainer[str]
    style_layers: _containers.RepeatedScalarFieldContainer[str]
    style_layer_weights: _containers.RepeatedScalarFieldContainer[float]
    optimizer: Optimizer
    learning_rate: float
    init: Init
    seed: int
    output_format: ImageFormat
    output_quality: int
    preview_every: int
    preview_max_size: int
    backend: str
    device: str
    max_duration_seconds: float
    pooling: Pooling
    color_preservation: ColorPreservation
    style_scale: float
    scale_iterations: _containers.RepeatedScalarFieldContainer[int]
    scale_factor: float
    tile_size: int
    tile_overlap: int
    def __init__(self, iterations: _Optional[int] = ..., max_size: _Optional[int] = ..., content_weight: _Optional[float] = ..., style_weight: _Optional[float] = ..., tv_weight: _Optional[float] = ..., content_layers: _Optional[_Iterable[str]] = ..., style_layers: _Optional[_Iterable[str]] = ..., style_layer_weights: _Optional[_Iterable[float]] = ..., optimizer: _Optional[_Union[Optimizer, str]] = ..., learning_rate: _Optional[float] = ..., init: _Optional[_Union[Init, str]] = ..., seed: _Optional[int] = ..., output_format: _Optional[_Union[ImageFormat, str]] = ..., output_quality: _Optional[int] = ..., preview_every: _Optional[int] = ..., preview_max_size: _Optional[int] = ..., backend: _Optional[str] = ..., device: _Optional[str] = ..., max_duration_seconds: _Optional[float] = ..., pooling: _Optional[_Union[Pooling, str]] = ..., color_preservation: _Optional[_Union[ColorPreservation, str]] = ..., style_scale: _Optional[float] = ..., scale_iterations: _Optional[_Iterable[int]] = ..., scale_factor: _Optional[float] = ..., tile_size: _Optional[int] = ..., tile_overlap: _Optional[int] = ...) -> None: ...

class TransferRequest(_message.Message):
    __slots__ = ("content", "styles", "options", "idempotency_key", "init_image")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    STYLES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    INIT_IMAGE_FIELD_NUMBER: _ClassVar[int]
    content: Image
    styles: _containers.RepeatedCompositeFieldContainer[StyleImage]
    options: TransferOptions
    idempotency_key: str
    init_image: Image
    def __init__(self, content: _Optional[_Union[Image, _Mapping]] = ..., styles: _Optional[_Iterable[_Union[StyleImage, _Mapping]]] = ..., options: _Optional[_Union[TransferOptions, _Mapping]] = ..., idempotency_key: _Optional[str] = ..., init_image: _Optional[_Union[Image, _Mapping]] = ...) -> None: ...

class Losses(_message.Message):
    __slots__ = ("content", "style", "tv", "total")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    STYLE_FIELD_NUMBER: _ClassVar[int]
    TV_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    content: float
    style: float
    tv: float
    total: float
    def __init__(self, content: _Optional[float] = ..., style: _Optional[float] = ..., tv: _Optional[float] = ..., total: _Optional[float] = ...) -> None: ...

class EncodedImage(_message.Message):
    __slots__ = ("data", "format", "width", "height")
    DATA_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    format: ImageFormat
    width: int
    height: int
    def __init__(self, data: _Optional[bytes] = ..., format: _Optional[_Union[ImageFormat, str]] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class Accepted(_message.Message):
    __slots__ = ("job_id", "backend", "device", "options", "width", "height")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    backend: str
    device: str
    options: TransferOptions
    width: int
    height: int
    def __init__(self, job_id: _Optional[str] = ..., backend: _Optional[str] = ..., device: _Optional[str] = ..., options: _Optional[_Union[TransferOptions, _Mapping]] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("iteration", "total_iterations", "losses", "elapsed_seconds", "scale", "scale_count", "tile", "tile_count")
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    LOSSES_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    SCALE_COUNT_FIELD_NUMBER: _ClassVar[int]
    TILE_FIELD_NUMBER: _ClassVar[int]
    TILE_COUNT_FIELD_NUMBER: _ClassVar[int]
    iteration: int
    total_iterations: int
    losses: Losses
    elapsed_seconds: float
    scale: int
    scale_count: int
    tile: int
    tile_count: int
    def __init__(self, iteration: _Optional[int] = ..., total_iterations: _Optional[int] = ..., losses: _Optional[_Union[Losses, _Mapping]] = ..., elapsed_seconds: _Optional[float] = ..., scale: _Optional[int] = ..., scale_count: _Optional[int] = ..., tile: _Optional[int] = ..., tile_count: _Optional[int] = ...) -> None: ...

class Preview(_message.Message):
    __slots__ = ("iteration", "image")
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    iteration: int
    image: EncodedImage
    def __init__(self, iteration: _Optional[int] = ..., image: _Optional[_Union[EncodedImage, _Mapping]] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("queued_seconds", "setup_seconds", "optimize_seconds", "encode_seconds", "total_seconds", "iteration_mean_ms")
    QUEUED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SETUP_SECONDS_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ENCODE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ITERATION_MEAN_MS_FIELD_NUMBER: _ClassVar[int]
    queued_seconds: float
    setup_seconds: float
    optimize_seconds: float
    encode_seconds: float
    total_seconds: float
    iteration_mean_ms: float
    def __init__(self, queued_seconds: _Optional[float] = ..., setup_seconds: _Optional[float] = ..., optimize_seconds: _Optional[float] = ..., encode_seconds: _Optional[float] = ..., total_seconds: _Optional[float] = ..., iteration_mean_ms: _Optional[float] = ...) -> None: ...

class Result(_message.Message):
    __slots__ = ("image", "losses", "timings", "iterations")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    LOSSES_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    image: EncodedImage
    losses: Losses
    timings: Timings
    iterations: int
    def __init__(self, image: _Optional[_Union[EncodedImage, _Mapping]] = ..., losses: _Optional[_Union[Losses, _Mapping]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., iterations: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Resumed(_message.Message):
    __slots__ = ("from_iteration", "attempt", "replica", "reason")
    FROM_ITERATION_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    from_iteration: int
    attempt: int
    replica: str
    reason: str
    def __init__(self, from_iteration: _Optional[int] = ..., attempt: _Optional[int] = ..., replica: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class TransferEvent(_message.Message):
    __slots__ = ("accepted", "progress", "preview", "result", "heartbeat", "resumed", "sequence")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    accepted: Accepted
    progress: Progress
    preview: Preview
    result: Result
    heartbeat: Heartbeat
    resumed: Resumed
    sequence: int
    def __init__(self, accepted: _Optional[_Union[Accepted, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., preview: _Optional[_Union[Preview, _Mapping]] = ..., result: _Optional[_Union[Result, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., resumed: _Optional[_Union[Resumed, _Mapping]] = ..., sequence: _Optional[int] = ...) -> None: ...

class JobError(_message.Message):
    __slots__ = ("code", "message", "reason")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    reason: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("name", "state", "queue_position", "backend", "device", "options", "width", "height", "create_time", "start_time", "end_time", "iteration", "losses", "error", "result", "last_sequence", "idempotency_key")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_POSITION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    LOSSES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: JobState
    queue_position: int
    backend: str
    device: str
    options: TransferOptions
    width: int
    height: int
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    iteration: int
    losses: Losses
    error: JobError
    result: Result
    last_sequence: int
    idempotency_key: str
    def __init__(self, name: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., queue_position: _Optional[int] = ..., backend: _Optional[str] = ..., device: _Optional[str] = ..., options: _Optional[_Union[TransferOptions, _Mapping]] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., iteration: _Optional[int] = ..., losses: _Optional[_Union[Losses, _Mapping]] = ..., error: _Optional[_Union[JobError, _Mapping]] = ..., result: _Optional[_Union[Result, _Mapping]] = ..., last_sequence: _Optional[int] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class CreateJobRequest(_message.Message):
    __slots__ = ("content", "styles", "options", "idempotency_key", "init_image")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    STYLES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    INIT_IMAGE_FIELD_NUMBER: _ClassVar[int]
    content: Image
    styles: _containers.RepeatedCompositeFieldContainer[StyleImage]
    options: TransferOptions
    idempotency_key: str
    init_image: Image
    def __init__(self, content: _Optional[_Union[Image, _Mapping]] = ..., styles: _Optional[_Iterable[_Union[StyleImage, _Mapping]]] = ..., options: _Optional[_Union[TransferOptions, _Mapping]] = ..., idempotency_key: _Optional[str] = ..., init_image: _Optional[_Union[Image, _Mapping]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("state", "page_size", "page_token")
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    state: JobState
    page_size: int
    page_token: str
    def __init__(self, state: _Optional[_Union[JobState, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("name", "after_sequence")
    NAME_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    after_sequence: int
    def __init__(self, name: _Optional[str] = ..., after_sequence: _Optional[int] = ...) -> None: ...

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BackendInfo(_message.Message):
    __slots__ = ("name", "available", "unavailable_reason", "devices", "framework_version", "precision", "requested_precision", "precision_reason", "capabilities")
    NAME_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    UNAVAILABLE_REASON_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    FRAMEWORK_VERSION_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_PRECISION_FIELD_NUMBER: _ClassVar[int]
    PRECISION_REASON_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    name: str
    available: bool
    unavailable_reason: str
    devices: _containers.RepeatedScalarFieldContainer[str]
    framework_version: str
    precision: str
    requested_precision: str
    precision_reason: str
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., available: _Optional[bool] = ..., unavailable_reason: _Optional[str] = ..., devices: _Optional[_Iterable[str]] = ..., framework_version: _Optional[str] = ..., precision: _Optional[str] = ..., requested_precision: _Optional[str] = ..., precision_reason: _Optional[str] = ..., capabilities: _Optional[_Iterable[str]] = ...) -> None: ...

class WeightsInfo(_message.Message):
    __slots__ = ("source", "source_sha256", "sha256", "random", "channel_order", "input_range", "mean", "std", "quantization", "container_sha256")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SHA256_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    RANDOM_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_ORDER_FIELD_NUMBER: _ClassVar[int]
    INPUT_RANGE_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_SHA256_FIELD_NUMBER: _ClassVar[int]
    source: str
    source_sha256: str
    sha256: str
    random: bool
    channel_order: str
    input_range: float
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    quantization: str
    container_sha256: str
    def __init__(self, source: _Optional[str] = ..., source_sha256: _Optional[str] = ..., sha256: _Optional[str] = ..., random: _Optional[bool] = ..., channel_order: _Optional[str] = ..., input_range: _Optional[float] = ..., mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ..., quantization: _Optional[str] = ..., container_sha256: _Optional[str] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_size", "max_iterations", "max_styles", "max_input_pixels", "max_receive_message_bytes", "queue_size", "job_retention_seconds", "heartbeat_seconds", "max_streams", "max_streams_per_caller", "max_health_watches", "max_health_watches_per_peer", "job_store", "memory_budget_bytes", "rate_limit_calls", "rate_limit_window_seconds", "max_queued_per_principal")
    MAX_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_STYLES_FIELD_NUMBER: _ClassVar[int]
    MAX_INPUT_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_RECEIVE_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    QUEUE_SIZE_FIELD_NUMBER: _ClassVar[int]
    JOB_RETENTION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_STREAMS_FIELD_NUMBER: _ClassVar[int]
    MAX_STREAMS_PER_CALLER_FIELD_NUMBER: _ClassVar[int]
    MAX_HEALTH_WATCHES_FIELD_NUMBER: _ClassVar[int]
    MAX_HEALTH_WATCHES_PER_PEER_FIELD_NUMBER: _ClassVar[int]
    JOB_STORE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BUDGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_CALLS_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUED_PER_PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    max_size: int
    max_iterations: int
    max_styles: int
    max_input_pixels: int
    max_receive_message_bytes: int
    queue_size: int
    job_retention_seconds: float
    heartbeat_seconds: float
    max_streams: int
    max_streams_per_caller: int
    max_health_watches: int
    max_health_watches_per_peer: int
    job_store: str
    memory_budget_bytes: int
    rate_limit_calls: int
    rate_limit_window_seconds: int
    max_queued_per_principal: int
    def __init__(self, max_size: _Optional[int] = ..., max_iterations: _Optional[int] = ..., max_styles: _Optional[int] = ..., max_input_pixels: _Optional[int] = ..., max_receive_message_bytes: _Optional[int] = ..., queue_size: _Optional[int] = ..., job_retention_seconds: _Optional[float] = ..., heartbeat_seconds: _Optional[float] = ..., max_streams: _Optional[int] = ..., max_streams_per_caller: _Optional[int] = ..., max_health_watches: _Optional[int] = ..., max_health_watches_per_peer: _Optional[int] = ..., job_store: _Optional[str] = ..., memory_budget_bytes: _Optional[int] = ..., rate_limit_calls: _Optional[int] = ..., rate_limit_window_seconds: _Optional[int] = ..., max_queued_per_principal: _Optional[int] = ...) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("version", "backends", "default_backend", "default_device", "weights", "limits", "defaults", "layers")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_DEVICE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    DEFAULTS_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    version: str
    backends: _containers.RepeatedCompositeFieldContainer[BackendInfo]
    default_backend: str
    default_device: str
    weights: WeightsInfo
    limits: Limits
    defaults: TransferOptions
    layers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[str] = ..., backends: _Optional[_Iterable[_Union[BackendInfo, _Mapping]]] = ..., default_backend: _Optional[str] = ..., default_device: _Optional[str] = ..., weights: _Optional[_Union[WeightsInfo, _Mapping]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., defaults: _Optional[_Union[TransferOptions, _Mapping]] = ..., layers: _Optional[_Iterable[str]] = ...) -> None: ...
