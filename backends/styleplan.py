"""How several style images, their blend weights and masks combine into one layer's style loss.

Both backends follow this plan, so the arithmetic is written once. For a layer with N channels and
M output positions, a style k with blend weight v_k and Gram A_k over its own M_k positions:

- Styles without a mask apply everywhere. Their loss is the weighted sum of each style's own loss,
  sum_k v_k |G - B_k|^2 / (4 N^2 M^2), with B_k = (M / M_k) A_k (a Gram grows with the number of
  positions, so it is rescaled to the output's). That sum equals
  V |G - T|^2 + sum_k v_k |B_k - T|^2 with V = sum_k v_k and T = sum_k v_k B_k / V: one Gram
  comparison against the blended target T, plus a constant that carries no gradient but keeps
  the reported loss equal to the weighted sum of the single-style losses.
- A style with a mask m (resized to the layer) is compared on the masked activations only:
  v_k |G(F m) - (M_m / M_k) A_k|^2 / (4 N^2 M_m^2), where M_m = sum m^2 is the mask's weight in
  positions. A style confined to half the image is as strong there as an unmasked one is
  everywhere; two styles with complementary masks blend by region.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from backends.base import Stage, StyleInput
from backends.errors import Cancelled
from backends.resize import layer_masks
from backends.vgg import LAYERS, feature_size, position

Float = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Group:
    """One term: coef * |G(F * mask) - sum_i blend_i scales_i A_i|^2 + spread, all over norm."""

    styles: tuple[int, ...]  # indices into the job's styles
    scales: tuple[float, ...]  # each style's Gram rescaled to this term's positions
    blend: tuple[float, ...]  # each style's share of the target; sums to 1
    weights: tuple[float, ...]  # each style's blend weight v_k, for the constant spread
    coef: float
    mask: Float | None  # at the layer's size
    norm: float


def _positions(name: str, shape: Sequence[int]) -> int:
    height, width = feature_size(name, shape[0], shape[1])
    return height * width


def layer_plan(
    name: str,
    size: tuple[int, ...],
    styles: Sequence[StyleInput],
    masks: Sequence[Mapping[str, Float] | None],
) -> list[Group]:
    """The terms of layer `name` for an image of `size` (height, width)."""
    channels = LAYERS[position(name)].out_channels
    positions = _positions(name, size)
    groups: list[Group] = []
    free = [i for i, mask in enumerate(masks) if mask is None]
    if free:
        total = sum(styles[i].weight for i in free)
        groups.append(
            Group(
                styles=tuple(free),
                scales=tuple(positions / _positions(name, styles[i].image.shape) for i in free),
                blend=tuple(styles[i].weight / total for i in free),
                weights=tuple(styles[i].weight for i in free),
                coef=total,
                mask=None,
                norm=4.0 * channels**2 * positions**2,
            )
        )
    for i, layer_mask in enumerate(masks):
        if layer_mask is None:
            continue
        mask = layer_mask[name]
        weight = float(np.square(mask, dtype=np.float64).sum())
        if weight <= 0:
            continue  # the region vanishes at this depth: nothing to compare
        groups.append(
            Group(
                styles=(i,),
                scales=(weight / _positions(name, styles[i].image.shape),),
                blend=(1.0,),
                weights=(styles[i].weight,),
                coef=styles[i].weight,
                mask=mask,
                norm=4.0 * channels**2 * weight**2,
            )
        )
    return groups


@dataclass(frozen=True)
class Term:
    """One term ready to use: coef * |G(F * mask) - target|^2 + offset, all over norm."""

    coef: float
    target: Float
    offset: float
    mask: Float | None
    norm: float


def stage_terms(stage: Stage, grams_of: Callable[[Float], Mapping[str, Float]]) -> dict[str, list[Term]]:
    """Every style layer's terms for a stage; `grams_of` gives one style image's Gram matrices."""
    styles = stage.styles
    grams = []
    for style in styles:
        # A style pass at a large size takes long: a cancel or a deadline is honoured between them.
        if stage.cancel is not None and stage.cancel.is_set():
            raise Cancelled("the job was cancelled")
        grams.append(grams_of(np.asarray(style.image, dtype=np.float32)))
    return style_terms(stage.options.style_layers, stage.content.shape[:2], styles, grams)


def style_terms(
    layers: Sequence[str],
    size: tuple[int, ...],
    styles: Sequence[StyleInput],
    grams: Sequence[Mapping[str, Float]],
) -> dict[str, list[Term]]:
    """Every style layer's terms, from each style's own Gram matrices (NumPy, float32)."""
    masks = [None if s.mask is None else layer_masks(s.mask, layers) for s in styles]
    terms: dict[str, list[Term]] = {}
    for name in layers:
        terms[name] = []
        for group in layer_plan(name, size, styles, masks):
            scaled = [s * grams[i][name] for i, s in zip(group.styles, group.scales, strict=True)]
            target = sum((b * g for b, g in zip(group.blend, scaled, strict=True)), np.zeros_like(scaled[0]))
            spread = [
                w * float(np.square(g - target, dtype=np.float64).sum())
                for w, g in zip(group.weights, scaled, strict=True)
            ]
            offset = sum(spread) if len(scaled) > 1 else 0.0
            terms[name].append(Term(group.coef, target.astype(np.float32), offset, group.mask, group.norm))
    return terms
