"""TEST-ONLY PORTS of the authors' FGD and MGD losses, for verification of ``defeat.distill.learned_methods``.

Not part of the package and not used by it: these transcribe, step by step, the computations of

* FGD: github.com/yzd-v/FGD at commit c03a6cf3b3cb3cbfd5554dbf4766e7135747d22d,
  ``mmdet/distillation/losses/fgd.py`` (``FeatureLoss.forward`` and its helpers; last changed in f1da292c);
* MGD: github.com/yzd-v/MGD at commit 2c9da0b28625eb948db57afc02c824452c3910fe,
  ``det/mmdet/distillation/losses/mgd.py`` (``FeatureLoss.forward`` / ``get_dis_loss``; last changed in 454e609b);

without mmcv/mmdet: the module weights are passed in (taken from our modules so both sides use the same ones),
``img_metas`` becomes a list of ``(h, w)`` image shapes, and MGD's ``torch.rand`` draw is passed in as ``uniform``.
The order of operations (sqrt-weighted features, per-box slicing loops, per-part sums) is the reference's, so a
test comparing the two checks our vectorised rewrite against the original arithmetic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _attention(preds: Tensor, temp: float) -> tuple[Tensor, Tensor]:
    # get_attention
    n, c, h, w = preds.shape
    value = torch.abs(preds)
    fea_map = value.mean(axis=1, keepdim=True)
    s_att = (h * w * F.softmax((fea_map / temp).view(n, -1), dim=1)).view(n, h, w)
    channel_map = value.mean(axis=2, keepdim=False).mean(axis=2, keepdim=False)
    c_att = c * F.softmax(channel_map / temp, dim=1)
    return s_att, c_att


def _masks(gt_bboxes: list[Tensor], img_shapes: list[tuple[int, int]], like: Tensor) -> tuple[Tensor, Tensor]:
    # the mask loop of forward (like = S_attention_t, (N, H, W))
    n, h, w = like.shape
    mask_fg = torch.zeros_like(like)
    mask_bg = torch.ones_like(like)
    for i in range(n):
        boxes = torch.ones_like(gt_bboxes[i])
        boxes[:, 0] = gt_bboxes[i][:, 0] / img_shapes[i][1] * w
        boxes[:, 2] = gt_bboxes[i][:, 2] / img_shapes[i][1] * w
        boxes[:, 1] = gt_bboxes[i][:, 1] / img_shapes[i][0] * h
        boxes[:, 3] = gt_bboxes[i][:, 3] / img_shapes[i][0] * h
        wmin = torch.floor(boxes[:, 0]).int()
        wmax = torch.ceil(boxes[:, 2]).int()
        hmin = torch.floor(boxes[:, 1]).int()
        hmax = torch.ceil(boxes[:, 3]).int()
        area = 1.0 / (hmax.view(1, -1) + 1 - hmin.view(1, -1)) / (wmax.view(1, -1) + 1 - wmin.view(1, -1))
        for j in range(len(gt_bboxes[i])):
            region = mask_fg[i][hmin[j] : hmax[j] + 1, wmin[j] : wmax[j] + 1]
            mask_fg[i][hmin[j] : hmax[j] + 1, wmin[j] : wmax[j] + 1] = torch.maximum(region, area[0][j])
        mask_bg[i] = torch.where(mask_fg[i] > 0, 0, 1)
        if torch.sum(mask_bg[i]):
            mask_bg[i] /= torch.sum(mask_bg[i])
    return mask_fg, mask_bg


def _spatial_pool(x: Tensor, conv_mask: nn.Module) -> Tensor:
    batch, channel, width, height = x.size()
    input_x = x.view(batch, channel, height * width).unsqueeze(1)
    context_mask = conv_mask(x).view(batch, 1, height * width)
    context_mask = F.softmax(context_mask, dim=2).unsqueeze(-1)
    context = torch.matmul(input_x, context_mask)
    return context.view(batch, channel, 1, 1)


def fgd_reference(
    preds_s: Tensor,
    preds_t: Tensor,
    gt_bboxes: list[Tensor],
    img_shapes: list[tuple[int, int]],
    align: nn.Module | None,
    conv_mask_s: nn.Module,
    conv_mask_t: nn.Module,
    channel_add_conv_s: nn.Module,
    channel_add_conv_t: nn.Module,
    temp: float,
    alpha_fgd: float,
    beta_fgd: float,
    gamma_fgd: float,
    lambda_fgd: float,
) -> dict[str, Tensor]:
    """FGD's ``FeatureLoss.forward`` on one level; returns the weighted parts and their sum (``"loss"``)."""
    assert preds_s.shape[-2:] == preds_t.shape[-2:]
    if align is not None:
        preds_s = align(preds_s)
    s_att_t, c_att_t = _attention(preds_t, temp)
    s_att_s, c_att_s = _attention(preds_s, temp)
    mask_fg, mask_bg = _masks(gt_bboxes, img_shapes, s_att_t)

    # get_fea_loss
    mse = nn.MSELoss(reduction="sum")
    m_fg, m_bg = mask_fg.unsqueeze(dim=1), mask_bg.unsqueeze(dim=1)
    c_t = c_att_t.unsqueeze(dim=-1).unsqueeze(dim=-1)
    s_t = s_att_t.unsqueeze(dim=1)
    fea_t = torch.mul(torch.mul(preds_t, torch.sqrt(s_t)), torch.sqrt(c_t))
    fea_s = torch.mul(torch.mul(preds_s, torch.sqrt(s_t)), torch.sqrt(c_t))
    fg_loss = mse(torch.mul(fea_s, torch.sqrt(m_fg)), torch.mul(fea_t, torch.sqrt(m_fg))) / len(m_fg)
    bg_loss = mse(torch.mul(fea_s, torch.sqrt(m_bg)), torch.mul(fea_t, torch.sqrt(m_bg))) / len(m_bg)

    # get_mask_loss
    channel_part = torch.sum(torch.abs(c_att_s - c_att_t)) / len(c_att_s)
    mask_loss = channel_part + torch.sum(torch.abs(s_att_s - s_att_t)) / len(s_att_s)

    # get_rela_loss
    out_s = preds_s + channel_add_conv_s(_spatial_pool(preds_s, conv_mask_s))
    out_t = preds_t + channel_add_conv_t(_spatial_pool(preds_t, conv_mask_t))
    rela_loss = mse(out_s, out_t) / len(out_s)

    parts = {
        "fg": alpha_fgd * fg_loss,
        "bg": beta_fgd * bg_loss,
        "mask": gamma_fgd * mask_loss,
        "global": lambda_fgd * rela_loss,
    }
    parts["loss"] = parts["fg"] + parts["bg"] + parts["mask"] + parts["global"]
    return parts


def mgd_reference(
    preds_s: Tensor,
    preds_t: Tensor,
    uniform: Tensor,
    align: nn.Module | None,
    generation: nn.Module,
    alpha_mgd: float,
    lambda_mgd: float,
) -> Tensor:
    """MGD's ``FeatureLoss.forward`` on one level; ``uniform`` is the ``(N, 1, H, W)`` ``torch.rand`` draw."""
    assert preds_s.shape[-2:] == preds_t.shape[-2:]
    if align is not None:
        preds_s = align(preds_s)
    n = preds_t.shape[0]
    mat = torch.where(uniform > 1 - lambda_mgd, 0, 1).to(preds_s.device)
    new_fea = generation(torch.mul(preds_s, mat))
    return nn.MSELoss(reduction="sum")(new_fea, preds_t) / n * alpha_mgd
