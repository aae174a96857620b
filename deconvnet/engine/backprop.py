"""The general engine's way down by autograd, for a layer above an op the walk does not know.

The forward pass ran under autograd with the rule at every rectification (``engine.canonizers``),
so a unit goes down by autograd's backward from a seed holding its one activation. A unit only
sees its receptive field (``deconvnet.engine.field``): when that is a small part of the image,
its projection is computed exactly on a crop, aligned to the unit's total stride, so that every
map's grid coincides with the whole image's, and clipped to the image, so that zero padding
falls where it falls for the whole image; a unit whose value on its crop is not its value on
the image (a forward that reads the input's size as a value) goes down on the image. Units
whose field covers most of the image go down from the record's own pass, in batches
(``is_grads_batched``), in "rounds" of one unit per image.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from deconvnet.engine.canonizers import RuleBox
from deconvnet.engine.receptive_field import ReceptiveField
from deconvnet.errors import DeconvNetError
from deconvnet.selection import Units

# A crop larger than this share of the image costs about what the whole image costs.
CROP_SHARE = 0.5

Crop = tuple[int, int, int, int]  # (top, left, h, w) in input pixels


def down_by_autograd(
    images: torch.Tensor,
    inputs: torch.Tensor,
    tapped: torch.Tensor,
    box: RuleBox,
    field: ReceptiveField | None,
    units: Units,
    rule: str,
    run: Callable[[torch.Tensor], torch.Tensor],
    budget: int,
    one_crop_a_pass: bool = False,
) -> torch.Tensor:
    """Each unit's projection on the whole image, by autograd's backward.

    Parameters
    ----------
    images
        The input of the forward pass, ``(N, 3, H, W)``.
    inputs
        The same, as the leaf of the pass's autograd graph.
    tapped
        The layer's map in that graph, ``(N, C, h, w)``.
    box
        The rule box of the pass's rectifications; set to ``rule`` for the way down.
    field
        The receptive field of one unit of the layer; None when it sees the whole image.
    units
        The T units to project, of that layer.
    rule
        The rule's name.
    run
        The layer's map for a batch of crops ``(B, 3, h, w)``, under autograd with ``rule`` at
        every rectification.
    budget
        Input pixels one batched backward may cover (bounds its memory).
    one_crop_a_pass
        Send each crop down alone: for a forward that mixes the images of a batch
        (``deconvnet.engine.batch.AcrossImages``), where crops batched together would mix.

    Returns
    -------
    torch.Tensor
        ``(T, 3, H, W)``, each unit's projection, zero outside its receptive field.
    """
    with torch.inference_mode(False):  # a projection asked for under inference_mode
        return _down(images, inputs, tapped, box, field, units, rule, run, budget, one_crop_a_pass)


def autograd_leaf(x: torch.Tensor) -> torch.Tensor:
    """``x`` as the leaf of a pass under autograd, even under ``torch.inference_mode``: a copy of
    an inference tensor, which autograd cannot record."""
    with torch.inference_mode(False):
        return (x.clone() if x.is_inference() else x.detach()).requires_grad_(True)


def _down(images, inputs, tapped, box, field, units, rule, run, budget, one_crop_a_pass):
    count, (height, width) = len(units.channel), images.shape[-2:]
    result = images.new_zeros(count, images.shape[1], height, width)
    crops = crops_of(field, units.position.tolist(), (height, width))
    whole = [t for t, crop in enumerate(crops) if crop is None]
    if whole:
        _down_from_record(inputs, tapped, box, units, whole, rule, result, budget)
    by_size: dict[tuple[int, int], list[int]] = {}
    for t, crop in enumerate(crops):
        if crop is not None:
            by_size.setdefault(crop[2:], []).append(t)
    # A forward that reads the input's size as a value (x * W, a constant made from x.shape)
    # computes otherwise on a crop: its units go down on the image.
    elsewhere = []
    for size, members in by_size.items():
        per_batch = 1 if one_crop_a_pass else max(1, budget // (size[0] * size[1]))
        for start in range(0, len(members), per_batch):
            part = members[start : start + per_batch]
            chosen = [crops[t] for t in part]
            elsewhere += _down_on_crops(images, field, units, part, chosen, run, result)
    if elsewhere:
        _down_from_record(inputs, tapped, box, units, elsewhere, rule, result, budget)
    return result


def crops_of(
    found: ReceptiveField | None, positions: list[list[int]], image_size: tuple[int, int]
) -> list[Crop | None]:
    """``(top, left, h, w)`` of the crop each unit at ``positions`` ``[[y, x], ...]`` goes down
    on, or None for the image (all None when ``found``, the units' field, is None: they see it
    all).

    A crop starts at a multiple of the unit's total stride, so that every map's grid is the
    image's, and it reaches the image's edge wherever the field does, so that padding falls
    where it falls for the image. Within that, crops are made as alike as possible (one
    length per axis inside the image, one more for crops at the far edge), so that they
    go down in few, large batches."""
    if found is None:
        return [None] * len(positions)
    lengths = [min(found.size[axis] + found.stride[axis] - 1, image_size[axis]) for axis in (0, 1)]
    if lengths[0] * lengths[1] > CROP_SHARE * image_size[0] * image_size[1]:
        return [None] * len(positions)
    crops = []
    for position in positions:
        corner, extent = [], []
        for axis in (0, 1):
            stride, length, bound = found.stride[axis], lengths[axis], image_size[axis]
            start = position[axis] * stride + found.offset[axis]
            begin = max(start, 0) // stride * stride
            if begin + length > bound:  # the field reaches the far edge: so does the crop
                begin = max(bound - length, 0) // stride * stride
                length = bound - begin
            corner.append(begin)
            extent.append(length)
        crops.append((corner[0], corner[1], extent[0], extent[1]))
    return crops


def _reached(grads: torch.Tensor | None) -> None:
    """Refuse a way down that never reached the image: autograd found no path from the map."""
    if grads is None:
        raise DeconvNetError(
            "the way down cannot reach the image from this layer: the forward makes its maps "
            "from values autograd cannot follow (a tensor made again from tolist(), numpy() or "
            "item(), say)"
        )


def _down_from_record(inputs, tapped, box, units, members, rule, result, budget) -> None:
    """Units of ``members`` down from the record's own pass, in rounds of at most one unit
    per image: one round's seed is one map, and rounds go down batched."""
    n = tapped.shape[0]
    images = units.image[members].tolist()
    rounds, seen = [], {}
    for image in images:
        rounds.append(seen.get(image, 0))
        seen[image] = rounds[-1] + 1
    per_batch = max(1, budget // math.prod(inputs.shape[-2:]) // n)
    channel = units.channel[members]
    position = units.position[members]
    activation = units.activation[members]
    round_of = torch.tensor(rounds, device=tapped.device)
    image_of = torch.tensor(images, device=tapped.device)
    box.rule = rule
    total = max(rounds) + 1
    for start in range(0, total, per_batch):
        stop = min(start + per_batch, total)
        here = (round_of >= start) & (round_of < stop)
        seeds = tapped.new_zeros(stop - start, *tapped.shape)
        seeds[
            round_of[here] - start,
            image_of[here],
            channel[here],
            position[here, 0],
            position[here, 1],
        ] = activation[here]
        batched = stop - start > 1
        (grads,) = torch.autograd.grad(
            tapped,
            inputs,
            seeds if batched else seeds[0],
            retain_graph=True,
            is_grads_batched=batched,
            allow_unused=True,
        )
        _reached(grads)
        if not batched:
            grads = grads[None]
        rows = torch.tensor(members, device=result.device)[here]
        result[rows] = grads[round_of[here] - start, image_of[here]]


def _down_on_crops(images, found, units, members, crops, run, result) -> list[int]:
    """Units of ``members`` down on their crops of the image, one batched pass; returns those
    whose value on their crop is not their value on the image (left undone)."""
    pieces = [
        images[image, :, top : top + h, left : left + w]
        for image, (top, left, h, w) in zip(units.image[members].tolist(), crops, strict=True)
    ]
    inputs = torch.stack(pieces).requires_grad_(True)
    with torch.enable_grad():
        tapped = run(inputs)
    seeds = torch.zeros_like(tapped)
    unlike = []
    for b, (t, (top, left, _, _)) in enumerate(zip(members, crops, strict=True)):
        y = int(units.position[t, 0]) - top // found.stride[0]
        x = int(units.position[t, 1]) - left // found.stride[1]
        value = units.activation[t]
        if not torch.isclose(tapped[b, units.channel[t], y, x].detach(), value, 1e-4, 1e-6):
            unlike.append(t)
            continue
        seeds[b, units.channel[t], y, x] = value
    if len(unlike) == len(members):
        return unlike
    (grads,) = torch.autograd.grad(tapped, inputs, seeds, allow_unused=True)
    _reached(grads)
    for b, (t, (top, left, h, w)) in enumerate(zip(members, crops, strict=True)):
        if t not in unlike:
            result[t, :, top : top + h, left : left + w] = grads[b]
    return unlike
