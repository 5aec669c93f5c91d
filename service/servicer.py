"""The StyleTransfer servicer: protobuf in, job core, protobuf out. Nothing else happens here."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator

import grpc
from styletransfer.v1 import style_transfer_pb2 as pb
from styletransfer.v1 import style_transfer_pb2_grpc as pb_grpc

from backends.errors import InvalidArgument, NotFound
from service import convert
from service.jobs import Failed, Job, JobCore, new_job_id, not_found
from service.options import JobOptions
from service.principals import Principals
from service.requests import build_spec, resolve_options
from service.settings import Settings
from service.shared import SharedJobs

MAX_KEY_LENGTH = 128
DEFAULT_PAGE, MAX_PAGE = 100, 1000


def request_fingerprint(request: pb.TransferRequest | pb.CreateJobRequest) -> str:
    """SHA-256 of everything in a job request but its idempotency key (deterministic encoding), so
    that a key reused with a different request can be told from a retry."""
    copy = type(request).FromString(request.SerializeToString())
    copy.idempotency_key = ""
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


def _job_id(name: str) -> str:
    prefix, _, job_id = name.partition("/")
    if prefix != "jobs" or not job_id or "/" in job_id:
        raise InvalidArgument("name", f"{name!r} is not a job name; expected jobs/{{id}}")
    return job_id


class StyleTransferServicer(pb_grpc.StyleTransferServicer):
    """Thin adapter between the wire and the job core; errors are mapped by the interceptor."""

    def __init__(
        self,
        core: JobCore,
        defaults: JobOptions,
        settings: Settings,
        info: Callable[[], pb.ServerInfo],
        principals: Principals | None = None,
        shared: SharedJobs | None = None,
    ) -> None:
        self._core = core
        self._defaults = defaults
        self._settings = settings
        self._info = info
        self._principals = principals or Principals(())
        self._shared = shared  # set when jobs are shared with other replicas through Redis

    def _create(
        self,
        request: pb.TransferRequest | pb.CreateJobRequest,
        deadline: float | None,
        context: grpc.ServicerContext,
    ) -> Job | str:
        """The job the request makes, or the one its idempotency key already names: a local Job,
        or the id of a job that runs on another replica."""
        if len(request.idempotency_key) > MAX_KEY_LENGTH:
            raise InvalidArgument("idempotency_key", f"longer than {MAX_KEY_LENGTH} characters")
        principal = self._principals.of(context)
        key = request.idempotency_key
        fingerprint = request_fingerprint(request) if key else ""
        job_id = new_job_id()
        if key:
            # A retry returns the job the key already names, before any image is decoded.
            existing = self._core.find(principal, key, fingerprint)
            if existing is not None:
                return existing
            if self._shared is not None:
                taken = self._shared.claim(principal, key, fingerprint, job_id)
                if taken is not None:
                    return self._local(taken, principal) or taken
        try:
            plain = convert.job_request(request)
            options = self._core.place(resolve_options(plain.overrides, self._defaults, self._settings))
            if options.max_duration is not None:
                budget = time.monotonic() + options.max_duration
                deadline = budget if deadline is None else min(deadline, budget)
            spec = build_spec(plain, options, self._settings)
            job = self._core.submit(
                spec,
                deadline=deadline,
                idempotency_key=key,
                principal=principal,
                fingerprint=fingerprint,
                job_id=job_id,
            )
        except BaseException:
            if key and self._shared is not None:
                self._shared.release(principal, key, job_id)
            raise
        if self._shared is not None and job.id == job_id:
            self._shared.publish(job, self._core.position)
        return job

    def _local(self, job_id: str, principal: str) -> Job | None:
        try:
            return self._core.get(job_id, principal)
        except NotFound:
            return None

    def _events(self, job: Job, after: int) -> Iterator[pb.TransferEvent]:
        for sequence, item in job.stream(after, self._settings.heartbeat_seconds):
            if isinstance(item, Failed):
                raise item.error
            yield convert.event(job, sequence, item)

    def Transfer(
        self, request: pb.TransferRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.TransferEvent]:
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        job = self._create(request, deadline, context)
        if isinstance(job, str):  # the key names a job on another replica: relay it
            principal = self._principals.of(context)
            shared = self._shared
            assert shared is not None
            context.add_callback(lambda: shared.cancel_quietly(job))
            yield from shared.watch(job, principal, 0, context.is_active)
            return
        context.add_callback(job.caller_gone)  # stop computing for nobody
        yield from self._events(job, 0)

    def GetServerInfo(self, request: pb.GetServerInfoRequest, context: grpc.ServicerContext) -> pb.ServerInfo:
        return self._info()

    def CreateJob(self, request: pb.CreateJobRequest, context: grpc.ServicerContext) -> pb.Job:
        job = self._create(request, None, context)
        if isinstance(job, str):
            assert self._shared is not None
            return self._shared.get(job, self._principals.of(context))
        return convert.job(job, self._core.position(job))

    def GetJob(self, request: pb.GetJobRequest, context: grpc.ServicerContext) -> pb.Job:
        job_id, principal = _job_id(request.name), self._principals.of(context)
        job = self._local(job_id, principal)
        if job is None and self._shared is not None:
            return self._shared.get(job_id, principal)
        if job is None:
            raise not_found(job_id)
        return convert.job(job, self._core.position(job))

    def ListJobs(self, request: pb.ListJobsRequest, context: grpc.ServicerContext) -> pb.ListJobsResponse:
        if request.state and request.state not in convert.STATES_FROM_PROTO:
            raise InvalidArgument("state", f"unknown job state {request.state}")
        size = min(request.page_size or DEFAULT_PAGE, MAX_PAGE)
        try:
            start = int(request.page_token or 0)
        except ValueError:
            raise InvalidArgument("page_token", "not a token this server issued") from None
        wanted = convert.STATES_FROM_PROTO.get(request.state)
        principal = self._principals.of(context)
        local = [convert.job(j, self._core.position(j), with_image=False) for j in self._core.jobs(principal)]
        if self._shared is not None:
            here = {j.name for j in local}
            elsewhere = [j for j in self._shared.jobs(principal) if j.name not in here]
            local = sorted(local + elsewhere, key=lambda j: (j.create_time.seconds, j.create_time.nanos))
        wanted_state = request.state
        jobs = [j for j in local if wanted is None or j.state == wanted_state]
        page = jobs[start : start + size]
        token = str(start + size) if start + size < len(jobs) else ""
        return pb.ListJobsResponse(jobs=page, next_page_token=token)

    def CancelJob(self, request: pb.CancelJobRequest, context: grpc.ServicerContext) -> pb.Job:
        job_id, principal = _job_id(request.name), self._principals.of(context)
        if self._local(job_id, principal) is None and self._shared is not None:
            return self._shared.cancel(job_id, principal)
        job = self._core.cancel(job_id, principal)
        return convert.job(job, self._core.position(job))

    def WatchJob(
        self, request: pb.WatchJobRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.TransferEvent]:
        job_id, principal = _job_id(request.name), self._principals.of(context)
        job = self._local(job_id, principal)
        if job is None and self._shared is not None:
            yield from self._shared.watch(job_id, principal, request.after_sequence, context.is_active)
            return
        if job is None:
            raise not_found(job_id)
        yield from self._events(job, request.after_sequence)
