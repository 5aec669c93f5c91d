"""Turning a caller's request (plain values, as the servicer extracted them) into a checked job.

Every rule a request must satisfy lives here, each failure naming the request field at fault.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from backends.base import RGBImage, StyleInput
from backends.errors import InvalidArgument
from backends.options import Init, Optimizer, StyleOptions
from backends.vgg import LAYERS, LOSS_LAYER_NAMES, Kind, deepest
from service import images
from service.options import ImageFormat, JobOptions
from service.settings import Settings


@dataclass(frozen=True)
class StyleSource:
    """One encoded style image and its blend weight (None: the default of 1)."""

    data: bytes
    weight: float | None


@dataclass(frozen=True)
class JobRequest:
    """A request as plain values. `overrides` holds only the options the caller set."""

    content: bytes
    styles: tuple[StyleSource, ...]
    overrides: Mapping[str, Any]


@dataclass(frozen=True)
class JobSpec:
    """A checked job: decoded, resized images and options with every value resolved."""

    content: RGBImage
    styles: tuple[StyleInput, ...]
    options: JobOptions


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
    return weights


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
        "optimizer": lambda f, v: Optimizer(v),
        "learning_rate": _number(0, inf, low_open=True),
        "init": lambda f, v: Init(v),
        "seed": _number(0, 2**64 - 1, integer=True),
        "output_format": lambda f, v: ImageFormat(v),
        "output_quality": _number(1, 100, integer=True),
        "preview_every": _number(0, settings.max_iterations, integer=True),
        "preview_max_size": _number(16, 4096, integer=True),
        "backend": lambda f, v: str(v),
        "device": lambda f, v: str(v),
        "max_duration_seconds": _number(0, 7 * 24 * 3600, low_open=True),
    }


STYLE_FIELDS = set(StyleOptions.__dataclass_fields__)
_FIELD_NAMES = {"max_duration_seconds": "max_duration"}  # wire name -> JobOptions field


def resolve_options(overrides: Mapping[str, Any], defaults: JobOptions, settings: Settings) -> JobOptions:
    """Defaults with the caller's overrides applied, each checked; backend and device stay names."""
    rules = _rules(settings)
    style: dict[str, Any] = {}
    job: dict[str, Any] = {}
    for name, value in overrides.items():
        checked = rules[name](f"options.{name}", value)
        (style if name in STYLE_FIELDS else job)[_FIELD_NAMES.get(name, name)] = checked
    options = replace(defaults, style=replace(defaults.style, **style), **job)
    weights = options.style.style_layer_weights
    if weights and len(weights) != len(options.style.style_layers):
        raise InvalidArgument(
            "options.style_layer_weights",
            f"has {len(weights)} values for {len(options.style.style_layers)} style layers",
        )
    return options


def _min_side(options: StyleOptions) -> int:
    """Smallest image side whose feature maps are non-empty at the deepest layer used."""
    cut = deepest(list(options.content_layers + options.style_layers))
    pools = sum(1 for layer in LAYERS[:cut] if layer.kind is Kind.POOL)
    return int(2**pools)


def build_spec(request: JobRequest, options: JobOptions, settings: Settings) -> JobSpec:
    """Decode and size the images of a request whose options are already resolved."""
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

    content = images.decode(request.content, "content.data", settings.max_input_pixels)
    # The output never exceeds the content's own size: upscaling only costs memory.
    long_side = min(options.max_size, max(content.size))
    content = images.fit_long_side(content, long_side)
    minimum = _min_side(options.style)
    if min(content.size) < minimum:
        raise InvalidArgument(
            "content.data",
            f"output would be {content.width}x{content.height}; "
            f"both sides must be at least {minimum} px for the layers in use",
        )
    total = sum(weights)
    styles = []
    for i, (style, weight) in enumerate(zip(request.styles, weights, strict=True)):
        image = images.decode(style.data, f"styles[{i}].image.data", settings.max_input_pixels)
        image = images.fit_long_side(image, long_side)
        if min(image.size) < minimum:
            raise InvalidArgument(
                f"styles[{i}].image.data",
                f"style image is too thin at {image.width}x{image.height}; both sides must be >= {minimum}",
            )
        styles.append(StyleInput(images.to_array(image), weight / total))
    return JobSpec(images.to_array(content), tuple(styles), options)
