"""Where the objects are on each FPN level: the masks that split a feature map into object and background.

Everything here is a pure function on tensors. Levels are passed in as names and strides (``{"P2": 4, ...}``)
so the same code serves two-stage (P2-P6) and one-stage (P3-P7) detectors and the analysis commands.
Boxes are ``xyxy`` in the frame of the (transformed, padded) image tensor that the backbone saw.

* :func:`assign_levels` - the RoI-level rule of the FPN paper / DeFeat's official code.
* :func:`object_masks` - DeFeat's object mask: each box marks the cells it covers on its one level.
* :func:`stage_masks` - object masks of backbone stages: every box on every stage.
* :func:`fgfi_masks` - the FGFI imitation mask: cells whose anchors overlap a box almost as well as the best one
  (on the box's own level, as DeFeat's official FGFI baseline; or against one max over all levels).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torchvision.ops import box_iou


def level_number(name: str) -> int:
    """``'P3'`` -> 3. Level names are ``P<k>`` where the stride of level k is 2**k."""
    if len(name) < 2 or name[0] != "P" or not name[1:].isdigit():
        raise ValueError(f"level name {name!r}: expected 'P<k>' such as 'P2'")
    return int(name[1:])


def assign_levels(boxes: Tensor, levels: Sequence[str], k0: int = 4, canonical: float = 224.0) -> Tensor:
    """Index into ``levels`` of the one level each box belongs to (the RoI-level rule).

        k = clamp(floor(k0 + log2(sqrt(w * h) / canonical)), k_min, k_max)

    with ``k_min``/``k_max`` the smallest/largest level number in ``levels``. With P2-P6 and the defaults this
    is the official code's rule: side < 112 -> P2, < 224 -> P3, < 448 -> P4, < 896 -> P5, else P6.
    Degenerate boxes (zero area) go to the finest level.

    Args:
        boxes: ``(G, 4)`` xyxy.
        levels: level names in order of increasing stride, e.g. ``["P2", ..., "P6"]``.
    Returns:
        ``(G,)`` int64 indices into ``levels``.
    """
    numbers = [level_number(name) for name in levels]
    if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
        raise ValueError(f"levels {list(levels)}: expected consecutive levels such as P2..P6")
    k_min, k_max = numbers[0], numbers[-1]
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).double()
    side = torch.sqrt(wh[:, 0] * wh[:, 1])
    # log2(0) = -inf -> clamps to k_min; done in float64 so exact boundaries (side = 112, 224, ...) are exact.
    k = torch.floor(k0 + torch.log2(side / canonical)).clamp(k_min, k_max)
    return (k - k_min).to(torch.int64)


def box_cells(boxes: Tensor, stride: int, height: int, width: int) -> Tensor:
    """Cells of a ``height x width`` map (stride ``stride``) covered by each box: ``(G, height, width)`` bool.

    A box covers rows ``int(y1 / s) : int(y2 / s)`` and columns ``int(x1 / s) : int(x2 / s)`` (right/bottom
    exclusive, truncation toward zero). A box whose truncated extent is empty along an axis still marks
    one row/column there, so every box marks at least one cell.
    """
    cells = torch.div(boxes, stride, rounding_mode="trunc").to(torch.int64)
    x1, y1, x2, y2 = cells.unbind(dim=1)
    x1, y1 = x1.clamp(0, max(width - 1, 0)), y1.clamp(0, max(height - 1, 0))
    x2 = torch.maximum(x2.clamp(max=width), x1 + 1)
    y2 = torch.maximum(y2.clamp(max=height), y1 + 1)
    ys = torch.arange(height, device=boxes.device)
    xs = torch.arange(width, device=boxes.device)
    rows = (ys[None, :] >= y1[:, None]) & (ys[None, :] < y2[:, None])  # (G, H)
    cols = (xs[None, :] >= x1[:, None]) & (xs[None, :] < x2[:, None])  # (G, W)
    return rows[:, :, None] & cols[:, None, :]


def _flatten_boxes(boxes: Sequence[Tensor], device: torch.device) -> tuple[Tensor, Tensor]:
    """Per-image box lists -> one ``(G, 4)`` tensor and the ``(G,)`` image index of each box."""
    flat = [torch.zeros(0, 4, device=device)] + [b.reshape(-1, 4).float().to(device) for b in boxes]
    owner = [torch.zeros(0, dtype=torch.int64, device=device)] + [
        torch.full((len(b),), i, dtype=torch.int64, device=device) for i, b in enumerate(boxes)
    ]
    return torch.cat(flat), torch.cat(owner)


def _or_per_image(marks: Tensor, owner: Tensor, num_images: int) -> Tensor:
    """OR ``(G, H, W)`` box marks into ``(N, H, W)`` image masks by owner index (no loop)."""
    out = torch.zeros((num_images,) + tuple(marks.shape[1:]), dtype=torch.int32, device=marks.device)
    out.index_add_(0, owner, marks.to(torch.int32))
    return out > 0


def object_masks(
    boxes: Sequence[Tensor], feature_sizes: Mapping[str, tuple[int, int]], strides: Mapping[str, int], k0: int = 4
) -> dict[str, Tensor]:
    """DeFeat's object masks, one ``(N, H_l, W_l)`` bool tensor per level (True = object, False = background).

    Each box is assigned to exactly one level by :func:`assign_levels` and marks :func:`box_cells` there;
    boxes are OR-ed. Cells of other levels' objects, empty images and the padding are background.

    Args:
        boxes: per image, ``(G_i, 4)`` xyxy in the padded-tensor frame.
        feature_sizes: level name -> ``(H_l, W_l)`` of that level's feature map, in increasing-stride order.
        strides: level name -> stride.
    """
    levels = list(feature_sizes)
    device = next((b.device for b in boxes), torch.device("cpu"))
    flat, owner = _flatten_boxes(boxes, device)
    level_of_box = assign_levels(flat, levels, k0=k0)
    masks = {}
    for index, name in enumerate(levels):
        height, width = feature_sizes[name]
        chosen = level_of_box == index
        marks = box_cells(flat[chosen], strides[name], height, width)
        masks[name] = _or_per_image(marks, owner[chosen], len(boxes))
    return masks


def stage_masks(
    boxes: Sequence[Tensor], feature_sizes: Mapping[str, tuple[int, int]], strides: Mapping[str, int]
) -> dict[str, Tensor]:
    """Object masks of backbone stages, one ``(N, H_s, W_s)`` bool tensor per stage: *every* box marks
    :func:`box_cells` on *every* stage (a backbone stage is not a pyramid level; no level rule), the rest is
    background. The official code marks all boxes at stride 4 and resizes that mask (nearest) to each stage;
    here each stage's cells are computed at its own stride with the same rule as the FPN masks.
    """
    device = next((b.device for b in boxes), torch.device("cpu"))
    flat, owner = _flatten_boxes(boxes, device)
    masks = {}
    for name, (height, width) in feature_sizes.items():
        masks[name] = _or_per_image(box_cells(flat, strides[name], height, width), owner, len(boxes))
    return masks


FGFI_ASSIGN = ("level", "global")


def fgfi_masks(
    boxes: Sequence[Tensor], anchors: Mapping[str, Tensor], phi: float = 0.5, assign: str = "level", k0: int = 4
) -> dict[str, Tensor]:
    """FGFI imitation masks (Wang et al., CVPR 2019), one ``(N, H_l, W_l)`` bool tensor per level.

    A cell is marked when one of its ``A`` anchors overlaps a box almost as well as that box's best anchor:

        M[y, x] = OR over boxes b and the anchors a at (y, x) of  [ IoU(a, b) > phi * IoU_max(b) ]

    ``assign`` says where a box is imitated and what ``IoU_max`` is:

    * ``level`` (default; DeFeat's official FGFI baseline, ``get_roi_mask``): each box first goes to its one
      level by the RoI-level rule (:func:`assign_levels` with ``k0``), as RoIs do; it marks cells on that level
      only, against its best IoU *on that level*.
    * ``global`` (the original FGFI, one anchor set): ``IoU_max`` is the box's best IoU over the anchors of
      *all* levels, and cells of any level whose anchors pass that one threshold are marked.

    A box that overlaps no anchor (``IoU_max = 0``) marks nothing.

    Args:
        boxes: per image, ``(G_i, 4)`` xyxy in the padded-tensor frame.
        anchors: level name -> ``(H_l, W_l, A, 4)`` xyxy anchors (the same for every image of the batch), levels
            consecutive and in increasing-stride order (e.g. ``P2..P6``).
        phi: the FGFI threshold factor (0.5 in the paper).
        assign: ``level`` | ``global``.
        k0: the level rule's k0 (``level`` only).
    """
    if assign not in FGFI_ASSIGN:
        raise ValueError(f"fgfi_assign: unknown value {assign!r} (choose from {', '.join(FGFI_ASSIGN)})")
    levels = list(anchors)
    shapes = {name: tuple(a.shape[:3]) for name, a in anchors.items()}
    flat_anchors = {name: a.reshape(-1, 4) for name, a in anchors.items()}
    device = next(iter(flat_anchors.values())).device if flat_anchors else torch.device("cpu")
    per_image: dict[str, list[Tensor]] = {name: [] for name in levels}
    for image_boxes in boxes:  # a loop over images, not pixels: IoU is (G_i, H*W*A) per level
        image_boxes = image_boxes.reshape(-1, 4).to(device=device, dtype=torch.float32)
        ious = {name: box_iou(image_boxes, flat_anchors[name]) for name in levels}  # (G, H*W*A)
        if assign == "level":
            level_of_box = assign_levels(image_boxes, levels, k0=k0)
            # only a box's own level counts: its IoUs elsewhere are zeroed, so they never pass a threshold > 0
            ious = {name: iou * (level_of_box == index)[:, None] for index, (name, iou) in enumerate(ious.items())}
            best = {
                name: iou.max(dim=1, keepdim=True).values if iou.shape[1] else iou.new_zeros(len(iou), 1)
                for name, iou in ious.items()
            }
        else:
            overall = (
                torch.stack(
                    [iou.max(dim=1).values if iou.shape[1] else iou.new_zeros(len(iou)) for iou in ious.values()]
                )
                .amax(dim=0, keepdim=True)
                .T
                if ious
                else None
            )
            best = {name: overall for name in levels}
        for name in levels:
            height, width, per_cell = shapes[name]
            threshold = phi * best[name]
            hit = ((ious[name] > threshold) & (threshold > 0)).any(dim=0)
            per_image[name].append(hit.view(height, width, per_cell).any(dim=2))
    return {
        name: torch.stack(per_image[name])
        if per_image[name]
        else torch.zeros(0, *shapes[name][:2], dtype=torch.bool, device=device)
        for name in levels
    }


def split_anchors(anchors: Tensor, feature_sizes: Mapping[str, tuple[int, int]]) -> dict[str, Tensor]:
    """torchvision's per-image anchor tensor (all levels concatenated) -> level name -> ``(H, W, A, 4)``.

    torchvision's ``AnchorGenerator`` lays anchors out level by level, each level as ``(H, W, A)``.
    """
    cells = [h * w for h, w in feature_sizes.values()]
    total = sum(cells)
    if total == 0 or anchors.shape[0] % total:
        raise ValueError(f"anchors: {anchors.shape[0]} anchors do not split over feature sizes {dict(feature_sizes)}")
    per_cell = anchors.shape[0] // total
    chunks = anchors.split([c * per_cell for c in cells])
    return {name: chunk.view(h, w, per_cell, 4) for (name, (h, w)), chunk in zip(feature_sizes.items(), chunks)}
