"""The StyleTransfer servicer: protobuf in, job core, protobuf out. Nothing else happens here."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
from styletransfer.v1 import style_transfer_pb2 as pb
from styletransfer.v1 import style_transfer_pb2_grpc as pb_grpc

from service import convert
from service.jobs import Failed, JobCore
from service.options import JobOptions
from service.requests import build_spec, resolve_options
from service.settings import Settings


class StyleTransferServicer(pb_grpc.StyleTransferServicer):
    """Thin adapter between the wire and the job core; errors are mapped by the interceptor."""

    def __init__(
        self, core: JobCore, defaults: JobOptions, settings: Settings, info: Callable[[], pb.ServerInfo]
    ) -> None:
        self._core = core
        self._defaults = defaults
        self._settings = settings
        self._info = info

    def Transfer(
        self, request: pb.TransferRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.TransferEvent]:
        plain = convert.job_request(request)
        options = self._core.place(resolve_options(plain.overrides, self._defaults, self._settings))
        job = self._core.submit(build_spec(plain, options, self._settings))
        context.add_callback(job.cancel)  # the caller went away: stop computing for nobody
        yield convert.accepted(job)
        for item in job.stream():
            if isinstance(item, Failed):
                raise item.error
            yield convert.event(item, job.options)

    def GetServerInfo(self, request: pb.GetServerInfoRequest, context: grpc.ServicerContext) -> pb.ServerInfo:
        return self._info()
