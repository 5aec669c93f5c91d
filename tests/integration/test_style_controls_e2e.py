"""The style controls end to end over real gRPC: 16-bit PNG, ICC tags, multi-scale, tiles, masks,
init images, colour preservation, seeds, the field checks and the CLI flags that set them."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt
import pytest
from helpers import transfer_error, violations
from imaging import (
    encode,
    image_array,
    image_bytes,
    png_chunk_types,
    png_header,
    profile_description,
    read_png16,
)
from PIL import Image
from styletransfer.v1 import style_transfer_pb2 as pb
from styletransfer.v1 import style_transfer_pb2_grpc as pb_grpc

from backends.color import to_yiq
from service.server import Server

CONTENT = image_bytes(1, 64, 64)
STYLE = image_bytes(2, 64, 64)


def _mask(left: float = 1.0, right: float = 0.0, width: int = 64, height: int = 64) -> bytes:
    """A greyscale mask (encoded as RGB PNG): the left half at `left`, the right half at `right`."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[:, : width // 2] = round(left * 255)
    array[:, width // 2 :] = round(right * 255)
    return encode(array)


def _request(
    iterations: int | None = 2,
    content: bytes = CONTENT,
    styles: tuple[pb.StyleImage, ...] | None = None,
    init_image: bytes | None = None,
    **options: object,
) -> pb.TransferRequest:
    if iterations is not None:
        options["iterations"] = iterations
    request = pb.TransferRequest(
        content=pb.Image(data=content),
        styles=list(styles) if styles is not None else [pb.StyleImage(image=pb.Image(data=STYLE))],
        options=pb.TransferOptions(**{"max_size": 64, **options}),  # type: ignore[arg-type]
    )
    if init_image is not None:
        request.init_image.data = init_image
    return request


def _events(stub: pb_grpc.StyleTransferStub, request: pb.TransferRequest) -> list[pb.TransferEvent]:
    return [e for e in stub.Transfer(request, timeout=120) if not e.HasField("heartbeat")]


def _progress(events: list[pb.TransferEvent]) -> list[pb.Progress]:
    return [e.progress for e in events if e.HasField("progress")]


def _assert_rejected(stub: pb_grpc.StyleTransferStub, request: pb.TransferRequest, field: str) -> None:
    error = transfer_error(stub, request)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert field in (error.details() or "")
    assert list(violations(error)) == [field]


def _rgb(data: bytes) -> npt.NDArray[np.uint8]:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.uint8)


# 1. 16-bit PNG


def test_png16_result_and_previews_are_16_bit(stub: pb_grpc.StyleTransferStub) -> None:
    """PNG16 gives a 48-bit RGB PNG of the accepted size, tagged sRGB, with 16-bit previews too."""
    events = _events(
        stub,
        _request(
            iterations=2, content=image_bytes(1, 64, 48), output_format=pb.IMAGE_FORMAT_PNG16, preview_every=1
        ),
    )
    accepted, result = events[0].accepted, events[-1].result
    assert accepted.options.output_format == pb.IMAGE_FORMAT_PNG16
    assert (accepted.width, accepted.height) == (64, 48)
    assert result.image.format == pb.IMAGE_FORMAT_PNG16
    assert (result.image.width, result.image.height) == (64, 48)
    assert png_header(result.image.data) == (64, 48, 16, 2)
    pixels = read_png16(result.image.data)
    assert pixels.shape == (48, 64, 3)
    # Values from the unrounded optimizer output: not merely 8-bit values times 257.
    assert np.any(pixels % 257 != 0)
    assert b"sRGB" in png_chunk_types(result.image.data)
    previews = [e.preview for e in events if e.HasField("preview")]
    assert [p.iteration for p in previews] == [1, 2]
    for preview in previews:
        assert preview.image.format == pb.IMAGE_FORMAT_PNG16
        width, height, depth, colour = png_header(preview.image.data)
        assert (depth, colour) == (16, 2)
        assert (width, height) == (preview.image.width, preview.image.height)
        assert read_png16(preview.image.data).shape == (height, width, 3)


# 2. ICC profiles


@pytest.mark.parametrize(
    ("fmt", "pil_name"),
    [(pb.IMAGE_FORMAT_PNG, "PNG"), (pb.IMAGE_FORMAT_JPEG, "JPEG"), (pb.IMAGE_FORMAT_WEBP, "WEBP")],
)
def test_every_8_bit_format_carries_an_srgb_profile(
    stub: pb_grpc.StyleTransferStub, fmt: int, pil_name: str
) -> None:
    """PNG, JPEG and WebP results (and previews) embed an sRGB ICC profile."""
    events = _events(stub, _request(iterations=1, output_format=fmt, preview_every=1))
    result = events[-1].result
    assert Image.open(io.BytesIO(result.image.data)).format == pil_name
    description = profile_description(result.image.data)
    assert description is not None and "sRGB" in description
    previews = [e.preview for e in events if e.HasField("preview")]
    assert len(previews) == 1
    preview_description = profile_description(previews[0].image.data)
    assert preview_description is not None and "sRGB" in preview_description


# 3. Multi-scale


def test_scale_iterations_run_coarse_to_fine(stub: pb_grpc.StyleTransferStub) -> None:
    """[3, 2] runs 5 iterations: three at scale 1, two at scale 2, each progress saying so."""
    events = _events(stub, _request(iterations=None, scale_iterations=[3, 2]))
    accepted = events[0].accepted
    assert accepted.options.iterations == 5
    assert list(accepted.options.scale_iterations) == [3, 2]
    assert accepted.options.scale_factor == 2.0
    progress = _progress(events)
    assert [p.iteration for p in progress] == [1, 2, 3, 4, 5]
    assert [p.scale for p in progress] == [1, 1, 1, 2, 2]
    assert all(p.scale_count == 2 and p.total_iterations == 5 for p in progress)
    assert all(p.tile == 0 and p.tile_count == 0 for p in progress)
    result = events[-1].result
    assert result.iterations == 5
    assert (result.image.width, result.image.height) == (64, 64)


def test_iterations_must_match_the_scale_iterations(stub: pb_grpc.StyleTransferStub) -> None:
    """iterations set to anything but the scales' sum is rejected on options.iterations."""
    _assert_rejected(stub, _request(iterations=4, scale_iterations=[3, 2]), "options.iterations")


# 4. Tiles


def test_tiles_refine_the_last_scale(stub: pb_grpc.StyleTransferStub) -> None:
    """A 128 px output in 64 px tiles: the last scale counts tiles 1..N, each running its iterations."""
    request = _request(
        iterations=None,
        content=image_bytes(1, 128, 128),
        max_size=128,
        tile_size=64,
        tile_overlap=16,
        scale_iterations=[2, 1],
    )
    events = _events(stub, request)
    accepted = events[0].accepted
    assert (accepted.width, accepted.height) == (128, 128)
    assert (accepted.options.tile_size, accepted.options.tile_overlap) == (64, 16)
    progress = _progress(events)
    first, last = [p for p in progress if p.scale == 1], [p for p in progress if p.scale == 2]
    assert len(first) == 2 and all(p.tile == 0 for p in first)
    tile_count = last[0].tile_count
    assert tile_count > 1
    assert [p.tile for p in last] == list(range(1, tile_count + 1))
    assert all(p.tile_count == tile_count and p.scale_count == 2 for p in last)
    assert [p.iteration for p in progress] == list(range(1, 2 + tile_count + 1))
    assert all(p.total_iterations == 2 + tile_count for p in progress)
    result = events[-1].result
    assert (result.image.width, result.image.height) == (128, 128)
    assert Image.open(io.BytesIO(result.image.data)).size == (128, 128)


# 5. Masks


def test_masked_style_is_accepted(stub: pb_grpc.StyleTransferStub) -> None:
    """A style with a left-half mask (of another size: it is stretched) runs to a result."""
    styles = (pb.StyleImage(image=pb.Image(data=STYLE), mask=pb.Image(data=_mask(width=32, height=40))),)
    events = _events(stub, _request(iterations=2, styles=styles))
    assert events[-1].HasField("result")
    assert all(p.losses.style > 0 for p in _progress(events))


def test_complementary_masks_blend_two_styles(stub: pb_grpc.StyleTransferStub) -> None:
    """Two styles with complementary masks run together."""
    styles = (
        pb.StyleImage(image=pb.Image(data=STYLE), mask=pb.Image(data=_mask(1.0, 0.0))),
        pb.StyleImage(image=pb.Image(data=image_bytes(3, 64, 64)), mask=pb.Image(data=_mask(0.0, 1.0))),
    )
    assert _events(stub, _request(iterations=1, styles=styles))[-1].HasField("result")


@pytest.mark.parametrize("mask", [_mask(0.0, 0.0), b"junk", b""], ids=["black", "undecodable", "empty"])
def test_bad_mask_is_rejected(stub: pb_grpc.StyleTransferStub, mask: bytes) -> None:
    """An all-black, undecodable or empty (but present) mask is INVALID_ARGUMENT on its field."""
    styles = (pb.StyleImage(image=pb.Image(data=STYLE), mask=pb.Image(data=mask)),)
    _assert_rejected(stub, _request(styles=styles), "styles[0].mask.data")


def test_bad_second_mask_names_its_style(stub: pb_grpc.StyleTransferStub) -> None:
    """The field names the style whose mask is at fault."""
    styles = (
        pb.StyleImage(image=pb.Image(data=STYLE), mask=pb.Image(data=_mask())),
        pb.StyleImage(image=pb.Image(data=STYLE), mask=pb.Image(data=b"junk")),
    )
    _assert_rejected(stub, _request(styles=styles), "styles[1].mask.data")


# 6. init_image


def test_init_image_without_init_image_mode_is_rejected(stub: pb_grpc.StyleTransferStub) -> None:
    """INIT_IMAGE needs an init_image, and an init_image needs INIT_IMAGE."""
    _assert_rejected(stub, _request(init=pb.INIT_IMAGE), "init_image")
    _assert_rejected(stub, _request(init_image=image_bytes(7, 64, 64)), "init_image")
    _assert_rejected(stub, _request(init=pb.INIT_NOISE, init_image=image_bytes(7, 64, 64)), "init_image")


def test_undecodable_init_image_is_rejected(stub: pb_grpc.StyleTransferStub) -> None:
    """An init_image that is not an image names init_image.data."""
    _assert_rejected(stub, _request(init=pb.INIT_IMAGE, init_image=b"junk"), "init_image.data")


def test_init_image_is_where_the_optimization_starts(stub: pb_grpc.StyleTransferStub) -> None:
    """Content init starts at zero content loss; an init image unlike the content does not."""
    default = _progress(_events(stub, _request(iterations=1)))
    assert default[0].losses.content == 0.0
    request = _request(iterations=2, init=pb.INIT_IMAGE, init_image=image_bytes(9, 40, 30))
    events = _events(stub, request)
    assert events[0].accepted.options.init == pb.INIT_IMAGE
    assert _progress(events)[0].losses.content > 0
    assert events[-1].HasField("result")


def test_create_job_takes_an_init_image(stub: pb_grpc.StyleTransferStub) -> None:
    """CreateJob carries init_image too: the job is accepted and succeeds when watched."""
    transfer = _request(iterations=2, init=pb.INIT_IMAGE, init_image=image_bytes(9, 64, 64))
    job = stub.CreateJob(
        pb.CreateJobRequest(
            content=transfer.content,
            styles=transfer.styles,
            options=transfer.options,
            init_image=transfer.init_image,
        ),
        timeout=30,
    )
    assert job.options.init == pb.INIT_IMAGE
    events = list(stub.WatchJob(pb.WatchJobRequest(name=job.name), timeout=120))
    assert events[-1].HasField("result")
    assert _progress(events)[0].losses.content > 0
    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateJob(
            pb.CreateJobRequest(
                content=transfer.content,
                styles=transfer.styles,
                options=pb.TransferOptions(iterations=1, max_size=64, init=pb.INIT_IMAGE),
            ),
            timeout=30,
        )
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert list(violations(caught.value)) == ["init_image"]


# 7. Bad values


BAD_OPTIONS = [
    ("style_scale zero", {"style_scale": 0.0}, "options.style_scale"),
    ("style_scale 5", {"style_scale": 5.0}, "options.style_scale"),
    ("style_scale nan", {"style_scale": float("nan")}, "options.style_scale"),
    ("scale_factor 1", {"scale_factor": 1.0}, "options.scale_factor"),
    ("scale_factor 5", {"scale_factor": 5.0}, "options.scale_factor"),
    ("tile_size 32", {"tile_size": 32}, "options.tile_size"),
    ("tile_overlap over half", {"tile_size": 64, "tile_overlap": 33}, "options.tile_overlap"),
    (
        "coarsest scale too small",
        {"iterations": None, "scale_iterations": [1, 1, 1, 1]},
        "options.scale_iterations",
    ),
    (
        "zero scale iterations",
        {"iterations": None, "scale_iterations": [2, 0]},
        "options.scale_iterations[1]",
    ),
    ("unknown pooling", {"pooling": 9}, "options.pooling"),
    ("unknown colour preservation", {"color_preservation": 9}, "options.color_preservation"),
    ("unknown output format", {"output_format": 9}, "options.output_format"),
]


@pytest.mark.parametrize(("options", "field"), [c[1:] for c in BAD_OPTIONS], ids=[c[0] for c in BAD_OPTIONS])
def test_bad_style_control_names_the_field(
    stub: pb_grpc.StyleTransferStub, options: dict[str, object], field: str
) -> None:
    """Each bad value is INVALID_ARGUMENT with a BadRequest violation for exactly its field."""
    _assert_rejected(stub, _request(**options), field)  # type: ignore[arg-type]


def test_server_keeps_serving_after_bad_style_controls(stub: pb_grpc.StyleTransferStub) -> None:
    """After a run of rejected requests a normal job (with every control set) succeeds."""
    for _, options, _field in BAD_OPTIONS:
        transfer_error(stub, _request(**options))  # type: ignore[arg-type]
    events = _events(
        stub,
        _request(
            iterations=None,
            scale_iterations=[1, 1],
            scale_factor=1.5,
            pooling=pb.POOLING_AVERAGE,
            color_preservation=pb.COLOR_PRESERVATION_HISTOGRAM,
            style_scale=0.75,
        ),
    )
    opts = events[0].accepted.options
    assert opts.pooling == pb.POOLING_AVERAGE
    assert opts.color_preservation == pb.COLOR_PRESERVATION_HISTOGRAM
    assert opts.style_scale == 0.75 and opts.scale_factor == 1.5
    assert events[-1].HasField("result")


def test_accepted_reports_style_control_defaults(stub: pb_grpc.StyleTransferStub) -> None:
    """Unset controls are filled in with the documented defaults."""
    opts = _events(stub, _request(iterations=1))[0].accepted.options
    assert opts.pooling == pb.POOLING_MAX
    assert opts.color_preservation == pb.COLOR_PRESERVATION_NONE
    assert opts.style_scale == 1.0 and opts.scale_factor == 2.0
    assert opts.tile_size == 0 and opts.tile_overlap == 32
    assert opts.output_format == pb.IMAGE_FORMAT_PNG


# 8. Colour preservation


def _chroma_distance(result: bytes, content: npt.NDArray[np.uint8]) -> float:
    out, ref = to_yiq(_rgb(result)), to_yiq(content)
    return float(np.mean(np.abs(out[..., 1] - ref[..., 1]) + np.abs(out[..., 2] - ref[..., 2])))


def test_luminance_preservation_keeps_the_content_chroma(stub: pb_grpc.StyleTransferStub) -> None:
    """With luminance preservation the result's I and Q stay the content's; without, they drift."""
    content = image_array(1, 64, 64)
    # A style far from the content's colours: its chroma is what an unpreserved job drifts toward.
    style = encode(np.ascontiguousarray(255 - image_array(4, 64, 64)[..., ::-1]))
    styles = (pb.StyleImage(image=pb.Image(data=style)),)

    def run(**options: object) -> bytes:
        request = _request(iterations=4, content=encode(content), styles=styles, **options)  # type: ignore[arg-type]
        return _events(stub, request)[-1].result.image.data

    kept = run(color_preservation=pb.COLOR_PRESERVATION_LUMINANCE, init=pb.INIT_NOISE)
    free = run(init=pb.INIT_NOISE)
    kept_distance, free_distance = _chroma_distance(kept, content), _chroma_distance(free, content)
    assert kept_distance < 2.0
    assert free_distance > 2 * kept_distance and free_distance > 2.0


# 10. Seeds


def test_noise_seed_decides_the_result(stub: pb_grpc.StyleTransferStub) -> None:
    """The same seed gives byte-identical PNGs; another seed gives another image."""
    first = _events(stub, _request(iterations=3, init=pb.INIT_NOISE, seed=3))[-1].result.image.data
    again = _events(stub, _request(iterations=3, init=pb.INIT_NOISE, seed=3))[-1].result.image.data
    other = _events(stub, _request(iterations=3, init=pb.INIT_NOISE, seed=4))[-1].result.image.data
    assert first == again
    assert first != other
    assert not np.array_equal(_rgb(first), _rgb(other))


# 9. The CLI


def _stylize(
    server: Server, files: dict[str, Path], out: Path, *flags: str
) -> subprocess.CompletedProcess[str]:
    """`styletransfer stylize CONTENT STYLE -o OUT` against the test server, with more flags."""
    command = [sys.executable, "-m", "styletransfer.client.cli", "stylize", str(files["content"])]
    command += [str(files["style"]), "-o", str(out), "--server", f"127.0.0.1:{server.port}", *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    paths = {
        "content": tmp_path / "content.png",
        "style": tmp_path / "style.jpg",
        "mask": tmp_path / "mask.png",
        "init": tmp_path / "init.png",
    }
    paths["content"].write_bytes(encode(image_array(1, 64, 48)))
    paths["style"].write_bytes(encode(image_array(2, 64, 64), "JPEG"))
    paths["mask"].write_bytes(_mask())
    paths["init"].write_bytes(image_bytes(9, 32, 32))
    return paths


def test_cli_style_controls_write_a_16_bit_png(
    server: Server, files: dict[str, Path], tmp_path: Path
) -> None:
    """Every style-control flag reaches the server, and --format png16 writes a 48-bit PNG."""
    out = tmp_path / "out.png"
    done = _stylize(
        server,
        files,
        out,
        "--size",
        "64",
        "--scales",
        "2,2",
        "--preserve-color",
        "luminance",
        "--pooling",
        "average",
        "--mask",
        str(files["mask"]),
        "--format",
        "png16",
        "--style-scale",
        "0.5",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    accepted = events[0]["accepted"]
    opts = accepted["options"]
    assert opts["scale_iterations"] == [2, 2] and opts["iterations"] == 4
    assert opts["color_preservation"] == "COLOR_PRESERVATION_LUMINANCE"
    assert opts["pooling"] == "POOLING_AVERAGE"
    assert opts["output_format"] == "IMAGE_FORMAT_PNG16"
    assert opts["style_scale"] == 0.5
    scales = [e["progress"].get("scale") for e in events if "progress" in e]
    assert scales == [1, 1, 2, 2]
    assert "result" in events[-1]
    assert png_header(out.read_bytes()) == (64, 48, 16, 2)
    assert read_png16(out.read_bytes()).shape == (48, 64, 3)


def test_cli_init_image(server: Server, files: dict[str, Path], tmp_path: Path) -> None:
    """--init-image implies --init image; the job starts away from the content and succeeds."""
    out = tmp_path / "out.png"
    done = _stylize(
        server,
        files,
        out,
        "--size",
        "48",
        "--iterations",
        "2",
        "--init-image",
        str(files["init"]),
        "--json",
    )
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert events[0]["accepted"]["options"]["init"] == "INIT_IMAGE"
    first = next(e["progress"] for e in events if "progress" in e)
    assert first["losses"]["content"] > 0
    assert Image.open(out).size == (48, 36)


def test_cli_bad_mask_is_reported(server: Server, files: dict[str, Path], tmp_path: Path) -> None:
    """An all-black --mask is rejected by the server: exit 2, the field on stderr, no output file."""
    black = tmp_path / "black.png"
    black.write_bytes(_mask(0.0, 0.0))
    out = tmp_path / "x.png"
    done = _stylize(
        server,
        files,
        out,
        "--size",
        "48",
        "--iterations",
        "1",
        "--mask",
        str(black),
    )
    assert done.returncode == 2, done.stderr
    assert "INVALID_ARGUMENT" in done.stderr and "styles[0].mask.data" in done.stderr
    assert not out.exists()
