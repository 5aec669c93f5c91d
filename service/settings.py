"""Server settings: defaults here, overridden by STYLETRANSFER_* environment variables and flags."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _names(value: object) -> object:
    """Accept "pytorch,tensorflow" from flags and environment variables as well as lists."""
    if isinstance(value, str):
        return tuple(name.strip() for name in value.split(",") if name.strip())
    return value


class Settings(BaseSettings):
    """Everything the server can be configured with."""

    # Each field's docstring is its description: the help of its flag (service/__main__.py).
    model_config = SettingsConfigDict(env_prefix="STYLETRANSFER_", frozen=True, use_attribute_docstrings=True)

    host: str = "127.0.0.1"
    """Address to listen on; 0.0.0.0 or [::] to accept connections from other hosts."""
    port: int = Field(default=50051, ge=0, le=65535)
    """gRPC port; 0 picks a free one (the chosen port is logged)."""
    backend: str = "pytorch"
    """Default backend for requests that name none."""
    backends: Annotated[tuple[str, ...], NoDecode, BeforeValidator(_names)] = ("pytorch",)
    """Backends to enable, comma-separated (pytorch, tensorflow). Each is imported at start-up."""
    device: str = "auto"
    """Default device: auto (CUDA when present), cpu, cuda or cuda:N."""
    weights: str | None = None
    """Canonical weights file, a source name whose cached file to load (`caffe`, `caffe-q8`,
    `torchvision`), or random:SEED for smoke tests. Unset: the cached default (`caffe`, else
    `caffe-q8`)."""
    max_size: int = Field(default=2048, ge=16)
    """Largest output long side a request may ask for."""
    max_iterations: int = Field(default=10_000, ge=1)
    """Most iterations a request may ask for."""
    max_styles: int = Field(default=8, ge=1)
    """Most style images in one request."""
    max_input_pixels: int = Field(default=40_000_000, ge=1)
    """Most pixels an input image may declare in its header; checked before decoding."""
    max_message_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """Largest request or response message, in bytes."""
    queue_size: int = Field(default=16, ge=1)
    """Jobs that may wait per device before requests are refused with RESOURCE_EXHAUSTED."""
    pytorch_precision: Literal["float32", "bfloat16"] = "float32"
    """Arithmetic of the PyTorch backend's network: bfloat16 autocasts the VGG19 convolutions
    (1.5x faster per iteration on the development CPU, which has AVX512-BF16; recent GPUs run
    bfloat16 too; losses and Gram matrices stay float32) and runs the last 10 % of each stage's
    iterations in float32, which brings the final loss back to float32's (see the README's
    "Speed"). Where the CPU (or GPU) has no bfloat16 kernels the backend runs float32, logs a
    `precision_fallback` warning and says so in GetServerInfo; jobs never fail for it."""
    allocator: Literal["tcmalloc", "system"] = "tcmalloc"
    """The memory allocator jobs run on: "tcmalloc" (gperftools, Debian's libtcmalloc-minimal4)
    starts the server again with it preloaded, which reuses freed activations where glibc faults
    them in afresh (a 512 px job 1.2x faster an iteration at a lower peak, see the README's
    "Speed"); where the library is missing the server runs on glibc and logs
    `allocator_fallback`. "system" keeps the C library's allocator."""
    pytorch_convolution: Literal["auto", "plain"] = "auto"
    """How the PyTorch backend runs VGG19's 3x3 convolutions: "auto" takes Winograd or the direct
    convolution with prepacked kernels per layer, as a fixed table gives for the CPU's class and
    the input's shape (backends/pytorch/kernels/; CUDA keeps cuDNN's choice); "plain" always runs
    PyTorch's own convolution, for comparison or to rule the kernels out when chasing a problem."""
    style_cache_mib: int = Field(default=128, ge=0)
    """Memory each backend may keep for the Gram matrices of recent style images, so that jobs
    with a style seen before skip computing its targets (0 turns the cache off). One style at the
    default layers takes 2.3 MiB whatever its size."""
    memory_budget_mib: int | None = Field(default=None, ge=0)
    """Memory the jobs of this server may hold at once: each job's estimated peak, and the decoded
    images of queued ones (see service/admission.py). A job that could never fit is refused with
    RESOURCE_EXHAUSTED reason MEMORY_BUDGET saying what to change; one that does not fit now, with
    RetryInfo. Unset: 85 % of the container's memory limit (or of the machine's memory) less what
    the server holds at start. 0: no bound."""
    workers_per_device: int = Field(default=1, ge=1)
    """Jobs (or batches of jobs) that run at once on one device."""
    batch_max: int = Field(default=0, ge=0)
    """Most queued jobs of one size and one set of options that run together as one batch, each
    iteration one network pass for all their images; each job keeps its own optimizer, previews,
    cancellation and result. 0: 4 on CUDA devices and 1 (no batching) on CPU."""
    store: str = Field(default="memory", pattern=r"^(memory|rediss?://.+|unix://.+)$")
    """Where jobs are kept: `memory` (this process only) or a Redis URL
    (`redis://[user:password@]host:port/db`, `rediss://` for TLS) shared by every replica, so that
    any replica answers for any job and an idempotency key makes one job across all of them."""
    lease_seconds: float = Field(default=10.0, gt=0)
    """With the Redis store: how long a replica's hold on a running job lasts unless renewed (it
    renews a third of a lease apart). A job whose lease runs out, its replica dead or cut off,
    goes back to the shared line and another replica resumes it; the old replica's writes are
    refused from then on."""
    max_job_runs: int = Field(default=3, ge=1)
    """With the Redis store: how many times a job may be started before its replica's death ends
    it FAILED with reason RUNS_EXHAUSTED instead of another resume (a job that kills whatever
    runs it must not take down replica after replica). Hand-offs by draining replicas do not count."""
    checkpoint_seconds: float = Field(default=30.0, ge=0)
    """With the Redis store: how often a running job's state (its image as float32, where it is
    in its scales and tiles, its losses) goes to Redis, besides the end of every scale and tile;
    a resumed job starts from its last checkpoint, so at most this long of work is redone.
    0: no checkpoints (a resumed job starts over)."""
    job_history: int = Field(default=4096, ge=16)
    """Events kept per job, so that WatchJob can resume after a disconnect."""
    job_history_bytes: int = Field(default=16 * 1024 * 1024, ge=0)
    """Encoded image bytes (previews) a job's event history keeps at most; past it the oldest
    events go first, as past job_history. 0: no bound."""
    job_retention_seconds: float = Field(default=600.0, ge=0)
    """How long a finished job (and its result) stays readable; then GetJob says NOT_FOUND."""
    job_retention_bytes: int = Field(default=256 * 1024 * 1024, ge=0)
    """Encoded result bytes finished jobs may hold in all; the oldest are forgotten first."""
    reattach_seconds: float = Field(default=10.0, ge=0)
    """How long a job whose Transfer stream broke off waits for its caller to come back with
    WatchJob (a proxy's timeout or the network cut the stream) before it is cancelled as nobody's.
    A caller's deadline still ends the job at once, and a stream the server ends (a drain) never
    cancels its job. 0: cancel as soon as the stream ends."""
    heartbeat_seconds: float = Field(default=15.0, gt=0)
    """Seconds of quiet after which a stream gets a heartbeat event."""
    rpc_threads: int = Field(default=32, ge=4)
    """Threads serving RPCs; each streaming call holds one while it is open."""
    max_streams: int = Field(default=20, ge=1)
    """Streaming calls (Transfer, WatchJob, reflection) open at once; more are refused with
    RESOURCE_EXHAUSTED. With max_health_watches it must stay below rpc_threads: the threads left
    serve unary calls whatever the streams do."""
    max_streams_per_caller: int = Field(default=8, ge=1)
    """Streaming calls one caller (a principal with auth, else a peer address) may hold open."""
    max_health_watches: int = Field(default=4, ge=1)
    """Health Watch streams open at once on the main port (anyone may open them, token or not)."""
    max_health_watches_per_peer: int = Field(default=2, ge=1)
    """Health Watch streams one peer address may hold open."""
    rate_limit_calls: int = Field(default=1000, ge=0)
    """Calls one caller (a principal with auth, else a peer address) may make in any
    rate_limit_window_seconds, every method but health's; more are RESOURCE_EXHAUSTED reason
    RATE_LIMITED with RetryInfo. Counted across every replica with the Redis store. 0: no limit."""
    rate_limit_window_seconds: int = Field(default=10, ge=1)
    """The moving window rate_limit_calls counts in, in seconds."""
    max_queued_per_principal: int = Field(default=8, ge=0)
    """Jobs one principal may have waiting at once (across every replica with the Redis store), so
    that one caller cannot fill the queue for everyone; more are RESOURCE_EXHAUSTED reason
    TOO_MANY_QUEUED with RetryInfo. Without auth every caller is one principal. 0: no cap."""
    max_concurrent_rpcs: int = Field(default=256, ge=1)
    """Calls in progress or waiting for a thread, all kinds together; beyond it gRPC refuses new
    calls with RESOURCE_EXHAUSTED at once instead of queueing them without bound."""
    warmup: bool = True
    """Run a tiny job at start-up before reporting SERVING."""
    shutdown_grace: float = Field(default=30.0, ge=0)
    """Seconds running jobs get to finish after SIGTERM."""
    max_connection_age_seconds: float | None = Field(default=None, gt=0)
    """Close each client connection this long after it opened (calls in flight may finish), so
    that clients behind a connection-balancing proxy or Service spread over new replicas; unset
    keeps connections open."""
    keepalive_seconds: float = Field(default=60.0, gt=0)
    """Interval of the server's HTTP/2 keepalive pings on idle connections."""
    tls_cert: Path | None = None
    """PEM certificate chain of the server; with tls_key, the gRPC port speaks TLS only."""
    tls_key: Path | None = None
    """PEM private key of the server."""
    tls_client_ca: Path | None = None
    """PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS)."""
    auth_tokens: SecretStr | None = None
    """Comma-separated bearer tokens, each `token` or `name:token` (name = the principal that owns the
    jobs made with it); when set (or auth_tokens_file), every RPC but health needs one."""
    auth_tokens_file: Path | None = None
    """File with one bearer token (or `name:token`) per line (blank lines and # comments ignored)."""
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    """HTTP port serving Prometheus metrics at /metrics; unset serves none (0 picks a free port)."""
    metrics_host: str | None = None
    """Address of the metrics port; unset: the same as host."""
    health_port: int | None = Field(default=None, ge=0, le=65535)
    """Extra plaintext port that serves only grpc.health.v1, for Kubernetes probes under TLS."""
    log_format: Literal["json", "console"] = "json"
    """JSON lines for production, or readable console output for development."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Lowest level that is logged."""

    @model_validator(mode="after")
    def _streams_leave_threads(self) -> Settings:
        if self.max_streams + self.max_health_watches >= self.rpc_threads:
            raise ValueError(
                f"max_streams + max_health_watches ({self.max_streams} + {self.max_health_watches}) "
                f"must be below rpc_threads ({self.rpc_threads}), so that streams can never take "
                "every thread from unary calls"
            )
        return self


def load_tokens(settings: Settings) -> tuple[str, ...]:
    """Every accepted bearer token, from the setting and the file; empty means no auth."""
    tokens: list[str] = []
    if settings.auth_tokens is not None:
        tokens += [t.strip() for t in settings.auth_tokens.get_secret_value().split(",") if t.strip()]
    if settings.auth_tokens_file is not None:
        for line in settings.auth_tokens_file.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                tokens.append(line)
    return tuple(tokens)
