"""Option resolution: defaults fill the gaps, every override is range-checked and named on error."""

from __future__ import annotations

import math

import numpy as np
import pytest
from imaging import encode, image_bytes

from backends.errors import InvalidArgument
from backends.options import Init, Optimizer, StyleOptions
from service.jobspec import JobRequest, StyleSource, build_spec, resolve_options
from service.options import ImageFormat, JobOptions
from service.settings import Settings

SETTINGS = Settings(max_size=1024, max_iterations=2000, max_styles=2)


def _resolve(**overrides: object) -> JobOptions:
    return resolve_options(overrides, JobOptions(), SETTINGS)


def test_no_overrides_gives_the_defaults() -> None:
    """An empty request uses the documented defaults."""
    options = _resolve()
    assert options == JobOptions()
    assert options.style.iterations == 500 and options.max_size == 512
    assert options.style.style_weight == 1e3 and options.style.content_weight == 1.0
    assert options.style.optimizer is Optimizer.LBFGS and options.style.init is Init.CONTENT
    assert options.output_format is ImageFormat.PNG


def test_overrides_reach_their_fields() -> None:
    """Algorithm overrides land in StyleOptions, output and placement overrides in JobOptions."""
    options = _resolve(
        iterations=7,
        style_weight=5.0,
        optimizer=Optimizer.ADAM,
        max_size=128,
        output_format=ImageFormat.JPEG,
        style_layers=["relu1_1", "relu2_1"],
    )
    assert options.style.iterations == 7 and options.style.style_weight == 5.0
    assert options.style.optimizer is Optimizer.ADAM
    assert options.style.style_layers == ("relu1_1", "relu2_1")
    assert options.max_size == 128 and options.output_format is ImageFormat.JPEG


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("iterations", 0),
        ("iterations", 2001),
        ("max_size", 15),
        ("max_size", 1025),
        ("content_weight", -0.1),
        ("style_weight", math.inf),
        ("tv_weight", math.nan),
        ("learning_rate", 0.0),
        ("output_quality", 0),
        ("preview_max_size", 8),
    ],
)
def test_out_of_range_values_are_rejected_by_name(field: str, value: float) -> None:
    """Each numeric option has a range; a value outside it names options.<field>."""
    with pytest.raises(InvalidArgument) as caught:
        _resolve(**{field: value})
    assert caught.value.field == f"options.{field}"


def test_unknown_layer_is_named_with_its_index() -> None:
    """The error points at the exact list element."""
    with pytest.raises(InvalidArgument) as caught:
        _resolve(content_layers=["conv4_2", "conv4_9"])
    assert caught.value.field == "options.content_layers[1]"


def test_duplicate_layers_are_rejected() -> None:
    """A style layer listed twice is an error, not a silent double weight."""
    with pytest.raises(InvalidArgument, match="twice"):
        _resolve(style_layers=["conv1_1", "conv1_1"])


def test_layer_weights_must_match_the_layers() -> None:
    """style_layer_weights needs one value per style layer."""
    with pytest.raises(InvalidArgument) as caught:
        _resolve(style_layer_weights=[1.0])
    assert caught.value.field == "options.style_layer_weights"


def test_layer_weights_are_normalized() -> None:
    """w_l are normalized to sum to 1; unset they are equal."""
    options = _resolve(style_layers=["conv1_1", "conv2_1"], style_layer_weights=[3.0, 1.0])
    assert options.style.resolved_style_layer_weights == (0.75, 0.25)
    assert StyleOptions().resolved_style_layer_weights == (0.2,) * 5


def _request(*styles: StyleSource, content: bytes | None = None) -> JobRequest:
    return JobRequest(content or image_bytes(1, 200, 100), styles, {})


def test_output_never_exceeds_the_content_size() -> None:
    """A small content image is not upscaled to max_size."""
    spec = build_spec(
        _request(StyleSource(image_bytes(2), None), content=image_bytes(1, 40, 20)),
        JobOptions(max_size=512),
        SETTINGS,
    )
    assert spec.content.shape == (20, 40, 3)


def test_content_is_resized_to_max_size_and_styles_to_match() -> None:
    """The long side becomes max_size; style images get the same long side."""
    spec = build_spec(_request(StyleSource(image_bytes(2, 30, 90), None)), JobOptions(max_size=64), SETTINGS)
    assert spec.content.shape == (32, 64, 3)
    assert spec.styles[0].image.shape == (64, 21, 3)


def test_style_weights_are_normalized() -> None:
    """Blend weights 3 and 1 become 0.75 and 0.25; an unset weight counts as 1."""
    spec = build_spec(
        _request(StyleSource(image_bytes(2), 3.0), StyleSource(image_bytes(3), None)),
        JobOptions(max_size=64),
        Settings(max_styles=4),
    )
    assert [s.weight for s in spec.styles] == [0.75, 0.25]


@pytest.mark.parametrize("weight", [0.0, -1.0, math.nan])
def test_bad_style_weight_is_named(weight: float) -> None:
    """A style weight must be a positive finite number."""
    with pytest.raises(InvalidArgument) as caught:
        build_spec(_request(StyleSource(image_bytes(2), weight)), JobOptions(max_size=64), SETTINGS)
    assert caught.value.field == "styles[0].weight"


def test_too_many_styles_are_rejected() -> None:
    """More style images than max_styles is an error on `styles`."""
    styles = [StyleSource(image_bytes(i), None) for i in range(3)]
    with pytest.raises(InvalidArgument) as caught:
        build_spec(_request(*styles), JobOptions(max_size=64), SETTINGS)
    assert caught.value.field == "styles"


def test_too_thin_output_is_rejected() -> None:
    """A 400x10 content at max_size 64 would be 64x2: too small for conv5_1, refused up front."""
    with pytest.raises(InvalidArgument, match="at least 16"):
        build_spec(
            _request(StyleSource(image_bytes(2), None), content=image_bytes(1, 400, 10)),
            JobOptions(max_size=64),
            SETTINGS,
        )


def _with(**style: object) -> JobOptions:
    return JobOptions(max_size=64, style=StyleOptions(**style))  # type: ignore[arg-type]


@pytest.mark.parametrize(("scale", "long_side"), [(0.5, 32), (1.0, 64), (2.0, 128)])
def test_style_scale_sizes_the_style_relative_to_the_output(scale: float, long_side: int) -> None:
    """style_scale 0.5 gives a style whose long side is half the output's; 2 gives twice (the style
    may be enlarged: its strokes then come out smaller)."""
    spec = build_spec(_request(StyleSource(image_bytes(2, 60, 90), None)), _with(style_scale=scale), SETTINGS)
    assert max(spec.enlarged_styles()[0].image.shape[:2]) == long_side
    # Held at its own size while the job waits when that is smaller: enlarged only to run.
    assert max(spec.styles[0].image.shape[:2]) == min(long_side, 90)
    assert spec.content.shape == (32, 64, 3)


def test_every_header_check_and_the_admission_come_before_any_image_is_decoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The admission hook sees the job's sizes from the headers (output, the styles at their
    working size, the bytes held while waiting) while nothing has been decoded; refusing there
    means nothing ever is."""
    from service import images
    from service.admission import Shape

    decoded: list[str] = []
    real_decode = images.decode

    def counting(data: bytes, field: str, max_pixels: int) -> object:
        decoded.append(field)
        return real_decode(data, field, max_pixels)

    monkeypatch.setattr(images, "decode", counting)
    shapes: list[Shape] = []

    class Refused(Exception):
        pass

    def admit(shape: Shape) -> None:
        assert decoded == []
        shapes.append(shape)
        raise Refused

    request = _request(StyleSource(image_bytes(2, 16, 16), None), StyleSource(image_bytes(3, 400, 200), None))
    with pytest.raises(Refused):
        build_spec(request, _with(style_scale=4.0), SETTINGS, admit)
    assert decoded == []
    (shape,) = shapes
    assert shape.output == (32, 64)
    assert shape.styles == ((256, 256), (128, 256))  # 4x the output's long side
    # Held: the content at its size, a 16 px style as it came, the other shrunk to 256 px.
    assert shape.held == 3 * (32 * 64 + 16 * 16 + 128 * 256)
    spec = build_spec(request, _with(style_scale=4.0), SETTINGS, lambda shape: None)
    assert [s.image.shape[:2] for s in spec.styles] == [(16, 16), (128, 256)]
    assert [s.image.shape[:2] for s in spec.enlarged_styles()] == [(256, 256), (128, 256)]


def test_a_mask_becomes_an_output_sized_map_of_its_luminance() -> None:
    """A mask image of another size is stretched to the output and read as luminance in [0, 1]."""
    mask = np.zeros((10, 30, 3), np.uint8)
    mask[:, :15] = 255
    spec = build_spec(
        _request(StyleSource(image_bytes(2), None, encode(mask))), JobOptions(max_size=64), SETTINGS
    )
    got = spec.styles[0].mask
    assert got is not None and got.shape == (32, 64) and got.dtype == np.float32
    assert got[:, :28].min() > 0.95 and got[:, 36:].max() < 0.05


def test_an_all_black_mask_is_refused() -> None:
    """A style that applies nowhere is a mistake, named on its mask."""
    black = encode(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(InvalidArgument) as caught:
        build_spec(_request(StyleSource(image_bytes(2), None, black)), JobOptions(max_size=64), SETTINGS)
    assert caught.value.field == "styles[0].mask.data"


def test_init_image_goes_with_init_image_only() -> None:
    """init=IMAGE needs init_image, which is stretched to the output; init_image alone is refused."""
    style = StyleSource(image_bytes(2), None)
    with pytest.raises(InvalidArgument) as caught:
        build_spec(_request(style), _with(init=Init.IMAGE), SETTINGS)
    assert caught.value.field == "init_image"
    request = JobRequest(image_bytes(1, 200, 100), (style,), {}, image_bytes(5, 20, 20))
    spec = build_spec(request, _with(init=Init.IMAGE), SETTINGS)
    assert spec.init_image is not None and spec.init_image.shape == (32, 64, 3)
    with pytest.raises(InvalidArgument) as caught:
        build_spec(request, _with(), SETTINGS)
    assert caught.value.field == "init_image"


def test_scale_iterations_set_the_iterations() -> None:
    """scale_iterations [100, 50] make 150 iterations; a contradicting `iterations` is refused."""
    assert _resolve(scale_iterations=[100, 50]).style.iterations == 150
    assert _resolve(scale_iterations=[100, 50], iterations=150).style.scale_iterations == (100, 50)
    with pytest.raises(InvalidArgument) as caught:
        _resolve(scale_iterations=[100, 50], iterations=10)
    assert caught.value.field == "options.iterations"
    with pytest.raises(InvalidArgument) as caught:
        _resolve(scale_iterations=[1500, 600])
    assert caught.value.field == "options.scale_iterations"


def test_a_coarsest_scale_too_small_for_the_layers_is_refused() -> None:
    """Three scales of a 64 x 32 output at factor 2 make a 16 x 8 coarsest scale: below conv5_1's 16."""
    with pytest.raises(InvalidArgument, match="coarsest of 3 scales would be 16x8") as caught:
        build_spec(_request(StyleSource(image_bytes(2), None)), _with(scale_iterations=(5, 5, 5)), SETTINGS)
    assert caught.value.field == "options.scale_iterations"


def test_tiles_are_checked() -> None:
    """Tiles below 64 px, overlaps above half a tile, and tiled jobs over max_iterations are refused."""
    with pytest.raises(InvalidArgument) as caught:
        _resolve(tile_size=32)
    assert caught.value.field == "options.tile_size"
    with pytest.raises(InvalidArgument) as caught:
        _resolve(tile_size=64, tile_overlap=40)
    assert caught.value.field == "options.tile_overlap"
    content = image_bytes(1, 1024, 1024)
    options = JobOptions(max_size=1024, style=StyleOptions(iterations=500, tile_size=128))
    with pytest.raises(InvalidArgument, match="iterations in all") as caught:
        build_spec(_request(StyleSource(image_bytes(2), None), content=content), options, SETTINGS)
    assert caught.value.field == "options.tile_size"


def test_a_style_too_small_at_the_coarsest_scale_is_refused() -> None:
    """Styles shrink with the scales: three scales at factor 1.5 make the coarsest 28 px, where a
    64 x 32 style is 14 px on its short side, too small for conv5_1: refused, not crashed on."""
    options = _with(scale_iterations=(5, 5, 5), scale_factor=1.5)
    build_spec(
        _request(StyleSource(image_bytes(2, 64, 64), None), content=image_bytes(1, 64, 64)), options, SETTINGS
    )
    with pytest.raises(InvalidArgument, match="coarsest scale") as caught:
        build_spec(
            _request(StyleSource(image_bytes(2, 64, 32), None), content=image_bytes(1, 64, 64)),
            options,
            SETTINGS,
        )
    assert caught.value.field == "styles[0].image.data"
