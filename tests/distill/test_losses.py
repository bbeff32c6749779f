"""Feature and proposal losses: formulas, modes, zero cases, adapters."""

import pytest
import torch

from defeat.config import DistillSettings as S
from defeat.distill.adapters import FeatureAdapters
from defeat.distill.losses import (
    decoupled_feature_loss,
    decoupled_proposal_loss,
    imitation_term,
    sigmoid_kl,
    softmax_kl,
)


def _levels(seed=0, channels=3):
    g = torch.Generator().manual_seed(seed)
    shapes = [(2, channels, 4, 6), (2, channels, 2, 3)]
    students = [torch.randn(s, generator=g) for s in shapes]
    teachers = [torch.randn(s, generator=g) for s in shapes]
    masks = [torch.rand(s[0], s[2], s[3], generator=g) > 0.6 for s in shapes]
    return students, teachers, masks


def test_imitation_term_matches_formula():
    s, t, m = _levels()
    per_level = []
    nums, dens = [], []
    for sl, tl, ml in zip(s, t, m):
        d = ((sl - tl) ** 2).sum(1)
        nums.append((d * ml).sum())
        dens.append(2 * sl.shape[1] * ml.sum())
        per_level.append(nums[-1] / max(1.0, float(dens[-1])))
    assert torch.allclose(imitation_term(s, t, m, "per_level"), torch.stack(per_level).mean())
    assert torch.allclose(imitation_term(s, t, m, "all_levels"), sum(nums) / sum(dens))


def test_feature_modes_use_exactly_their_terms():
    s, t, m = _levels()
    keys = {
        mode: set(decoupled_feature_loss(s, t, m, S(feature_mode=mode)))
        for mode in ("none", "object", "background", "all", "decoupled", "fgfi")
    }
    assert keys == {
        "none": set(),
        "object": {"loss_feat_obj"},
        "background": {"loss_feat_bg"},
        "all": {"loss_feat_all"},
        "decoupled": {"loss_feat_obj", "loss_feat_bg"},
        "fgfi": {"loss_feat_obj"},
    }
    dec = decoupled_feature_loss(s, t, m, S(feature_mode="decoupled", alpha_obj=4, alpha_bg=16))
    assert torch.allclose(dec["loss_feat_obj"], 4 * imitation_term(s, t, m))
    assert torch.allclose(dec["loss_feat_bg"], 16 * imitation_term(s, t, [~x for x in m]))
    # the background term ignores object pixels and vice versa
    s2 = [x.clone() for x in s]
    s2[0] = torch.where(m[0][:, None], s2[0] + 5.0, s2[0])
    again = decoupled_feature_loss(s2, t, m, S(feature_mode="decoupled"))
    assert torch.allclose(again["loss_feat_bg"], dec["loss_feat_bg"])
    assert not torch.allclose(again["loss_feat_obj"], dec["loss_feat_obj"])
    everywhere = decoupled_feature_loss(s, t, m, S(feature_mode="all", alpha_all=8))["loss_feat_all"]
    assert torch.allclose(everywhere, 8 * imitation_term(s, t, [torch.ones_like(x) for x in m]))


def test_zero_when_student_equals_teacher_and_empty_masks():
    s, t, m = _levels()
    for mode in ("object", "background", "all", "decoupled"):
        assert all(v == 0 for v in decoupled_feature_loss(t, t, m, S(feature_mode=mode)).values())
    empty = [torch.zeros_like(x) for x in m]
    out = decoupled_feature_loss(s, t, empty, S(feature_mode="decoupled"))
    assert out["loss_feat_obj"] == 0 and torch.isfinite(out["loss_feat_bg"]) and out["loss_feat_bg"] > 0


def test_feature_loss_rejects_bad_input():
    s, t, m = _levels()
    with pytest.raises(ValueError, match="feature_mode: unknown value 'objects'"):  # refused when the settings are made
        decoupled_feature_loss(s, t, m, S(feature_mode="objects"))
    with pytest.raises(ValueError, match="alpha_bg: must be >= 0"):
        decoupled_feature_loss(s, t, m, S(feature_mode="decoupled", alpha_bg=-1))
    with pytest.raises(ValueError, match="feature shapes"):
        decoupled_feature_loss(s, [x[:, :2] for x in t], m)
    with pytest.raises(ValueError, match="feature_norm"):
        imitation_term(s, t, m, "global")


def test_softmax_kl_formula_and_temperature():
    g = torch.Generator().manual_seed(1)
    zs, zt = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    for temp in (1.0, 3.0):
        p, q = torch.softmax(zt / temp, 1), torch.softmax(zs / temp, 1)
        expected = (p * (p.log() - q.log())).sum(1) * temp**2
        assert torch.allclose(softmax_kl(zs, zt, temp), expected, atol=1e-6)
    assert torch.allclose(softmax_kl(zt, zt), torch.zeros(5), atol=1e-7)
    with pytest.raises(ValueError, match="temperature"):
        softmax_kl(zs, zt, 0.0)


def test_sigmoid_kl_formula():
    g = torch.Generator().manual_seed(2)
    zs, zt = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    p, q = torch.sigmoid(zt / 2), torch.sigmoid(zs / 2)
    expected = (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).sum(1) * 4
    assert torch.allclose(sigmoid_kl(zs, zt, 2.0), expected, atol=1e-5)
    assert torch.allclose(sigmoid_kl(zt, zt), torch.zeros(3), atol=1e-6)


def test_proposal_split_follows_labels_and_temperatures():
    g = torch.Generator().manual_seed(3)
    zs, zt = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    labels = torch.tensor([0, 2, 0, 1, 0, 0])
    out = decoupled_proposal_loss(
        zs, zt, labels, S(proposal_mode="decoupled", beta_obj=2, beta_bg=3, temperature_obj=2.0, temperature_bg=0.5)
    )
    pos, neg = labels > 0, labels == 0
    assert torch.allclose(out["loss_kd_pos"], 2 * softmax_kl(zs[pos], zt[pos], 2.0).mean())
    assert torch.allclose(out["loss_kd_neg"], 3 * softmax_kl(zs[neg], zt[neg], 0.5).mean())
    keys = {
        m: set(decoupled_proposal_loss(zs, zt, labels, S(proposal_mode=m)))
        for m in ("none", "positive", "negative", "all", "decoupled")
    }
    assert keys == {
        "none": set(),
        "positive": {"loss_kd_pos"},
        "negative": {"loss_kd_neg"},
        "all": {"loss_kd_all"},
        "decoupled": {"loss_kd_pos", "loss_kd_neg"},
    }
    everything = decoupled_proposal_loss(zs, zt, labels, S(proposal_mode="all", beta_all=1.5, temperature_all=1.0))[
        "loss_kd_all"
    ]
    assert torch.allclose(everything, 1.5 * softmax_kl(zs, zt).mean())


def test_proposal_loss_without_positives_or_negatives_is_zero_not_nan():
    zs = torch.randn(4, 3, requires_grad=True)
    zt = torch.randn(4, 3)
    out = decoupled_proposal_loss(zs, zt, torch.zeros(4, dtype=torch.long), S(proposal_mode="decoupled"))
    assert out["loss_kd_pos"] == 0 and out["loss_kd_neg"] > 0
    out = decoupled_proposal_loss(zs, zt, torch.ones(4, dtype=torch.long), S(proposal_mode="decoupled"))
    assert out["loss_kd_neg"] == 0 and out["loss_kd_pos"] > 0
    out = decoupled_proposal_loss(zs[:0], zt[:0], torch.zeros(0, dtype=torch.long), S(proposal_mode="decoupled"))
    total = sum(out.values())
    total.backward()
    assert total == 0 and torch.isfinite(zs.grad).all()
    with pytest.raises(ValueError, match="proposal_mode: unknown value 'pos'"):
        decoupled_proposal_loss(zs, zt, torch.zeros(4, dtype=torch.long), S(proposal_mode="pos"))
    with pytest.raises(ValueError, match="beta_obj: must be >= 0"):
        decoupled_proposal_loss(zs, zt, torch.zeros(4, dtype=torch.long), S(beta_obj=-0.5))


def test_adapters_init_shapes_and_channel_mapping():
    torch.manual_seed(0)
    adapters = FeatureAdapters(["P2", "P3"], student_channels=8, teacher_channels=16)
    for conv in adapters.convs.values():
        assert conv.kernel_size == (3, 3) and conv.bias is not None and conv.bias.abs().max() == 0
        assert conv.weight.abs().max() < 2e-4 and conv.weight.std() > 1e-5
    out = adapters({"P2": torch.randn(2, 8, 6, 5), "P3": torch.randn(2, 8, 3, 3)})
    assert out["P2"].shape == (2, 16, 6, 5) and out["P3"].shape == (2, 16, 3, 3)
    assert set(adapters.state_dict()) == {"convs.P2.weight", "convs.P2.bias", "convs.P3.weight", "convs.P3.bias"}
