"""The StyleTransfer servicer: protobuf in, job store, protobuf out. Nothing else happens here."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import structlog
from styletransfer.v1 import style_transfer_pb2 as pb
from styletransfer.v1 import style_transfer_pb2_grpc as pb_grpc

from backends.errors import InvalidArgument
from service import convert
from service.jobs.store import JobStore, Submission
from service.principals import Principals

DEFAULT_PAGE, MAX_PAGE = 100, 1000


def _job_id(name: str) -> str:
    prefix, _, job_id = name.partition("/")
    if prefix != "jobs" or not job_id or "/" in job_id:
        raise InvalidArgument("name", f"{name!r} is not a job name; expected jobs/{{id}}")
    return job_id


class StyleTransferServicer(pb_grpc.StyleTransferServicer):
    """Thin adapter between the wire and the job store; errors are mapped by the interceptor."""

    def __init__(
        self,
        store: JobStore,
        info: Callable[[], pb.ServerInfo],
        principals: Principals | None = None,
        *,
        stopping: Callable[[], bool] = lambda: False,
        reattach_seconds: float = 0.0,
    ) -> None:
        self._store = store
        self._info = info
        self._principals = principals or Principals(())
        self._stopping = stopping
        self._reattach_seconds = reattach_seconds

    def _submission(
        self,
        request: pb.TransferRequest | pb.CreateJobRequest,
        context: grpc.ServicerContext,
        timeout: float | None,
    ) -> Submission:
        request_id = str(structlog.contextvars.get_contextvars().get("request_id", ""))
        return Submission.of(request, self._principals.of(context), timeout, request_id)

    def Transfer(
        self, request: pb.TransferRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.TransferEvent]:
        submission = self._submission(request, context, context.time_remaining())
        job_id = _job_id(self._store.create(submission).name)
        store, ended = self._store, False

        def gone() -> None:
            # The stream ended before the job did. Stop computing for nobody, unless this server
            # ended it (a drain: the job is handed over or ends by itself) or the caller comes
            # back with WatchJob within reattach_seconds (a proxy or the network cut the stream).
            if not ended and not self._stopping():
                store.abandon(job_id, self._reattach_seconds)

        context.add_callback(gone)
        yield from store.watch(job_id, submission.principal, 0, context.is_active)
        ended = True

    def GetServerInfo(self, request: pb.GetServerInfoRequest, context: grpc.ServicerContext) -> pb.ServerInfo:
        return self._info()

    def CreateJob(self, request: pb.CreateJobRequest, context: grpc.ServicerContext) -> pb.Job:
        return self._store.create(self._submission(request, context, None))

    def GetJob(self, request: pb.GetJobRequest, context: grpc.ServicerContext) -> pb.Job:
        return self._store.get(_job_id(request.name), self._principals.of(context))

    def ListJobs(self, request: pb.ListJobsRequest, context: grpc.ServicerContext) -> pb.ListJobsResponse:
        if request.state and request.state not in convert.STATES_FROM_PROTO:
            raise InvalidArgument("state", f"unknown job state {request.state}")
        size = min(request.page_size or DEFAULT_PAGE, MAX_PAGE)
        try:
            start = int(request.page_token or 0)
        except ValueError:
            raise InvalidArgument("page_token", "not a token this server issued") from None
        jobs = [
            job
            for job in self._store.jobs(self._principals.of(context))
            if not request.state or job.state == request.state
        ]
        page = jobs[start : start + size]
        token = str(start + size) if start + size < len(jobs) else ""
        return pb.ListJobsResponse(jobs=page, next_page_token=token)

    def CancelJob(self, request: pb.CancelJobRequest, context: grpc.ServicerContext) -> pb.Job:
        return self._store.cancel(_job_id(request.name), self._principals.of(context))

    def WatchJob(
        self, request: pb.WatchJobRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.TransferEvent]:
        job_id, principal = _job_id(request.name), self._principals.of(context)
        yield from self._store.watch(job_id, principal, request.after_sequence, context.is_active)
