"""The teacher-student feature analyses of the DeFeat supplementary, as functions with plain arguments.

* :func:`channel_distance` -- Fig. 1: per-channel mean |teacher - student| of one FPN level over object and
  background pixels, for several students.
* :func:`grad_norm` -- Fig. 2-3: per-pixel L2 norm of the gradient reaching every FPN level, object vs background.

Both read a COCO split (``images_dir`` + ``annotations``) and pick ``images`` images of it at random (seeded by
``seed``); the math is in :mod:`defeat.analysis.channel_distance` / :mod:`defeat.analysis.grad_norm`, the
figures and tables in :mod:`defeat.analysis.feature_plots`. Each writes its files to ``out`` and returns a summary.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch

from defeat.analysis import channel_distance as cd
from defeat.analysis import feature_plots as fp
from defeat.analysis import grad_norm as gn
from defeat.config import FEATURE_MODES, PROPOSAL_MODES, Config, DistillSettings
from defeat.data import CocoDetection
from defeat.engine import DistInfo, LoadedModel, load_model
from defeat.engine import train as train_loop
from defeat.models import fpn_features, levels_of
from defeat.utils import atomic_write_json

GRAD_LOSSES = ("detection", "distillation", "sum")
Mask = Literal["all", "assigned"]


# ------------------------------------------------------------------------------------------ shared helpers
def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device: 'cuda' requested but no CUDA device is available")
    return torch.device(name)


def _pick_images(dataset: CocoDetection, count: int, seed: int, what: str) -> list[int]:
    """``count`` distinct random indices of ``dataset`` (seeded); one-line error if it has fewer images."""
    if count < 1:
        raise ValueError(f"--images must be >= 1, got {count}")
    if count > len(dataset):
        raise ValueError(f"--images {count}: {what} has only {len(dataset)} images")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return order[:count].tolist()


def _strides(levels: list[str]) -> dict[str, int]:
    from defeat.distill.masks import level_number

    return {name: 2 ** level_number(name) for name in levels}


def _load(
    path: str | Path, kinds: tuple[str, ...], categories: list[dict], dataset: str | Path, role: str
) -> LoadedModel:
    return load_model(path, kinds=kinds, categories=categories, dataset=dataset, role=role)


# ------------------------------------------------------------------------------------------ channel-distance
#: what ``student_feature`` compares, in a few words (error messages) and in full (``run.json``)
FEATURE_WORDS = {"raw": "raw FPN", "adapter": "adapter output", "probe": "raw FPN through a least-squares map"}
FEATURE_DESCRIPTIONS = {
    "raw": "raw FPN (neck) output",
    "adapter": "adapter output (distillation adapter applied to the FPN map)",
    "probe": "raw FPN (neck) output through its least-squares linear map (1x1 + bias) to the teacher's channels, "
    "fitted on the analysis images (the FPN widths differ)",
}


def channel_distance(
    teacher: str | Path,
    students: Mapping[str, str | Path],
    images_dir: str | Path,
    annotations: str | Path,
    out: str | Path,
    *,
    level: str = "P2",
    images: int = 20,
    seed: int = 0,
    mask: Mask = "all",
    level_k0: int = 4,
    student_feature: Literal["auto", "raw", "adapter", "probe"] = "auto",
    baseline: str | None = None,
    device: str = "cpu",
    quiet: bool = False,
) -> dict:
    """Per-channel teacher-student distance in object vs background regions (DeFeat supplementary, Fig. 1).

    Args:
        teacher: the teacher's checkpoint (kind ``detector``).
        students: ``{name: checkpoint}``; ``detector`` (no KD) or ``distill`` checkpoints.
        level: the FPN level compared.
        mask: object region on the level: ``all`` GT boxes projected to it, or only the boxes DeFeat's level rule
            (``level_k0``) ``assigned`` to it.
        student_feature: the student map compared: ``raw`` FPN output, the distillation ``adapter``'s output,
            ``probe`` (the raw output through its least-squares linear map to the teacher's channels, fitted on these
            images: :mod:`defeat.analysis.channel_distance`), or ``auto`` (adapter when the checkpoint has adapters,
            else raw, or probe when the FPN widths differ).
        baseline: the student the ratios refer to (default: the first student without feature KD).

    Writes ``channel_distance_summary.{csv,json,md}``, ``channel_distance_per_channel.*``, ``channel_distance.png``
    and ``run.json`` to ``out``; returns ``{"rows": summary rows, "meta": ...}``.
    """
    dev = _device(device)
    dataset = CocoDetection(images_dir, annotations)
    picks = _pick_images(dataset, images, seed, str(annotations))
    t = _load(teacher, ("detector",), dataset.categories, annotations, "--teacher")
    t_levels, t_channels = levels_of(t.model), t.model.backbone.out_channels
    if level not in t_levels:
        raise ValueError(f"--level {level!r}: the teacher's FPN has levels {', '.join(t_levels)}")
    chosen: dict[str, dict] = {}
    for name, path in students.items():
        s = _load(path, ("detector", "distill"), dataset.categories, annotations, f"--student {name}")
        feature = student_feature
        if feature == "auto":
            same_width = s.model.backbone.out_channels == t_channels
            feature = "adapter" if s.adapters is not None else ("raw" if same_width else "probe")
        if feature == "adapter" and s.adapters is None:
            raise ValueError(
                f"--student {name}: --student-feature adapter, but {path} has no distillation adapters "
                f"(a {s.kind!r} checkpoint, feature mode {s.feature_mode!r})"
            )
        channels = s.model.backbone.out_channels if feature != "probe" else t_channels  # probe: mapped to them
        if feature == "adapter":
            if level not in s.adapters.levels:
                raise ValueError(f"--student {name}: its adapters cover {s.adapters.levels}, not {level}")
            channels = s.adapters.convs[level].out_channels
        cd.check_layout(
            t_levels,
            t_channels,
            levels_of(s.model),
            channels,
            what=f"--student {name} ({s.name}, {FEATURE_WORDS[feature]})",
        )
        notes = []
        for key in ("min_size", "max_size"):
            mine, theirs = getattr(s.config.model, key), getattr(t.config.model, key)
            if mine != theirs:
                notes.append(f"trained with model.{key}={mine}; compared on the teacher's input ({key}={theirs})")
        chosen[name] = {"loaded": s, "feature": feature, "notes": notes}

    t_model = t.model.to(dev)
    strides = _strides(t_levels)
    sums = {name: None for name in chosen}
    image_ids = []
    start = time.perf_counter()

    def level_maps():
        """Per picked image: its id, the batch (the teacher's transform), the object and valid masks, the teacher's
        map."""
        for index in picks:
            image, target = dataset[index]
            batch, targets = t_model.transform(
                [image.to(dev)], [{k: v.to(dev) if torch.is_tensor(v) else v for k, v in target.items()}]
            )
            t_feats = fpn_features(t_model, batch.tensors)
            sizes = {name: tuple(f.shape[-2:]) for name, f in t_feats.items()}
            masks = cd.region_masks([x["boxes"] for x in targets], sizes, strides, mask, level_k0)
            height, width = sizes[level]
            valid = cd.valid_mask(batch.image_sizes, strides[level], height, width)
            yield int(target["image_id"]), batch, masks[level].cpu(), valid, t_feats[level].cpu()

    with torch.no_grad():
        probes = [name for name, s in chosen.items() if s["feature"] == "probe"]
        if probes:  # first pass: each probed student's least-squares map to the teacher's channels
            equations = {
                name: cd.NormalEquations.zeros(chosen[name]["loaded"].model.backbone.out_channels, t_channels)
                for name in probes
            }
            for _, batch, _, valid, teacher_map in level_maps():
                for name in probes:
                    student_map = fpn_features(chosen[name]["loaded"].model.to(dev), batch.tensors)[level].cpu()
                    equations[name] = equations[name].add(teacher_map, student_map, valid)
            for name in probes:
                chosen[name]["map"] = equations[name].solve()
        for count, (image_id, batch, obj, valid, teacher_map) in enumerate(level_maps()):
            image_ids.append(image_id)
            for name, s in chosen.items():
                model = s["loaded"].model.to(dev)
                student_map = fpn_features(model, batch.tensors)[level]
                if s["feature"] == "adapter":
                    student_map = s["loaded"].adapters.to(dev).convs[level](student_map)
                student_map = student_map.cpu()
                if s["feature"] == "probe":
                    student_map = cd.apply_linear_map(student_map, s["map"])
                part = cd.region_channel_sums(teacher_map, student_map, obj, valid)
                sums[name] = part if sums[name] is None else sums[name] + part
            if not quiet:
                print(f"\rimage {count + 1}/{len(picks)}", end="", flush=True)
    if not quiet:
        print()

    results = []
    for name, s in chosen.items():
        d_obj, d_bg = sums[name].means()
        results.append(
            cd.StudentDistance(
                name,
                s["loaded"].feature_mode,
                s["feature"],
                d_obj.float(),
                d_bg.float(),
                sums[name].obj_count,
                sums[name].bg_count,
                s["notes"],
            )
        )
    ordered = cd.seed_order(results)
    if baseline is None:
        baseline = next((r.name for r in ordered if r.mode == "none"), None)
    elif baseline not in chosen:
        raise ValueError(f"--baseline {baseline!r} is not one of the students ({', '.join(chosen)})")
    warnings = []
    if any(r.obj_pixels == 0 for r in results):
        warnings.append(f"no object pixels on {level} in the chosen images; object distances are NaN")

    out = Path(out)
    meta = {
        "teacher": str(teacher),
        "students": {n: s["loaded"].path for n, s in chosen.items()},
        "level": level,
        "images": len(picks),
        "image_ids": image_ids,
        "seed": seed,
        "annotations": str(annotations),
        "mask": mask,
        "student_feature": {n: FEATURE_DESCRIPTIONS[s["feature"]] for n, s in chosen.items()},
        "baseline": baseline,
        "distance": "per channel: mean |teacher - student| over object (background) pixels of all images pooled; "
        "batch padding excluded",
        "input": "the teacher's transform (resize + normalisation) of each image; every model sees that tensor",
        "notes": {r.name: r.notes for r in results if r.notes},
    }
    rows = cd.summary_rows(ordered, baseline)
    fp.write_table(rows, out / "channel_distance_summary", meta)
    per_channel = [
        {"student": r.name, "channel": c, "object": float(r.obj[c]), "background": float(r.bg[c])}
        for r in ordered
        for c in range(r.obj.numel())
    ]
    fp.write_table(per_channel, out / "channel_distance_per_channel")
    title = (
        f"per-channel |teacher - student| on {level}, {len(picks)} images "
        f"(mask: {'all GT boxes' if mask == 'all' else 'boxes assigned to the level'})"
    )
    fp.plot_channel_distance(ordered, level, out / "channel_distance.png", title=title)
    atomic_write_json(out / "run.json", dict(meta, seconds=round(time.perf_counter() - start, 3)))
    return {"rows": rows, "meta": meta, "warnings": warnings, "out": str(out)}


# ------------------------------------------------------------------------------------------ grad-norm
def _pretrain(
    student, teacher, base_cfg: Config, adapters, dataset_dirs, train_steps: int, device, out: Path, quiet: bool
):
    """K steps of all-regions feature distillation with the project's distiller and training loop."""
    from defeat.distill import DeFeatDistiller

    cfg = copy.deepcopy(base_cfg)
    cfg.data.train_images, cfg.data.train_annotations = (str(p) for p in dataset_dirs)
    cfg.data.workers = 0
    cfg.schedule.max_steps = train_steps
    cfg.schedule.warmup_steps = min(cfg.schedule.warmup_steps, max(train_steps // 5, 1))
    if cfg.schedule.policy == "step":
        cfg.schedule.milestones = [m for m in cfg.schedule.milestones if m < train_steps]
    cfg.eval.every_steps = 0
    cfg.output.dir = str(out / "pretrain")
    cfg.output.checkpoint_every = 0
    cfg.output.tensorboard = False
    cfg.distill = dataclasses.replace(
        cfg.distill, feature_mode="all", proposal_mode="none", weight_decay_policy="constant", stop_step=0
    )
    distiller = DeFeatDistiller(student, teacher, cfg.distill.settings(), max_steps=train_steps)
    if adapters is not None:
        distiller.adapters.load_state_dict(adapters.state_dict())
    train_loop(
        cfg,
        distiller,
        student,
        CocoDetection(*dataset_dirs),
        None,
        DistInfo(device=device),
        kind="distill",
        before_step=distiller.before_step,
        progress=not quiet,
    )
    return distiller.adapters


def grad_norm(
    student: str | Path,
    images_dir: str | Path,
    annotations: str | Path,
    out: str | Path,
    *,
    teacher: str | Path | None = None,
    mode: str = "all",
    proposal_mode: str = "none",
    loss: Literal["detection", "distillation", "sum"] | None = None,
    levels: list[str] | None = None,
    train_steps: int = 0,
    images: int = 8,
    seed: int = 0,
    mask: Mask = "all",
    level_k0: int = 4,
    device: str = "cpu",
    quiet: bool = False,
) -> dict:
    """Gradient-norm maps of the FPN outputs, object vs background (DeFeat supplementary, Fig. 2-3).

    Back-propagates ``loss`` (the detection loss, the distillation loss of a DeFeat distiller with ``mode`` /
    ``proposal_mode``, or their ``sum``; default: sum with a teacher, else detection) for each image and records
    the per-pixel L2 norm of the gradient at every FPN level (or ``levels``). ``train_steps`` first distils the
    student for K steps, all regions (the supplementary's setting).

    Writes ``grad_norm_<image id>.png``, ``grad_norm_ratio.{csv,json,md}`` and ``run.json`` to ``out``; returns
    ``{"rows": rows pooled over images, "meta": ...}``. The result depends on ``seed``, not on the state of the
    global random generator (it runs on a forked generator seeded with ``seed``).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _grad_norm(
            student,
            images_dir,
            annotations,
            out,
            teacher=teacher,
            mode=mode,
            proposal_mode=proposal_mode,
            loss=loss,
            levels=levels,
            train_steps=train_steps,
            images=images,
            seed=seed,
            mask=mask,
            level_k0=level_k0,
            device=device,
            quiet=quiet,
        )


def _grad_norm(
    student,
    images_dir,
    annotations,
    out,
    *,
    teacher,
    mode,
    proposal_mode,
    loss,
    levels,
    train_steps,
    images,
    seed,
    mask,
    level_k0,
    device,
    quiet,
) -> dict:
    for value, allowed, flag in ((mode, FEATURE_MODES, "--mode"), (proposal_mode, PROPOSAL_MODES, "--proposal-mode")):
        if value not in allowed:
            raise ValueError(f"{flag}: unknown value {value!r} (choose from {', '.join(allowed)})")
    dev = _device(device)
    loss_name = loss or ("sum" if teacher else "detection")
    if loss_name not in GRAD_LOSSES:
        raise ValueError(f"--loss: unknown value {loss_name!r} (choose from {', '.join(GRAD_LOSSES)})")
    if loss_name in ("distillation", "sum") and not teacher:
        raise ValueError(f"--loss {loss_name} needs --teacher (the distillation loss compares with a teacher)")
    if train_steps and not teacher:
        raise ValueError("--train-steps needs --teacher (it distils the student for K steps first)")
    if train_steps < 0:
        raise ValueError(f"--train-steps must be >= 0, got {train_steps}")
    if loss_name != "detection" and mode == "none" and proposal_mode == "none":
        raise ValueError(f"--loss {loss_name} with --mode none and --proposal-mode none has no distillation term")
    dataset = CocoDetection(images_dir, annotations)
    picks = _pick_images(dataset, images, seed, str(annotations))
    s = _load(student, ("detector", "distill"), dataset.categories, annotations, "--student")
    model = s.model
    all_levels = levels_of(model)
    chosen = all_levels if not levels else list(levels)
    bad = [x for x in chosen if x not in all_levels]
    if bad:
        raise ValueError(f"--levels {','.join(bad)}: the student's FPN has levels {', '.join(all_levels)}")
    t_model = None
    if teacher:
        t_model = _load(teacher, ("detector",), dataset.categories, annotations, "--teacher").model
    out = Path(out)
    adapters, adapters_from = s.adapters, ("the student checkpoint" if s.adapters is not None else "fresh")
    settings = s.config.distill.settings() if s.kind == "distill" else DistillSettings()
    settings = dataclasses.replace(
        settings, feature_mode=mode, proposal_mode=proposal_mode, weight_decay_policy="constant", stop_step=0
    )
    module = model.to(dev)
    if t_model is not None:
        from defeat.distill import DeFeatDistiller

        try:
            if train_steps:
                adapters = _pretrain(
                    model, t_model, s.config, adapters, (images_dir, annotations), train_steps, dev, out, quiet
                )
                adapters_from = f"{train_steps} steps of all-regions distillation"
            module = DeFeatDistiller(model, t_model, settings, where=f"--teacher {teacher}").to(dev)
        except ValueError as err:
            raise ValueError(f"{err} (student {s.name})") from None
        if module.adapters is not None and adapters is not None:
            try:
                module.adapters.load_state_dict(adapters.state_dict())
            except RuntimeError as err:
                raise ValueError(
                    f"--student: its adapters do not fit the teacher ({str(err).splitlines()[0]})"
                ) from None
        elif module.adapters is not None:
            adapters_from = "fresh"
    module.train()

    strides = _strides(all_levels)
    per_image, pooled = [], {name: gn.RegionNorms() for name in chosen}
    captured = {}

    def keep_transform_output(_module, _inputs, output):
        captured["batch"], captured["targets"] = output

    image_ids, start = [], time.perf_counter()
    keys: list[str] = []
    for count, index in enumerate(picks):
        image, target = dataset[index]
        image_id = int(target["image_id"])
        image_ids.append(image_id)
        target = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in target.items()}
        torch.manual_seed(seed * 100003 + index)  # the RPN / RoI samplers draw from the global generator
        handle = model.transform.register_forward_hook(keep_transform_output)
        try:
            with gn.FeatureGradHook(model.backbone, all_levels) as hook:
                losses = module([image.to(dev)], [target])
                keys = gn.loss_keys(losses, loss_name)
                if not keys:
                    raise ValueError(f"--loss {loss_name}: the model returned no such terms ({', '.join(losses)})")
                total = sum(losses[k] for k in keys)
                module.zero_grad(set_to_none=True)
                total.backward()
        finally:
            handle.remove()
        module.zero_grad(set_to_none=True)
        batch, targets = captured["batch"], captured["targets"]
        sizes = {name: tuple(f.shape[-2:]) for name, f in hook.features.items()}
        masks = cd.region_masks([x["boxes"].detach().cpu() for x in targets], sizes, strides, mask, level_k0)
        h_img, w_img = batch.image_sizes[0]
        norms, ratios = {}, {}
        for name in chosen:
            grad = hook.grads.get(name)
            height, width = sizes[name]
            norm = gn.pixel_grad_norm(grad).cpu() if grad is not None else torch.zeros(1, height, width)
            valid = cd.valid_mask(batch.image_sizes, strides[name], height, width)
            stats = gn.region_norms(norm, masks[name], valid)
            pooled[name] = pooled[name] + stats
            ratios[name] = stats.ratio
            per_image.append(
                {
                    "image_id": image_id,
                    "level": name,
                    "object_mean": stats.obj_mean,
                    "background_mean": stats.bg_mean,
                    "ratio": stats.ratio,
                    "object_pixels": stats.obj_count,
                    "background_pixels": stats.bg_count,
                }
            )
            rows_valid, cols_valid = int(valid[0].any(dim=1).sum()), int(valid[0].any(dim=0).sum())
            norms[name] = norm[0, :rows_valid, :cols_valid].numpy()
        mean = torch.tensor(model.transform.image_mean)[:, None, None]
        std = torch.tensor(model.transform.image_std)[:, None, None]
        shown = (batch.tensors[0, :, :h_img, :w_img].detach().cpu() * std + mean).clamp(0, 1)
        fp.plot_grad_norm_overlay(
            shown.permute(1, 2, 0).numpy(),
            norms,
            strides,
            out / f"grad_norm_{image_id}.png",
            boxes=targets[0]["boxes"].detach().cpu().numpy(),
            ratios=ratios,
            title=f"image {image_id}: |d({loss_name} loss)/dP| per pixel (darker blue = larger)",
        )
        if not quiet:
            print(f"\rimage {count + 1}/{len(picks)}: loss {float(total.detach()):.4f}", end="", flush=True)
    if not quiet:
        print()

    total_norms = gn.RegionNorms()
    overall = []
    for name in chosen:
        total_norms = total_norms + pooled[name]
        overall.append(
            {
                "image_id": "all",
                "level": name,
                "object_mean": pooled[name].obj_mean,
                "background_mean": pooled[name].bg_mean,
                "ratio": pooled[name].ratio,
                "object_pixels": pooled[name].obj_count,
                "background_pixels": pooled[name].bg_count,
            }
        )
    overall.append(
        {
            "image_id": "all",
            "level": "all",
            "object_mean": total_norms.obj_mean,
            "background_mean": total_norms.bg_mean,
            "ratio": total_norms.ratio,
            "object_pixels": total_norms.obj_count,
            "background_pixels": total_norms.bg_count,
        }
    )
    has_adapters = t_model is not None and module.adapters is not None
    meta = {
        "student": str(student),
        "teacher": str(teacher) if teacher else None,
        "loss": loss_name,
        "loss_terms": keys,
        "feature_mode": mode if t_model is not None else None,
        "proposal_mode": proposal_mode if t_model is not None else None,
        "adapters": adapters_from if has_adapters else None,
        "train_steps": train_steps,
        "images": len(picks),
        "image_ids": image_ids,
        "seed": seed,
        "annotations": str(annotations),
        "mask": mask,
        "levels": chosen,
        "statistic": "ratio = mean gradient norm on object pixels / on background pixels (padding excluded); "
        "rows with image_id 'all' pool the pixels of every image (level 'all': and every level)",
        "norm": "per-pixel L2 norm over channels of dL/dP_level, recorded by tensor hooks on the FPN outputs",
    }
    fp.write_table(overall + per_image, out / "grad_norm_ratio", meta)
    atomic_write_json(out / "run.json", dict(meta, seconds=round(time.perf_counter() - start, 3)))
    return {"rows": overall, "meta": meta, "out": str(out)}
