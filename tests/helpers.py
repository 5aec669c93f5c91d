"""Test helpers shared across suites: an independent NumPy reference for VGG's convolutions,
reading the errors a server returns, and running calls on threads of their own."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

F64 = npt.NDArray[np.float64]
Floats = npt.NDArray[np.floating]


def conv3x3_reference(x: Floats, kernel_hwio: Floats, bias: Floats) -> F64:
    """A 3x3 cross-correlation, stride 1, zero padding 1, computed directly in float64.

    `x` is (in, H, W); `kernel_hwio` is (3, 3, in, out), the layout Keras stores, used as is so
    that no layout conversion under test is involved; the result is (out, H, W).
    """
    channels, height, width = x.shape
    assert kernel_hwio.shape[:3] == (3, 3, channels), kernel_hwio.shape
    padded = np.zeros((channels, height + 2, width + 2), dtype=np.float64)
    padded[:, 1:-1, 1:-1] = x
    k = kernel_hwio.astype(np.float64)
    out = np.zeros((k.shape[3], height, width), dtype=np.float64)
    for dy in range(3):
        for dx in range(3):
            window = padded[:, dy : dy + height, dx : dx + width]  # (in, H, W)
            out += np.einsum("chw,co->ohw", window, k[dy, dx])
    return out + bias.astype(np.float64)[:, None, None]


def transfer_error(stub: Any, request: Any) -> grpc.RpcError:
    """The error a Transfer call ends with; fails the test if it ends without one."""
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.Transfer(request, timeout=60))
    return caught.value


def violations(error: grpc.RpcError) -> dict[str, str]:
    """The BadRequest field violations in an error's rich status, by field."""
    status = rpc_status.from_call(error)
    assert status is not None, "the status carries no details"
    out: dict[str, str] = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out.update({v.field: v.description for v in bad.field_violations})
    return out


def in_threads(*calls: Callable[[], object], timeout: float = 120) -> list[object]:
    """Run each call on a thread of its own, all at once; their results, or the exceptions they
    raised, in order. Fails when a call is still running after `timeout` seconds."""
    results: list[object] = [None] * len(calls)

    def run(index: int) -> None:
        try:
            results[index] = calls[index]()
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
        assert not thread.is_alive(), "a call was left waiting"
    return results
