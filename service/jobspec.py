"""Turning a caller's request (plain values, as the servicer extracted them) into a checked job.

Every rule a request must satisfy lives here, each failure naming the request field at fault.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, cast, get_type_hints

import numpy as np

from backends.base import RGBImage, StyleInput
from backends.driver import min_side, scale_sizes, total_iterations
from backends.errors import InvalidArgument
from backends.options import Init, StyleOptions
from backends.vgg import LOSS_LAYER_NAMES
from service import images
from service.admission import Estimate, Shape, estimate_shape, fitted
from service.options import JobOptions
from service.settings import Settings


@dataclass(frozen=True)
class StyleSource:
    """One encoded style image, its blend weight (None: the default of 1) and its mask, if any."""

    data: bytes
    weight: float | None
    mask: bytes | None = None


@dataclass(frozen=True)
class JobRequest:
    """A request as plain values. `overrides` holds only the options the caller set."""

    content: bytes
    styles: tuple[StyleSource, ...]
    overrides: Mapping[str, Any]
    init_image: bytes | None = None


@dataclass(frozen=True)
class JobSpec:
    """A checked job: decoded, resized images and options with every value resolved."""

    content: RGBImage
    styles: tuple[StyleInput, ...]
    options: JobOptions
    init_image: RGBImage | None = None  # at the output size
    # The long side each style image runs at (the output's, times style_scale). A smaller image
    # is held as decoded and enlarged only when the job starts (`enlarged_styles`); empty: as held.
    style_sides: tuple[int, ...] = ()

    def enlarged_styles(self) -> tuple[StyleInput, ...]:
        """The style images at the size the job runs them."""
        if not self.style_sides:
            return self.styles
        return tuple(
            replace(style, image=images.enlarge(cast(RGBImage, style.image), side))
            for style, side in zip(self.styles, self.style_sides, strict=True)
        )

    def shape(self) -> Shape:
        """The sizes that decide the job's memory (`admission.Shape`)."""
        held = self.content.nbytes + sum(
            s.image.nbytes + (s.mask.nbytes if s.mask is not None else 0) for s in self.styles
        )
        if self.init_image is not None:
            held += self.init_image.nbytes
        sides = self.style_sides or tuple(max(s.image.shape[:2]) for s in self.styles)
        styles = tuple(
            fitted(s.image.shape[0], s.image.shape[1], side)
            for s, side in zip(self.styles, sides, strict=True)
        )
        return Shape((int(self.content.shape[0]), int(self.content.shape[1])), styles, held)

    def estimate(self) -> Estimate:
        """The memory the job is expected to take (the model in `service/admission.py`)."""
        return estimate_shape(self.options.style, self.shape())


def _number(
    low: float, high: float, *, integer: bool = False, low_open: bool = False
) -> Callable[[str, Any], Any]:
    def check(field: str, value: Any) -> Any:
        if not math.isfinite(value):
            raise InvalidArgument(field, "must be a finite number")
        if value < low or value > high or (low_open and value == low):
            bracket = "(" if low_open else "["
            raise InvalidArgument(field, f"{value} is outside {bracket}{low:g}, {high:g}]")
        return int(value) if integer else float(value)

    return check


def _layers(field: str, value: Any) -> tuple[str, ...]:
    names = tuple(value)
    for i, name in enumerate(names):
        if name not in LOSS_LAYER_NAMES:
            raise InvalidArgument(
                f"{field}[{i}]", f"unknown layer {name!r}; use convB_N or reluB_N (e.g. conv4_2, relu1_1)"
            )
    if len(set(names)) != len(names):
        raise InvalidArgument(field, "lists a layer twice")
    return names


def _layer_weights(field: str, value: Any) -> tuple[float, ...]:
    weights = tuple(float(w) for w in value)
    for i, weight in enumerate(weights):
        if not math.isfinite(weight) or weight < 0:
            raise InvalidArgument(f"{field}[{i}]", "must be a finite number >= 0")
    if weights and sum(weights) <= 0:
        raise InvalidArgument(field, "must not all be zero")
    if not math.isfinite(sum(weights)):
        raise InvalidArgument(field, "add up to more than a float holds; scale them down (only ratios count)")
    return weights


def _iterations_list(high: int) -> Callable[[str, Any], tuple[int, ...]]:
    def check(field: str, value: Any) -> tuple[int, ...]:
        counts = tuple(value)
        for i, count in enumerate(counts):
            if not 1 <= count <= high:
                raise InvalidArgument(f"{field}[{i}]", f"{count} is outside [1, {high}]")
        if len(counts) > MAX_SCALES:
            raise InvalidArgument(field, f"{len(counts)} scales; at most {MAX_SCALES} are allowed")
        return counts

    return check


def _tile_size(field: str, value: Any) -> int:
    if value != 0 and value < MIN_TILE:
        raise InvalidArgument(field, f"{value} is below {MIN_TILE}; use 0 to turn tiling off")
    return int(value)


MAX_SCALES = 8
MIN_TILE = 64


def _rules(settings: Settings) -> dict[str, Callable[[str, Any], Any]]:
    inf = math.inf
    return {
        "iterations": _number(1, settings.max_iterations, integer=True),
        "max_size": _number(16, settings.max_size, integer=True),
        "content_weight": _number(0, inf),
        "style_weight": _number(0, inf),
        "tv_weight": _number(0, inf),
        "content_layers": _layers,
        "style_layers": _layers,
        "style_layer_weights": _layer_weights,
        "learning_rate": _number(0, inf, low_open=True),
        "seed": _number(0, 2**64 - 1, integer=True),
        "output_quality": _number(1, 100, integer=True),
        "preview_every": _number(0, settings.max_iterations, integer=True),
        "preview_max_size": _number(16, 4096, integer=True),
        "backend": lambda f, v: str(v),
        "device": lambda f, v: str(v),
        "max_duration_seconds": _number(0, 7 * 24 * 3600, low_open=True),
        "style_scale": _number(0, 4, low_open=True),
        "scale_iterations": _iterations_list(settings.max_iterations),
        "scale_factor": _number(1.1, 4),
        "tile_size": _tile_size,
        "tile_overlap": _number(0, 1024, integer=True),
    }


STYLE_FIELDS = set(StyleOptions.__dataclass_fields__)
"""The options that shape the optimization (the rest are the job's: output and placement)."""
_TYPES = {**get_type_hints(JobOptions), **get_type_hints(StyleOptions)}


def _rule(name: str, rules: Mapping[str, Callable[[str, Any], Any]]) -> Callable[[str, Any], Any]:
    """How an option is checked: its rule, or for an enum its type (the value is the member's name)."""
    if name in rules:
        return rules[name]
    kind = _TYPES[name]
    if isinstance(kind, type) and issubclass(kind, StrEnum):

        def member(field: str, value: Any) -> Any:
            try:
                return kind(value)
            except ValueError:
                raise InvalidArgument(field, f"unknown value {value!r}") from None

        return member
    raise KeyError(f"no rule checks option {name!r}")


def resolve_options(overrides: Mapping[str, Any], defaults: JobOptions, settings: Settings) -> JobOptions:
    """Defaults with the caller's overrides applied, each checked; backend and device stay names."""
    rules = _rules(settings)
    style: dict[str, Any] = {}
    job: dict[str, Any] = {}
    for name, value in overrides.items():
        checked = _rule(name, rules)(f"options.{name}", value)
        (style if name in STYLE_FIELDS else job)[name] = checked
    scales = style.get("scale_iterations")
    if scales:
        if "iterations" in style and style["iterations"] != sum(scales):
            raise InvalidArgument(
                "options.iterations",
                f"is {style['iterations']} but scale_iterations sum to {sum(scales)}; set one of them",
            )
        style["iterations"] = sum(scales)
    options = replace(defaults, style=replace(defaults.style, **style), **job)
    if options.style.iterations > settings.max_iterations:
        raise InvalidArgument(
            "options.scale_iterations",
            f"sum to {options.style.iterations}, above the limit of {settings.max_iterations}",
        )
    tile, overlap = options.style.tile_size, options.style.tile_overlap
    if tile and overlap * 2 > tile:
        raise InvalidArgument("options.tile_overlap", f"{overlap} is more than half of tile_size {tile}")
    weights = options.style.style_layer_weights
    if weights and len(weights) != len(options.style.style_layers):
        raise InvalidArgument(
            "options.style_layer_weights",
            f"has {len(weights)} values for {len(options.style.style_layers)} style layers",
        )
    return options


def _check_scales(width: int, height: int, options: StyleOptions, settings: Settings) -> float:
    """The coarsest scale must be large enough for the layers; tiles must not run away.

    Returns the coarsest scale's size relative to the output's."""
    minimum = min_side(options)
    coarse_height, coarse_width = scale_sizes(height, width, options)[0]
    if min(coarse_height, coarse_width) < minimum:
        raise InvalidArgument(
            "options.scale_iterations",
            f"the coarsest of {len(options.resolved_scale_iterations)} scales would be "
            f"{coarse_width}x{coarse_height}; both sides must be at least {minimum} px for the layers "
            "in use: use fewer scales or a smaller scale_factor",
        )
    total = total_iterations(height, width, options)
    if total > settings.max_iterations:
        raise InvalidArgument(
            "options.tile_size",
            f"the job would run {total} iterations in all (the last scale's once per tile), above the "
            f"limit of {settings.max_iterations}: use larger tiles or fewer iterations",
        )
    return max(coarse_height, coarse_width) / max(height, width)


def _mask(data: bytes, field: str, width: int, height: int, settings: Settings) -> np.ndarray:
    """A mask image as an (H, W) float32 array in [0, 1] at the output size."""
    image = images.decode(data, field, settings.max_input_pixels).convert("L")
    mask = np.asarray(images.stretch(image, width, height), dtype=np.float32) / 255.0
    if not mask.any():
        raise InvalidArgument(field, "the mask is black everywhere: the style would apply nowhere")
    return mask


def build_spec(
    request: JobRequest,
    options: JobOptions,
    settings: Settings,
    admit: Callable[[Shape], None] | None = None,
) -> JobSpec:
    """Decode and size the images of a request whose options are already resolved.

    Everything that can be checked from the images' headers is checked before any pixel is
    decoded: their declared sizes, the layers' minimum sizes, and `admit`, which gets the job's
    sizes (the memory admission and the queue, see JobCore.check_room) and raises to refuse it."""
    if not request.styles:
        raise InvalidArgument("styles", "at least one style image is required")
    if len(request.styles) > settings.max_styles:
        raise InvalidArgument(
            "styles", f"{len(request.styles)} style images; at most {settings.max_styles} are allowed"
        )
    weights = []
    for i, style in enumerate(request.styles):
        weight = 1.0 if style.weight is None else style.weight
        if not math.isfinite(weight) or weight <= 0:
            raise InvalidArgument(f"styles[{i}].weight", "must be a finite number > 0")
        weights.append(weight)
    total = sum(weights)
    if not math.isfinite(total):
        raise InvalidArgument(
            "styles",
            "the style weights add up to more than a float holds; scale them down (only ratios count)",
        )

    # Headers first: sizes and admission cost nothing to check, decoding does.
    width, height = images.peek(request.content, "content.data", settings.max_input_pixels)
    long_side = min(options.max_size, max(width, height))  # never upscaled: it only costs memory
    out_height, out_width = fitted(height, width, long_side)
    style_side = max(1, round(long_side * options.style.style_scale))
    headers = [
        images.peek(style.data, _style_field(i), settings.max_input_pixels)
        for i, style in enumerate(request.styles)
    ]
    if admit is not None:
        held = 3 * out_height * out_width * (1 + (request.init_image is not None))
        for (style_width, style_height), style in zip(headers, request.styles, strict=True):
            kept = fitted(style_height, style_width, min(style_side, max(style_width, style_height)))
            held += 3 * kept[0] * kept[1] + (4 * out_height * out_width if style.mask is not None else 0)
        working = tuple(fitted(h, w, style_side) for w, h in headers)
        admit(Shape((out_height, out_width), working, held))

    content = images.decode(request.content, "content.data", settings.max_input_pixels)
    content = images.fit_long_side(content, long_side)
    minimum = min_side(options.style)
    if min(content.size) < minimum:
        raise InvalidArgument(
            "content.data",
            f"output would be {content.width}x{content.height}; "
            f"both sides must be at least {minimum} px for the layers in use",
        )
    coarsest = _check_scales(content.width, content.height, options.style, settings)
    styles = []
    for i, (style, weight) in enumerate(zip(request.styles, weights, strict=True)):
        image = images.decode(style.data, _style_field(i), settings.max_input_pixels)
        # Shrunk now when larger than the job needs; enlarged only once the job runs.
        target_height, target_width = fitted(image.height, image.width, style_side)
        image = images.fit_long_side(image, min(style_side, max(image.size)))
        if min(target_width, target_height) < minimum:
            raise InvalidArgument(
                _style_field(i),
                f"style image is too thin at {target_width}x{target_height}; both sides must be >= {minimum}"
                + (" (after style_scale)" if options.style.style_scale != 1 else ""),
            )
        coarse_short = round(min(target_width, target_height) * coarsest)
        if coarse_short < minimum:
            raise InvalidArgument(
                _style_field(i),
                f"style image would be {coarse_short} px on its short side at the coarsest scale; it "
                f"must be >= {minimum}: use fewer scales or a larger style_scale",
            )
        mask = None
        if style.mask is not None:
            mask = _mask(style.mask, f"styles[{i}].mask.data", content.width, content.height, settings)
        styles.append(StyleInput(images.to_array(image), weight / total, mask))
    init_image = None
    if options.style.init is Init.IMAGE:
        if request.init_image is None:
            raise InvalidArgument("init_image", "is required when options.init is INIT_IMAGE")
        decoded = images.decode(request.init_image, "init_image.data", settings.max_input_pixels)
        init_image = images.to_array(images.stretch(decoded, content.width, content.height))
    elif request.init_image is not None:
        raise InvalidArgument("init_image", "is only used with options.init INIT_IMAGE; set both or neither")
    return JobSpec(
        images.to_array(content), tuple(styles), options, init_image, style_sides=(style_side,) * len(styles)
    )


def _style_field(index: int) -> str:
    return f"styles[{index}].image.data"
