"""A detector's class outputs: keep a subset of them (a COCO model on COCO-named data), or find the layers that
depend on the number of classes (fine-tuning to other classes re-initialises exactly those).

Output 0 is background in every family (for RetinaNet/FCOS it never fires); output k of a COCO model of torchvision
is COCO category id k.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from defeat.models.families import family_of

#: parameters whose shape depends on the number of classes, per family (state-dict key prefixes)
CLASS_DEPENDENT = {
    "faster_rcnn": ("roi_heads.box_predictor.",),
    "retinanet": ("head.classification_head.cls_logits.",),
    "fcos": ("head.classification_head.cls_logits.",),
}


def class_dependent(key: str, family: str) -> bool:
    return key.startswith(CLASS_DEPENDENT[family])


def outputs_in_state(state: dict[str, Tensor], family: str) -> int | None:
    """Class outputs (background included) of a detector state dict of ``family``; None if it has no classifier.

    One-stage heads hold ``anchors x classes`` channels; the anchors per location are read off the box
    regression layer (4 channels per anchor).
    """
    if family == "faster_rcnn":
        weight = state.get("roi_heads.box_predictor.cls_score.weight")
        return None if weight is None else int(weight.shape[0])
    logits, boxes = (
        state.get("head.classification_head.cls_logits.weight"),
        state.get("head.regression_head.bbox_reg.weight"),
    )
    if logits is None or boxes is None:
        return None
    return int(logits.shape[0]) // (int(boxes.shape[0]) // 4)


class MergedBackgroundPredictor(nn.Module):
    """Faster R-CNN's box predictor restricted to some classes, exactly: the dropped classes' probability goes to
    background, the kept classes keep theirs.

    With logits ``z`` over all classes, the new background logit is ``logsumexp(z_0, z_d for dropped d)``; then
    ``softmax`` over ``(bg, z_keep)`` gives ``p_bg + sum p_d`` and ``p_k`` for every kept ``k``. (Slicing the linear
    layer instead would renormalise: a "dog" box would become a confident "person" on a person-only dataset.)
    """

    def __init__(self, predictor: nn.Module, keep: list[int]) -> None:
        super().__init__()
        self.inner = predictor
        total = predictor.cls_score.out_features
        dropped = [0] + [k for k in range(1, total) if k not in set(keep)]
        self.register_buffer("keep", torch.tensor(keep, dtype=torch.long), persistent=False)
        self.register_buffer("background", torch.tensor(dropped, dtype=torch.long), persistent=False)
        self.num_classes = len(keep) + 1

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        scores, deltas = self.inner(x)
        background = torch.logsumexp(scores[:, self.background], dim=1, keepdim=True)
        merged = torch.cat([background, scores[:, self.keep]], dim=1)
        rows = torch.cat([self.keep.new_zeros(1), self.keep])
        deltas = deltas.view(deltas.shape[0], -1, 4)[:, rows].reshape(deltas.shape[0], -1)
        return merged, deltas


def keep_classes(model: nn.Module, keep: list[int], merge_background: bool = True) -> nn.Module:
    """Restrict ``model`` (in place) to the class outputs ``keep`` (indices >= 1, in the new label order): new
    label ``i`` is old output ``keep[i-1]``.

    RetinaNet/FCOS score classes independently (sigmoid), so slicing the classifier is exact. Faster R-CNN's
    softmax is restricted exactly by :class:`MergedBackgroundPredictor` (``merge_background``, for evaluation and
    teachers); without it the predictor's layers are sliced into a plain ``FastRCNNPredictor`` (standard keys, the
    starting point of fine-tuning on the kept classes).
    """
    if not keep or min(keep) < 1:
        raise ValueError(f"keep_classes: need class outputs >= 1 (0 is background), got {keep}")
    family = family_of(model)
    rows = [0] + list(keep)
    if family == "faster_rcnn":
        predictor = model.roi_heads.box_predictor
        if merge_background:
            model.roi_heads.box_predictor = MergedBackgroundPredictor(predictor, list(keep))
            return model
        _keep_rows(predictor.cls_score, rows)
        _keep_rows(predictor.bbox_pred, [4 * r + i for r in rows for i in range(4)])
        return model
    head = model.head.classification_head
    total = head.num_classes
    anchors = head.cls_logits.out_channels // total
    _keep_rows(head.cls_logits, [a * total + r for a in range(anchors) for r in rows])
    head.num_classes = len(rows)
    return model


@torch.no_grad()
def _keep_rows(layer: nn.Linear | nn.Conv2d, rows: list[int]) -> None:
    """Keep these output rows (Linear) / channels (Conv2d) of ``layer``, in this order."""
    index = torch.tensor(rows, dtype=torch.long, device=layer.weight.device)
    layer.weight = nn.Parameter(layer.weight.index_select(0, index).clone())
    layer.bias = nn.Parameter(layer.bias.index_select(0, index).clone())
    if isinstance(layer, nn.Linear):
        layer.out_features = len(rows)
    else:
        layer.out_channels = len(rows)
