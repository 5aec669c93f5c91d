"""The Python client library against a scripted in-process server."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import get_args

import grpc
import pytest
from styletransfer.client import (
    ProtocolError,
    StyleTransferClient,
    StyleTransferError,
    TransferOptions,
    TransferOptionsKwargs,
)
from styletransfer.client.options import (
    FORMATS,
    INITS,
    JOB_STATES,
    OPTIMIZERS,
    FormatName,
    InitName,
    JobStateName,
    OptimizerName,
)
from styletransfer.client.testing import (
    FAKE_IMAGE,
    ScriptedStyleTransfer,
    heartbeat,
    rich_status,
    serve,
)
from styletransfer.v1 import style_transfer_pb2 as pb

CONTENT = b"content-bytes"
STYLE = b"style-bytes"

EVERY_OPTION = TransferOptions(
    iterations=7,
    size=128,
    content_weight=2.0,
    style_weight=1e4,
    tv_weight=0.5,
    content_layers=["conv4_2"],
    style_layers=["conv1_1", "relu2_1"],
    style_layer_weights=[0.25, 0.75],
    optimizer="adam",
    learning_rate=3.0,
    init="noise",
    seed=42,
    output_format="webp",
    output_quality=80,
    preview_every=5,
    preview_max_size=64,
    backend="pytorch",
    device="cpu",
    max_duration_seconds=30.0,
)


def _rejecting(scripted: ScriptedStyleTransfer, status: grpc.Status) -> None:
    """Make ``scripted`` fail every Transfer at once with ``status``."""
    scripted.events = []
    scripted.error = status


def test_unset_options_are_left_out_of_the_request(
    client: StyleTransferClient, scripted: ScriptedStyleTransfer
) -> None:
    """Options not given are absent from the request, so the server applies its defaults."""
    client.stylize(CONTENT, [STYLE])
    options = scripted.requests[0].options
    for field in options.DESCRIPTOR.fields:
        if field.has_presence:
            assert not options.HasField(field.name), field.name
        else:  # repeated fields and enums, whose "unset" is empty or UNSPECIFIED (0)
            assert not getattr(options, field.name), field.name


def test_set_options_are_carried_into_the_request(
    client: StyleTransferClient, scripted: ScriptedStyleTransfer
) -> None:
    """Every option given as a keyword arrives in the request with its value."""
    client.stylize(CONTENT, [STYLE], **dataclasses.asdict(EVERY_OPTION))
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
        output_format=pb.IMAGE_FORMAT_WEBP,
        output_quality=80,
        preview_every=5,
        preview_max_size=64,
        backend="pytorch",
        device="cpu",
        max_duration_seconds=30.0,
    )


def test_keyword_options_override_an_options_object(
    client: StyleTransferClient, scripted: ScriptedStyleTransfer
) -> None:
    """Keywords win over the same field of the options object; its other fields are kept."""
    client.stylize(CONTENT, [STYLE], TransferOptions(iterations=5, seed=1), seed=2)
    options = scripted.requests[0].options
    assert (options.iterations, options.seed) == (5, 2)


def test_zero_is_sent_as_a_set_value() -> None:
    """An option set to zero is present in the proto, unlike one left unset."""
    options = TransferOptions(preview_every=0, tv_weight=0.0).to_proto()
    assert options.HasField("preview_every")
    assert options.HasField("tv_weight")


def test_options_survive_a_round_trip_through_the_proto() -> None:
    """Reading back the proto of a set of options gives the same options."""
    assert TransferOptions.from_proto(EVERY_OPTION.to_proto()) == EVERY_OPTION


def test_options_reject_an_unknown_enum_name() -> None:
    """An optimizer name the API does not know fails before any call."""
    with pytest.raises(ValueError, match="optimizer"):
        TransferOptions(optimizer="sgd")  # type: ignore[arg-type]


def test_options_reject_a_string_as_a_layer_list() -> None:
    """A bare string for a list of layers is refused rather than split into letters."""
    with pytest.raises(TypeError, match="content_layers"):
        TransferOptions(content_layers="conv4_2")


@pytest.mark.parametrize(
    ("literal", "table"),
    [(OptimizerName, OPTIMIZERS), (InitName, INITS), (FormatName, FORMATS), (JobStateName, JOB_STATES)],
)
def test_enum_names_match_the_proto(literal: object, table: dict[str, int]) -> None:
    """The names the type hints allow are exactly the values the proto enum defines."""
    assert set(get_args(literal)) == set(table)


def test_keyword_arguments_cover_every_option() -> None:
    """The keyword-argument type lists the same fields as TransferOptions."""
    fields = {field.name for field in dataclasses.fields(TransferOptions)}
    assert set(TransferOptionsKwargs.__annotations__) == fields


def test_style_weights_are_sent_only_when_given(
    client: StyleTransferClient, scripted: ScriptedStyleTransfer
) -> None:
    """A (style, weight) pair carries its weight; a bare style leaves the weight unset."""
    client.stylize(CONTENT, [(b"first", 3.0), b"second"])
    first, second = scripted.requests[0].styles
    assert (first.image.data, first.weight) == (b"first", 3.0)
    assert second.image.data == b"second"
    assert not second.HasField("weight")


def test_paths_and_bytes_are_both_accepted(
    client: StyleTransferClient, scripted: ScriptedStyleTransfer, tmp_path: Path
) -> None:
    """An image given as a Path or a str path is read; bytes are sent as they are."""
    (tmp_path / "content.png").write_bytes(b"from a Path")
    (tmp_path / "style.png").write_bytes(b"from a str")
    client.stylize(tmp_path / "content.png", [str(tmp_path / "style.png"), STYLE])
    request = scripted.requests[0]
    assert request.content.data == b"from a Path"
    assert [style.image.data for style in request.styles] == [b"from a str", STYLE]


def test_a_single_style_outside_a_list_is_rejected(
    client: StyleTransferClient, scripted: ScriptedStyleTransfer
) -> None:
    """Passing one style image instead of a sequence raises TypeError and sends nothing."""
    with pytest.raises(TypeError, match="sequence"):
        client.transfer(CONTENT, "style.png")
    assert scripted.requests == []


def test_a_missing_file_raises_before_any_call(
    client: StyleTransferClient, scripted: ScriptedStyleTransfer, tmp_path: Path
) -> None:
    """A content path that does not exist raises FileNotFoundError from transfer itself."""
    with pytest.raises(FileNotFoundError):
        client.transfer(tmp_path / "missing.png", [STYLE])
    assert scripted.requests == []


def test_transfer_yields_the_servers_events_in_order(
    client: StyleTransferClient, scripted: ScriptedStyleTransfer
) -> None:
    """The stream yields exactly the events the server sent, in the order it sent them."""
    with client.transfer(CONTENT, [STYLE]) as stream:
        assert list(stream) == scripted.events


def test_stylize_returns_the_result(client: StyleTransferClient, scripted: ScriptedStyleTransfer) -> None:
    """stylize returns the Result message of the last event."""
    result = client.stylize(CONTENT, [STYLE])
    assert result == scripted.events[-1].result
    assert result.image.data == FAKE_IMAGE


def test_stylize_hands_every_event_to_on_event(
    client: StyleTransferClient, scripted: ScriptedStyleTransfer
) -> None:
    """on_event sees each event of the job, the result included."""
    seen: list[pb.TransferEvent] = []
    client.stylize(CONTENT, [STYLE], on_event=seen.append)
    assert seen == scripted.events


def test_stylize_returns_the_result_through_heartbeats(
    client: StyleTransferClient, scripted: ScriptedStyleTransfer
) -> None:
    """Heartbeats anywhere in the stream reach on_event and change nothing else."""
    events = scripted.events
    scripted.events = [heartbeat(0), events[0], heartbeat(1), *events[1:-1], heartbeat(4), events[-1]]
    seen: list[pb.TransferEvent] = []
    assert client.stylize(CONTENT, [STYLE], on_event=seen.append) == events[-1].result
    assert [e.WhichOneof("event") for e in seen].count("heartbeat") == 3


def test_a_transfer_without_a_key_sends_none(
    client: StyleTransferClient, scripted: ScriptedStyleTransfer
) -> None:
    """By default the request carries an empty idempotency key, which the server ignores."""
    client.stylize(CONTENT, [STYLE])
    assert scripted.requests[0].idempotency_key == ""


def test_the_idempotency_key_is_sent_with_the_transfer(
    client: StyleTransferClient, scripted: ScriptedStyleTransfer
) -> None:
    """idempotency_key is carried into the TransferRequest beside the options."""
    client.stylize(CONTENT, [STYLE], idempotency_key="retry-7", iterations=2)
    request = scripted.requests[0]
    assert (request.idempotency_key, request.options.iterations) == ("retry-7", 2)


def test_the_stream_remembers_the_last_sequence(
    client: StyleTransferClient, scripted: ScriptedStyleTransfer
) -> None:
    """After reading the stream, last_sequence is the number of the last event."""
    with client.transfer(CONTENT, [STYLE]) as stream:
        list(stream)
    assert stream.last_sequence == scripted.events[-1].sequence == 5


def test_stylize_raises_when_the_stream_ends_without_a_result(
    client: StyleTransferClient, scripted: ScriptedStyleTransfer
) -> None:
    """A stream that ends OK but has no result is a ProtocolError."""
    scripted.events = scripted.events[:-1]
    with pytest.raises(ProtocolError):
        client.stylize(CONTENT, [STYLE])


def test_invalid_argument_carries_field_violations_and_error_info(
    client: StyleTransferClient, scripted: ScriptedStyleTransfer
) -> None:
    """A rejected request raises with each BadRequest violation and the ErrorInfo reason."""
    violations = [
        ("options.iterations", "must be at most 10000"),
        ("styles[0].image", "not a PNG, JPEG or WebP image"),
    ]
    _rejecting(
        scripted,
        rich_status(
            grpc.StatusCode.INVALID_ARGUMENT,
            "invalid request",
            field_violations=violations,
            reason="INVALID_ARGUMENT",
        ),
    )
    with pytest.raises(StyleTransferError) as caught:
        client.stylize(CONTENT, [STYLE])
    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.message == "invalid request"
    assert error.field_violations == violations
    assert (error.reason, error.domain) == ("INVALID_ARGUMENT", "styletransfer")
    assert error.retry_delay is None


def test_resource_exhausted_carries_the_retry_delay(
    client: StyleTransferClient, scripted: ScriptedStyleTransfer
) -> None:
    """A full server's RetryInfo becomes retry_delay in seconds."""
    _rejecting(
        scripted,
        rich_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", reason="QUEUE_FULL", retry_delay=2.5),
    )
    with pytest.raises(StyleTransferError) as caught:
        client.stylize(CONTENT, [STYLE])
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.retry_delay == 2.5
    assert caught.value.reason == "QUEUE_FULL"


def test_failed_precondition_has_a_reason_and_no_violations(
    client: StyleTransferClient, scripted: ScriptedStyleTransfer
) -> None:
    """An unavailable backend raises FAILED_PRECONDITION with its reason and no field list."""
    _rejecting(
        scripted,
        rich_status(
            grpc.StatusCode.FAILED_PRECONDITION,
            "backend tensorflow is not installed",
            reason="BACKEND_UNAVAILABLE",
        ),
    )
    with pytest.raises(StyleTransferError) as caught:
        client.stylize(CONTENT, [STYLE], backend="tensorflow")
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.reason == "BACKEND_UNAVAILABLE"
    assert caught.value.field_violations == []


def test_an_error_after_some_events_is_raised_after_them(
    client: StyleTransferClient, scripted: ScriptedStyleTransfer
) -> None:
    """Events sent before a job failed are yielded, then the failure is raised."""
    scripted.events = scripted.events[:2]
    scripted.error = rich_status(grpc.StatusCode.INTERNAL, "internal error", reason="INTERNAL")
    received: list[pb.TransferEvent] = []
    with pytest.raises(StyleTransferError) as caught, client.transfer(CONTENT, [STYLE]) as stream:
        received.extend(stream)
    assert received == scripted.events
    assert caught.value.code == grpc.StatusCode.INTERNAL


def test_an_unreachable_server_raises_unavailable() -> None:
    """Calling a server that is gone raises UNAVAILABLE without rich details."""
    server, port = serve(ScriptedStyleTransfer())
    server.stop(None).wait()
    with StyleTransferClient(f"127.0.0.1:{port}") as gone, pytest.raises(StyleTransferError) as caught:
        gone.server_info()
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert (caught.value.field_violations, caught.value.reason) == ([], None)


def test_error_text_names_the_code_the_message_and_the_fields() -> None:
    """str() of an error reads CODE: message; field: description."""
    error = StyleTransferError(
        grpc.StatusCode.INVALID_ARGUMENT, "invalid request", [("content", "empty image")]
    )
    assert str(error) == "INVALID_ARGUMENT: invalid request; content: empty image"


def test_leaving_the_stream_early_cancels_the_job(
    client: StyleTransferClient, scripted: ScriptedStyleTransfer
) -> None:
    """Exiting the stream's with-block before the end cancels the call on the server."""
    scripted.hang = True
    with client.transfer(CONTENT, [STYLE]) as stream:
        assert next(stream).HasField("accepted")
    assert scripted.cancelled.wait(10)


def test_the_client_timeout_bounds_each_call(target: str, scripted: ScriptedStyleTransfer) -> None:
    """A call that outlives the client's default timeout fails with DEADLINE_EXCEEDED."""
    scripted.hang = True
    with StyleTransferClient(target, timeout=0.2) as hasty, pytest.raises(StyleTransferError) as caught:
        hasty.stylize(CONTENT, [STYLE])
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_request_over_the_message_limit_is_refused(target: str, scripted: ScriptedStyleTransfer) -> None:
    """A request larger than max_message_bytes fails with RESOURCE_EXHAUSTED and never arrives."""
    with (
        StyleTransferClient(target, max_message_bytes=1024) as small,
        pytest.raises(StyleTransferError) as caught,
    ):
        small.stylize(b"x" * 4096, [STYLE])
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert scripted.requests == []


def test_server_info_returns_the_servers_description(
    client: StyleTransferClient, scripted: ScriptedStyleTransfer
) -> None:
    """server_info returns the ServerInfo message the server sent."""
    scripted.server_info = pb.ServerInfo(version="1.2.3", default_backend="pytorch")
    assert client.server_info() == scripted.server_info


@pytest.mark.parametrize("status", ["SERVING", "NOT_SERVING"])
def test_health_reports_the_serving_status(status: str) -> None:
    """health returns the grpc.health.v1 status name the server reports."""
    server, port = serve(ScriptedStyleTransfer(), serving_status=status)
    try:
        with StyleTransferClient(f"127.0.0.1:{port}") as checker:
            assert checker.health() == status
            assert checker.health("styletransfer.v1.StyleTransfer") == status
    finally:
        server.stop(None)


def test_a_closed_client_refuses_calls(target: str) -> None:
    """After the with-block the channel is closed and calls fail at once."""
    with StyleTransferClient(target) as closing:
        pass
    with pytest.raises(ValueError, match="closed channel"):
        closing.server_info()
