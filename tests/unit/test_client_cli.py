"""The styletransfer command line against a scripted in-process server."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from styletransfer.client import _console, cli
from styletransfer.client.testing import (
    FAKE_IMAGE,
    ScriptedStyleTransfer,
    heartbeat,
    rich_status,
    scripted_events,
    serve,
)
from styletransfer.v1 import style_transfer_pb2 as pb


def _stylize(target: str, images: tuple[Path, Path], output: Path, *flags: str) -> int:
    """Run `styletransfer stylize CONTENT STYLE -o OUTPUT FLAGS...` against ``target``."""
    content, style = images
    return cli.main(["stylize", str(content), str(style), "-o", str(output), "--server", target, *flags])


def test_stylize_writes_the_result_and_exits_zero(
    target: str, images: tuple[Path, Path], tmp_path: Path
) -> None:
    """A successful job writes the result's bytes to OUT and exits 0."""
    assert _stylize(target, images, tmp_path / "out.png") == 0
    assert (tmp_path / "out.png").read_bytes() == FAKE_IMAGE


def test_stylize_leaves_no_temporary_files(target: str, images: tuple[Path, Path], tmp_path: Path) -> None:
    """The atomic write renames its temporary file into place, leaving only the output."""
    _stylize(target, images, tmp_path / "out.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["content.png", "out.png", "style.png"]


def test_stylize_reports_the_output_path_and_timings(
    target: str, images: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After the job, stdout names the file written, its size and where the time went."""
    _stylize(target, images, tmp_path / "out.png")
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'out.png'}: 4x3 PNG, {len(FAKE_IMAGE)} B" in out
    assert "optimize 0.03 s" in out


def test_stylize_shows_a_progress_bar_on_stderr(
    target: str, images: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The progress bar on stderr counts iterations against the total and shows the losses."""
    _stylize(target, images, tmp_path / "out.png")
    err = capsys.readouterr().err
    assert "3/3" in err
    assert "loss=36.67 content=3.333 style=33.33" in err


def test_flags_are_carried_into_the_request(
    target: str, scripted: ScriptedStyleTransfer, images: tuple[Path, Path], tmp_path: Path
) -> None:
    """Each option flag sets its field of the request."""
    _stylize(
        target,
        images,
        tmp_path / "out.png",
        "--iterations",
        "7",
        "--size",
        "128",
        "--content-weight",
        "2",
        "--style-weight",
        "1e4",
        "--tv-weight",
        "0.5",
        "--content-layers",
        "conv4_2",
        "--style-layers",
        "conv1_1,relu2_1",
        "--style-layer-weights",
        "0.25,0.75",
        "--optimizer",
        "adam",
        "--learning-rate",
        "3",
        "--init",
        "noise",
        "--seed",
        "42",
        "--backend",
        "pytorch",
        "--device",
        "cpu",
        "--format",
        "webp",
        "--quality",
        "80",
        "--preview-every",
        "5",
        "--preview-size",
        "64",
    )
    assert scripted.requests[0].options == pb.TransferOptions(
        iterations=7,
        max_size=128,
        content_weight=2.0,
        style_weight=1e4,
        tv_weight=0.5,
        content_layers=["conv4_2"],
        style_layers=["conv1_1", "relu2_1"],
        style_layer_weights=[0.25, 0.75],
        optimizer=pb.OPTIMIZER_ADAM,
        learning_rate=3.0,
        init=pb.INIT_NOISE,
        seed=42,
        backend="pytorch",
        device="cpu",
        output_format=pb.IMAGE_FORMAT_WEBP,
        output_quality=80,
        preview_every=5,
        preview_max_size=64,
    )


def test_flags_left_out_stay_unset(
    target: str, scripted: ScriptedStyleTransfer, images: tuple[Path, Path], tmp_path: Path
) -> None:
    """Without flags, and with a suffix that implies no format, the options are empty."""
    _stylize(target, images, tmp_path / "out.img")
    assert scripted.requests[0].options == pb.TransferOptions()


@pytest.mark.parametrize(
    ("name", "image_format"),
    [
        ("out.png", pb.IMAGE_FORMAT_PNG),
        ("out.jpg", pb.IMAGE_FORMAT_JPEG),
        ("OUT.JPEG", pb.IMAGE_FORMAT_JPEG),
        ("out.webp", pb.IMAGE_FORMAT_WEBP),
    ],
)
def test_the_output_suffix_sets_the_format(
    target: str,
    scripted: ScriptedStyleTransfer,
    images: tuple[Path, Path],
    tmp_path: Path,
    name: str,
    image_format: int,
) -> None:
    """Without --format, the output file's suffix chooses the encoding."""
    _stylize(target, images, tmp_path / name)
    assert scripted.requests[0].options.output_format == image_format


def test_the_format_flag_wins_over_the_suffix(
    target: str, scripted: ScriptedStyleTransfer, images: tuple[Path, Path], tmp_path: Path
) -> None:
    """--format is obeyed even when the output suffix says otherwise."""
    _stylize(target, images, tmp_path / "out.png", "--format", "jpeg")
    assert scripted.requests[0].options.output_format == pb.IMAGE_FORMAT_JPEG


def test_a_style_weight_suffix_sets_the_weight(
    target: str, scripted: ScriptedStyleTransfer, images: tuple[Path, Path], tmp_path: Path
) -> None:
    """STYLE:WEIGHT sends the style with that weight; a plain STYLE sends none."""
    content, style = images
    cli.main(
        [
            "stylize",
            str(content),
            f"{style}:0.25",
            str(style),
            "-o",
            str(tmp_path / "out.png"),
            "--server",
            target,
        ]
    )
    weighted, plain = scripted.requests[0].styles
    assert (weighted.image.data, weighted.weight) == (b"style-bytes", 0.25)
    assert not plain.HasField("weight")


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("wave.jpg", ("wave.jpg", None)),
        ("wave.jpg:0.5", ("wave.jpg", 0.5)),
        ("wave.jpg:2", ("wave.jpg", 2.0)),
        (r"C:\art\wave.jpg", (r"C:\art\wave.jpg", None)),
        (r"C:\art\wave.jpg:3", (r"C:\art\wave.jpg", 3.0)),
        ("dir:name/wave.jpg", ("dir:name/wave.jpg", None)),
    ],
)
def test_parse_style_splits_only_a_numeric_suffix(text: str, parsed: tuple[str, float | None]) -> None:
    """Only a last colon followed by a number separates a weight from the path."""
    assert cli.parse_style(text) == parsed


def test_parse_style_keeps_an_existing_file_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file whose own name ends in :NUMBER is taken as a path, not as a weight."""
    monkeypatch.chdir(tmp_path)
    Path("odd:2").write_bytes(b"x")
    assert cli.parse_style("odd:2") == ("odd:2", None)


def test_json_prints_one_object_per_event_in_order(
    target: str, images: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json prints each event as one JSON object per line, in the order of the stream."""
    _stylize(target, images, tmp_path / "out.png", "--json")
    lines = capsys.readouterr().out.splitlines()
    kinds = [next(iter(json.loads(line))) for line in lines]
    assert kinds == ["accepted", "progress", "progress", "progress", "result"]


def test_heartbeats_are_neither_printed_nor_drawn(
    target: str,
    scripted: ScriptedStyleTransfer,
    images: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Heartbeats in a Transfer stream leave the JSON lines and the progress bar as they were."""
    events = scripted.events
    scripted.events = [heartbeat(0), events[0], heartbeat(1), *events[1:]]
    assert _stylize(target, images, tmp_path / "out.json.png", "--json") == 0
    kinds = [next(iter(json.loads(line))) for line in capsys.readouterr().out.splitlines()]
    assert kinds == ["accepted", "progress", "progress", "progress", "result"]
    assert _stylize(target, images, tmp_path / "out.png") == 0
    assert "3/3" in capsys.readouterr().err


def test_json_replaces_image_bytes_with_their_length(
    target: str, images: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In --json output an image appears as its metadata and data_length, without the bytes."""
    _stylize(target, images, tmp_path / "out.png", "--json")
    result = json.loads(capsys.readouterr().out.splitlines()[-1])["result"]
    assert result["image"] == {
        "format": "IMAGE_FORMAT_PNG",
        "width": 4,
        "height": 3,
        "data_length": len(FAKE_IMAGE),
    }


def test_json_keeps_stderr_free_of_the_progress_bar(
    target: str, images: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --json nothing is drawn on stderr."""
    _stylize(target, images, tmp_path / "out.png", "--json")
    assert capsys.readouterr().err == ""


def test_preview_dir_asks_for_previews_and_writes_each(
    target: str, scripted: ScriptedStyleTransfer, images: tuple[Path, Path], tmp_path: Path
) -> None:
    """--preview-dir asks for a preview every 10 iterations and writes each one to DIR."""
    scripted.events = scripted_events(iterations=20, preview_every=10)
    previews = tmp_path / "previews"
    _stylize(target, images, tmp_path / "out.png", "--preview-dir", str(previews))
    assert scripted.requests[0].options.preview_every == 10
    assert sorted(p.name for p in previews.iterdir()) == ["preview-00010.png", "preview-00020.png"]
    assert (previews / "preview-00010.png").read_bytes() == FAKE_IMAGE


def test_preview_files_take_the_suffix_of_their_format(
    target: str, scripted: ScriptedStyleTransfer, images: tuple[Path, Path], tmp_path: Path
) -> None:
    """JPEG previews are written as .jpg files."""
    scripted.events = scripted_events(iterations=2, preview_every=2, output_format="jpeg")
    previews = tmp_path / "previews"
    _stylize(target, images, tmp_path / "out.jpg", "--preview-dir", str(previews))
    assert [p.name for p in previews.iterdir()] == ["preview-00002.jpg"]


def test_invalid_argument_exits_2_and_names_the_field(
    target: str,
    scripted: ScriptedStyleTransfer,
    images: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A request the server rejects exits 2, printing the code, message and offending field."""
    scripted.events = []
    scripted.error = rich_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid request",
        field_violations=[("options.iterations", "must be at most 10000")],
        reason="INVALID_ARGUMENT",
    )
    assert _stylize(target, images, tmp_path / "out.png", "--iterations", "99999") == 2
    err = capsys.readouterr().err
    assert "error: INVALID_ARGUMENT: invalid request" in err
    assert "  options.iterations: must be at most 10000" in err


def test_other_failures_exit_1(
    target: str,
    scripted: ScriptedStyleTransfer,
    images: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A failure that is not the caller's input, such as an unavailable backend, exits 1."""
    scripted.events = []
    scripted.error = rich_status(
        grpc.StatusCode.FAILED_PRECONDITION,
        "backend tensorflow is not installed",
        reason="BACKEND_UNAVAILABLE",
    )
    assert _stylize(target, images, tmp_path / "out.png") == 1
    assert "error: FAILED_PRECONDITION: backend tensorflow is not installed" in (capsys.readouterr().err)


def test_a_failed_job_writes_no_output(
    target: str, scripted: ScriptedStyleTransfer, images: tuple[Path, Path], tmp_path: Path
) -> None:
    """When the job fails midway, OUT is not created."""
    scripted.events = scripted.events[:2]
    scripted.error = rich_status(grpc.StatusCode.INTERNAL, "internal error")
    _stylize(target, images, tmp_path / "out.png")
    assert not (tmp_path / "out.png").exists()


def test_an_unreadable_input_exits_2(
    target: str,
    scripted: ScriptedStyleTransfer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A content file that does not exist exits 2 before anything is sent."""
    missing = tmp_path / "missing.png"
    assert _stylize(target, (missing, missing), tmp_path / "out.png") == 2
    assert f"error: cannot read {missing}" in capsys.readouterr().err
    assert scripted.requests == []


def test_a_missing_output_directory_exits_2(
    target: str, scripted: ScriptedStyleTransfer, images: tuple[Path, Path], tmp_path: Path
) -> None:
    """An OUT whose directory does not exist is refused before the job runs."""
    assert _stylize(target, images, tmp_path / "nowhere" / "out.png") == 2
    assert scripted.requests == []


def test_ctrl_c_cancels_the_job_and_exits_130(
    target: str,
    scripted: ScriptedStyleTransfer,
    images: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A KeyboardInterrupt during the job cancels the call on the server and exits 130."""
    scripted.hang = True

    def interrupt(self: object, event: pb.TransferEvent) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(_console.JsonReporter, "__call__", interrupt)
    assert _stylize(target, images, tmp_path / "out.png", "--json") == 130
    assert scripted.cancelled.wait(10)


def test_a_closed_stdout_cancels_the_job_quietly(
    target: str,
    scripted: ScriptedStyleTransfer,
    images: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """When the reader of --json output goes away, the job is cancelled and nothing is printed."""
    scripted.hang = True

    def broken_pipe(self: object, event: pb.TransferEvent) -> None:
        raise BrokenPipeError

    monkeypatch.setattr(_console.JsonReporter, "__call__", broken_pipe)
    assert _stylize(target, images, tmp_path / "out.png", "--json") == 1
    assert scripted.cancelled.wait(10)
    assert capsys.readouterr().err == ""


def test_the_server_defaults_to_the_environment_variable(
    target: str, images: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --server, the address comes from $STYLETRANSFER_SERVER."""
    monkeypatch.setenv(cli.SERVER_ENV, target)
    content, style = images
    assert cli.main(["stylize", str(content), str(style), "-o", str(tmp_path / "out.png")]) == 0


def test_info_json_prints_the_server_info(
    target: str, scripted: ScriptedStyleTransfer, capsys: pytest.CaptureFixture[str]
) -> None:
    """info --json prints ServerInfo as one JSON document with proto field names."""
    scripted.server_info = pb.ServerInfo(
        version="1.2.3", default_backend="pytorch", layers=["conv1_1", "relu1_1"]
    )
    assert cli.main(["info", "--json", "--server", target]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["version"], info["default_backend"]) == ("1.2.3", "pytorch")
    assert info["layers"] == ["conv1_1", "relu1_1"]


def test_info_describes_backends_and_defaults_for_people(
    target: str, scripted: ScriptedStyleTransfer, capsys: pytest.CaptureFixture[str]
) -> None:
    """info prints each backend's state and the defaults that are set."""
    scripted.server_info = pb.ServerInfo(
        version="1.2.3",
        backends=[
            pb.BackendInfo(name="pytorch", available=True, devices=["cpu"], framework_version="torch 2.14.1"),
            pb.BackendInfo(name="tensorflow", unavailable_reason="not installed"),
        ],
        defaults=pb.TransferOptions(iterations=500, optimizer=pb.OPTIMIZER_LBFGS),
    )
    assert cli.main(["info", "--server", target]) == 0
    out = capsys.readouterr().out
    assert "styletransfer server 1.2.3" in out
    assert "  pytorch: available, torch 2.14.1; devices: cpu" in out
    assert "  tensorflow: unavailable: not installed" in out
    assert "  iterations: 500" in out
    assert "  optimizer: lbfgs" in out


def test_info_tells_quantized_weights_and_a_precision_fallback(
    target: str, scripted: ScriptedStyleTransfer, capsys: pytest.CaptureFixture[str]
) -> None:
    """info says when the weights are a quantized copy and when a backend runs another precision."""
    scripted.server_info = pb.ServerInfo(
        backends=[
            pb.BackendInfo(
                name="pytorch",
                available=True,
                devices=["cpu"],
                framework_version="torch 2.14.1",
                precision="float32",
                requested_precision="bfloat16",
                precision_reason="this CPU lacks avx512bw",
            )
        ],
        weights=pb.WeightsInfo(source="keras-caffe-vgg19-q8", quantization="kmeans-256-per-layer"),
    )
    assert cli.main(["info", "--server", target]) == 0
    out = capsys.readouterr().out
    assert "precision float32 (asked for bfloat16: this CPU lacks avx512bw)" in out
    assert "weights: keras-caffe-vgg19-q8" in out
    assert "quantized (kmeans-256-per-layer)" in out


def test_health_prints_serving_and_exits_0(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    """health prints the server's status and exits 0 when it is SERVING."""
    assert cli.main(["health", "--server", target]) == 0
    assert capsys.readouterr().out == "SERVING\n"


def test_health_exits_1_when_not_serving(capsys: pytest.CaptureFixture[str]) -> None:
    """health exits 1 when the server reports NOT_SERVING."""
    server, port = serve(ScriptedStyleTransfer(), serving_status="NOT_SERVING")
    try:
        assert cli.main(["health", "--server", f"127.0.0.1:{port}"]) == 1
    finally:
        server.stop(None)
    assert capsys.readouterr().out == "NOT_SERVING\n"
