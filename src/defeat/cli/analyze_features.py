"""``defeat analyze channel-distance`` and ``defeat analyze grad-norm``: teacher-student feature analyses.

Both commands read a COCO split given as ``--images-dir DIR --annotations JSON`` and pick ``--images N``
images of it at random (seeded by ``--seed``); the math is in :mod:`defeat.analysis.channel_distance` and
:mod:`defeat.analysis.grad_norm`, the figures and tables in :mod:`defeat.analysis.feature_plots`.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
LOSSES = ("detection", "distillation", "sum")


# ------------------------------------------------------------------------------------------ shared helpers
def _add_data_arguments(p: argparse.ArgumentParser, split: str, default_images: int) -> None:
    p.add_argument("--images-dir", required=True, help=f"image folder of the {split} split")
    p.add_argument("--annotations", required=True, help=f"COCO instances JSON of the {split} split")
    p.add_argument("--images", type=int, default=default_images,
                   help=f"how many images to pick at random (default {default_images})")
    p.add_argument("--seed", type=int, default=0, help="seed of the image choice (default 0)")
    p.add_argument("--mask", choices=("all", "assigned"), default="all",
                   help="object region on a level: 'all' = every GT box projected to the level (default); "
                        "'assigned' = only the boxes DeFeat's level rule assigns to it (the distiller's mask)")
    p.add_argument("--level-k0", type=int, default=4, help="k0 of the level rule for --mask assigned (default 4)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device: 'cuda' requested but no CUDA device is available")
    return torch.device(name)


def _pick_images(dataset, count: int, seed: int, what: str) -> list[int]:
    """``count`` distinct random indices of ``dataset`` (seeded); one-line error if it has fewer images."""
    import torch

    if count < 1:
        raise ValueError(f"--images must be >= 1, got {count}")
    if count > len(dataset):
        raise ValueError(f"--images {count}: {what} has only {len(dataset)} images")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return order[:count].tolist()


def _load_model(path: str, kinds: tuple[str, ...], categories: list[dict], dataset: str, role: str) -> dict:
    """A trained detector from a checkpoint of one of ``kinds``: model (eval mode), kind, KD mode, adapters."""
    from defeat.distill import FeatureAdapters
    from defeat.engine import check_categories, load_checkpoint, load_detector
    from defeat.models.zoo import levels_of

    try:
        state = load_checkpoint(path, kind=kinds)
    except ValueError as err:
        raise ValueError(f"{role}: {err}") from None
    check_categories(state, categories, path, dataset)
    model, cfg = load_detector(path)
    mode = "none" if state["kind"] == "detector" else cfg.distill.feature_mode
    adapters = None
    weights = {k[len("adapters."):]: v for k, v in state["model"].items() if k.startswith("adapters.")}
    if weights:
        levels = [k.split(".")[1] for k in weights if k.endswith(".weight")]
        out_ch, in_ch = weights[f"convs.{levels[0]}.weight"].shape[:2]
        adapters = FeatureAdapters(levels, in_ch, out_ch)
        adapters.load_state_dict(weights)
        adapters.eval()
    return {"model": model, "kind": state["kind"], "mode": mode, "adapters": adapters, "config": cfg,
            "levels": levels_of(model), "channels": model.backbone.out_channels, "path": str(path)}


def _parse_students(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--student expects NAME=CHECKPOINT, got {item!r}")
        if not _NAME.match(name):
            raise ValueError(f"--student: name {name!r} may only use letters, digits, '_', '-' and '.'")
        if name in out:
            raise ValueError(f"--student: name {name!r} is given twice; names must be unique")
        out[name] = path
    return out


def _strides(levels: list[str]) -> dict[str, int]:
    from defeat.distill.masks import level_number

    return {name: 2 ** level_number(name) for name in levels}


# ------------------------------------------------------------------------------------------ channel-distance
def run_channel_distance(args: argparse.Namespace) -> int:
    import torch

    from defeat.analysis import channel_distance as cd
    from defeat.analysis import feature_plots as fp
    from defeat.data import CocoDetection
    from defeat.models.zoo import fpn_features
    from defeat.utils import atomic_write_json

    students_arg = _parse_students(args.student)
    device = _device(args.device)
    dataset = CocoDetection(args.images_dir, args.annotations)
    picks = _pick_images(dataset, args.images, args.seed, args.annotations)
    teacher = _load_model(args.teacher, ("detector",), dataset.categories, args.annotations, "--teacher")
    if args.level not in teacher["levels"]:
        raise ValueError(f"--level {args.level!r}: the teacher's FPN has levels {', '.join(teacher['levels'])}")
    students = {}
    for name, path in students_arg.items():
        s = _load_model(path, ("detector", "distill"), dataset.categories, args.annotations, f"--student {name}")
        feature = args.student_feature
        if feature == "auto":
            feature = "adapter" if s["adapters"] is not None else "raw"
        if feature == "adapter" and s["adapters"] is None:
            raise ValueError(f"--student {name}: --student-feature adapter, but {path} has no distillation adapters "
                             f"(a {s['kind']!r} checkpoint, feature mode {s['mode']!r})")
        channels = s["channels"]
        if feature == "adapter":
            if args.level not in s["adapters"].levels:
                raise ValueError(f"--student {name}: its adapters cover {s['adapters'].levels}, not {args.level}")
            channels = s["adapters"].convs[args.level].out_channels
        cd.check_layout(teacher["levels"], teacher["channels"], s["levels"], channels, what=f"--student {name} "
                        f"({s['config'].model.name}, {'adapter output' if feature == 'adapter' else 'raw FPN'})")
        s["feature"] = feature
        s["notes"] = []
        for key in ("min_size", "max_size"):
            mine, theirs = getattr(s["config"].model, key), getattr(teacher["config"].model, key)
            if mine != theirs:
                s["notes"].append(f"trained with model.{key}={mine}; compared on the teacher's input ({key}={theirs})")
        students[name] = s

    t_model = teacher["model"].to(device)
    strides = _strides(teacher["levels"])
    sums = {name: None for name in students}
    image_ids = []
    start = time.perf_counter()
    with torch.no_grad():
        for count, index in enumerate(picks):
            image, target = dataset[index]
            image_ids.append(int(target["image_id"]))
            batch, targets = t_model.transform([image.to(device)], [{k: v.to(device) if torch.is_tensor(v) else v
                                                                     for k, v in target.items()}])
            t_feats = fpn_features(t_model, batch.tensors)
            sizes = {name: tuple(f.shape[-2:]) for name, f in t_feats.items()}
            masks = cd.region_masks([t["boxes"] for t in targets], sizes, strides, args.mask, args.level_k0)
            height, width = sizes[args.level]
            obj = masks[args.level].cpu()
            valid = cd.valid_mask(batch.image_sizes, strides[args.level], height, width)
            teacher_map = t_feats[args.level].cpu()
            for name, s in students.items():
                model = s["model"].to(device)
                student_map = fpn_features(model, batch.tensors)[args.level]
                if s["feature"] == "adapter":
                    student_map = s["adapters"].to(device).convs[args.level](student_map)
                part = cd.region_channel_sums(teacher_map, student_map.cpu(), obj, valid)
                sums[name] = part if sums[name] is None else sums[name] + part
            if not args.quiet:
                print(f"\rimage {count + 1}/{len(picks)}", end="", flush=True)
    if not args.quiet:
        print()

    results = []
    for name, s in students.items():
        d_obj, d_bg = sums[name].means()
        results.append(cd.StudentDistance(name, s["mode"], s["feature"], d_obj.float(), d_bg.float(),
                                          sums[name].obj_count, sums[name].bg_count, s["notes"]))
    ordered = cd.seed_order(results)
    baseline = args.baseline
    if baseline is None:
        baseline = next((r.name for r in ordered if r.mode == "none"), None)
    elif baseline not in students:
        raise ValueError(f"--baseline {baseline!r} is not one of the students ({', '.join(students)})")
    if any(r.obj_pixels == 0 for r in results):
        print(f"warning: no object pixels on {args.level} in the chosen images; object distances are NaN")

    out = Path(args.out)
    meta = {"teacher": args.teacher, "students": {n: s["path"] for n, s in students.items()},
            "level": args.level, "images": len(picks), "image_ids": image_ids, "seed": args.seed,
            "annotations": str(args.annotations), "mask": args.mask,
            "student_feature": {n: ("adapter output (distillation adapter applied to the FPN map)"
                                    if s["feature"] == "adapter" else "raw FPN (neck) output")
                                for n, s in students.items()},
            "baseline": baseline,
            "distance": "per channel: mean |teacher - student| over object (background) pixels of all images pooled; "
                        "batch padding excluded",
            "input": "the teacher's transform (resize + normalisation) of each image; every model sees that tensor",
            "notes": {r.name: r.notes for r in results if r.notes}}
    rows = cd.summary_rows(ordered, baseline)
    fp.write_table(rows, out / "channel_distance_summary", meta)
    per_channel = [{"student": r.name, "channel": c, "object": float(r.obj[c]), "background": float(r.bg[c])}
                   for r in ordered for c in range(r.obj.numel())]
    fp.write_table(per_channel, out / "channel_distance_per_channel")
    title = (f"per-channel |teacher - student| on {args.level}, {len(picks)} images "
             f"(mask: {'all GT boxes' if args.mask == 'all' else 'boxes assigned to the level'})")
    fp.plot_channel_distance(ordered, args.level, out / "channel_distance.png", title=title)
    atomic_write_json(out / "run.json", dict(meta, seconds=round(time.perf_counter() - start, 3)))
    if not args.quiet:
        for row in rows:
            ratio = "" if row["ratio_to_baseline"] is None else f"  x{row['ratio_to_baseline']:.3f} of {baseline}"
            print(f"{row['student']:>16} [{row['mode']}, {row['feature']}] {row['region']:>10}: "
                  f"{row['mean_distance']:.4f}{ratio}")
        print(f"wrote {out}")
    return 0


def register_channel_distance(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "channel-distance", help="per-channel teacher-student distance in object vs background regions",
        description="Per-channel mean |teacher - student| of one FPN level over object and background pixels of "
                    "N random images (DeFeat supplementary, Fig. 1): one panel per student and a summary table.")
    p.add_argument("--teacher", required=True, help="teacher checkpoint (kind 'detector')")
    p.add_argument("--student", required=True, nargs="+", metavar="NAME=CHECKPOINT",
                   help="students: 'detector' (no KD) or 'distill' checkpoints, with unique names")
    p.add_argument("--level", default="P2", help="FPN level to compare (default P2, the first FPN level)")
    p.add_argument("--student-feature", choices=("auto", "raw", "adapter"), default="auto",
                   help="student map compared with the teacher's: raw FPN output, the distillation adapter's "
                        "output, or auto = adapter when the checkpoint has adapters, else raw (default)")
    p.add_argument("--baseline", default=None,
                   help="student the ratios refer to (default: the first student without feature KD)")
    _add_data_arguments(p, "validation", 20)
    p.set_defaults(func=run_channel_distance)


# ------------------------------------------------------------------------------------------ grad-norm
def _pretrain(args, student, teacher, base_cfg, adapters, dataset_dirs, device, out: Path):
    """K steps of all-regions feature distillation with the project's distiller and training loop."""
    import copy

    from defeat.data import CocoDetection
    from defeat.distill import DeFeatDistiller
    from defeat.engine import DistInfo, train

    cfg = copy.deepcopy(base_cfg)
    cfg.data.train_images, cfg.data.train_annotations = dataset_dirs
    cfg.data.workers = 0
    cfg.schedule.max_steps = args.train_steps
    cfg.schedule.warmup_steps = min(cfg.schedule.warmup_steps, max(args.train_steps // 5, 1))
    if cfg.schedule.policy == "step":
        cfg.schedule.milestones = [m for m in cfg.schedule.milestones if m < args.train_steps]
    cfg.eval.every_steps = 0
    cfg.output.dir = str(out / "pretrain")
    cfg.output.checkpoint_every = 0
    cfg.output.tensorboard = False
    cfg.distill.feature_mode = "all"
    cfg.distill.proposal_mode = "none"
    cfg.distill.weight_decay_policy, cfg.distill.stop_step = "constant", 0
    distiller = DeFeatDistiller(student, teacher, cfg.distill, max_steps=args.train_steps)
    if adapters is not None:
        distiller.adapters.load_state_dict(adapters.state_dict())
    train(cfg, distiller, student, CocoDetection(*dataset_dirs), None, DistInfo(device=device), kind="distill",
          before_step=distiller.before_step, progress=not args.quiet)
    return distiller.adapters


def run_grad_norm(args: argparse.Namespace) -> int:
    import copy

    import torch

    from defeat.analysis import feature_plots as fp
    from defeat.analysis import grad_norm as gn
    from defeat.analysis.channel_distance import region_masks, valid_mask
    from defeat.config import DistillConfig
    from defeat.data import CocoDetection
    from defeat.distill import (
        FEATURE_MODES,
        PROPOSAL_MODES,
        DeFeatDistiller,
        check_compatible,
    )
    from defeat.utils import atomic_write_json

    for value, allowed, flag in ((args.mode, FEATURE_MODES, "--mode"), (args.proposal_mode, PROPOSAL_MODES,
                                                                         "--proposal-mode")):
        if value not in allowed:
            raise ValueError(f"{flag}: unknown value {value!r} (choose from {', '.join(allowed)})")
    device = _device(args.device)
    loss_name = args.loss or ("sum" if args.teacher else "detection")
    if loss_name in ("distillation", "sum") and not args.teacher:
        raise ValueError(f"--loss {loss_name} needs --teacher (the distillation loss compares with a teacher)")
    if args.train_steps and not args.teacher:
        raise ValueError("--train-steps needs --teacher (it distils the student for K steps first)")
    if args.train_steps < 0:
        raise ValueError(f"--train-steps must be >= 0, got {args.train_steps}")
    if loss_name != "detection" and args.mode == "none" and args.proposal_mode == "none":
        raise ValueError(f"--loss {loss_name} with --mode none and --proposal-mode none has no distillation term")
    dataset = CocoDetection(args.images_dir, args.annotations)
    picks = _pick_images(dataset, args.images, args.seed, args.annotations)
    s = _load_model(args.student, ("detector", "distill"), dataset.categories, args.annotations, "--student")
    student = s["model"]
    levels = s["levels"]
    chosen = levels if not args.levels else [x.strip() for x in args.levels.split(",") if x.strip()]
    bad = [x for x in chosen if x not in levels]
    if bad:
        raise ValueError(f"--levels {','.join(bad)}: the student's FPN has levels {', '.join(levels)}")
    teacher = None
    if args.teacher:
        t = _load_model(args.teacher, ("detector",), dataset.categories, args.annotations, "--teacher")
        teacher = t["model"]
        try:
            check_compatible(student, teacher, where=f"--teacher {args.teacher}")
        except ValueError as err:
            raise ValueError(f"{err} (student {s['config'].model.name})") from None
    out = Path(args.out)
    adapters, adapters_from = s["adapters"], ("the student checkpoint" if s["adapters"] is not None else "fresh")
    if args.train_steps:
        adapters = _pretrain(args, student, teacher, s["config"], adapters, (args.images_dir, args.annotations),
                             device, out)
        adapters_from = f"{args.train_steps} steps of all-regions distillation"

    settings = copy.deepcopy(s["config"].distill) if s["kind"] == "distill" else DistillConfig()
    settings.feature_mode, settings.proposal_mode = args.mode, args.proposal_mode
    settings.weight_decay_policy, settings.stop_step = "constant", 0
    if teacher is not None:
        module = DeFeatDistiller(student, teacher, settings).to(device)
        if module.adapters is not None and adapters is not None:
            try:
                module.adapters.load_state_dict(adapters.state_dict())
            except RuntimeError as err:
                raise ValueError(f"--student: its adapters do not fit the teacher ({str(err).splitlines()[0]})") \
                    from None
        elif module.adapters is not None:
            adapters_from = "fresh"
    else:
        module = student.to(device)
    module.train()

    strides = _strides(levels)
    per_image, pooled = [], {name: gn.RegionNorms() for name in chosen}
    captured = {}

    def keep_transform_output(_module, _inputs, output):
        captured["batch"], captured["targets"] = output

    image_ids, start = [], time.perf_counter()
    for count, index in enumerate(picks):
        image, target = dataset[index]
        image_id = int(target["image_id"])
        image_ids.append(image_id)
        target = {k: v.to(device) if torch.is_tensor(v) else v for k, v in target.items()}
        torch.manual_seed(args.seed * 100003 + index)  # the RPN / RoI samplers draw from the global generator
        handle = student.transform.register_forward_hook(keep_transform_output)
        try:
            with gn.FeatureGradHook(student.backbone, levels) as hook:
                losses = module([image.to(device)], [target])
                distill_keys = [k for k in losses if k.startswith(("loss_feat", "loss_kd"))]
                keys = {"sum": list(losses), "distillation": distill_keys,
                        "detection": [k for k in losses if k not in distill_keys]}[loss_name]
                if not keys:
                    raise ValueError(f"--loss {loss_name}: the model returned no such terms ({', '.join(losses)})")
                loss = sum(losses[k] for k in keys)
                module.zero_grad(set_to_none=True)
                loss.backward()
        finally:
            handle.remove()
        module.zero_grad(set_to_none=True)
        batch, targets = captured["batch"], captured["targets"]
        sizes = {name: tuple(f.shape[-2:]) for name, f in hook.features.items()}
        masks = region_masks([t["boxes"].detach().cpu() for t in targets], sizes, strides, args.mask, args.level_k0)
        h_img, w_img = batch.image_sizes[0]
        norms, ratios = {}, {}
        for name in chosen:
            grad = hook.grads.get(name)
            height, width = sizes[name]
            norm = gn.pixel_grad_norm(grad).cpu() if grad is not None else torch.zeros(1, height, width)
            valid = valid_mask(batch.image_sizes, strides[name], height, width)
            stats = gn.region_norms(norm, masks[name], valid)
            pooled[name] = pooled[name] + stats
            ratios[name] = stats.ratio
            per_image.append({"image_id": image_id, "level": name, "object_mean": stats.obj_mean,
                              "background_mean": stats.bg_mean, "ratio": stats.ratio,
                              "object_pixels": stats.obj_count, "background_pixels": stats.bg_count})
            rows_valid, cols_valid = int(valid[0].any(dim=1).sum()), int(valid[0].any(dim=0).sum())
            norms[name] = norm[0, :rows_valid, :cols_valid].numpy()
        mean = torch.tensor(student.transform.image_mean)[:, None, None]
        std = torch.tensor(student.transform.image_std)[:, None, None]
        shown = (batch.tensors[0, :, :h_img, :w_img].detach().cpu() * std + mean).clamp(0, 1)
        fp.plot_grad_norm_overlay(shown.permute(1, 2, 0).numpy(), norms, strides, out / f"grad_norm_{image_id}.png",
                                  boxes=targets[0]["boxes"].detach().cpu().numpy(), ratios=ratios,
                                  title=f"image {image_id}: |d({loss_name} loss)/dP| per pixel "
                                        f"(darker blue = larger)")
        if not args.quiet:
            print(f"\rimage {count + 1}/{len(picks)}: loss {float(loss.detach()):.4f}", end="", flush=True)
    if not args.quiet:
        print()

    total = gn.RegionNorms()
    overall = []
    for name in chosen:
        total = total + pooled[name]
        overall.append({"image_id": "all", "level": name, "object_mean": pooled[name].obj_mean,
                        "background_mean": pooled[name].bg_mean, "ratio": pooled[name].ratio,
                        "object_pixels": pooled[name].obj_count, "background_pixels": pooled[name].bg_count})
    overall.append({"image_id": "all", "level": "all", "object_mean": total.obj_mean,
                    "background_mean": total.bg_mean, "ratio": total.ratio, "object_pixels": total.obj_count,
                    "background_pixels": total.bg_count})
    meta = {"student": args.student, "teacher": args.teacher, "loss": loss_name,
            "loss_terms": keys, "feature_mode": args.mode if teacher is not None else None,
            "proposal_mode": args.proposal_mode if teacher is not None else None,
            "adapters": adapters_from if teacher is not None and module.adapters is not None else None,
            "train_steps": args.train_steps, "images": len(picks), "image_ids": image_ids, "seed": args.seed,
            "annotations": str(args.annotations), "mask": args.mask, "levels": chosen,
            "statistic": "ratio = mean gradient norm on object pixels / on background pixels (padding excluded); "
                         "rows with image_id 'all' pool the pixels of every image (level 'all': and every level)",
            "norm": "per-pixel L2 norm over channels of dL/dP_level, recorded by tensor hooks on the FPN outputs"}
    fp.write_table(overall + per_image, out / "grad_norm_ratio", meta)
    atomic_write_json(out / "run.json", dict(meta, seconds=round(time.perf_counter() - start, 3)))
    if not args.quiet:
        print("object/background mean gradient norm, all images: " +
              "  ".join(f"{r['level']}={r['ratio']:.3f}" for r in overall))
        print(f"wrote {out}")
    return 0


def register_grad_norm(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "grad-norm", help="gradient-norm maps of the FPN outputs, object vs background",
        description="Back-propagate the detection loss, the DeFeat distillation loss or their sum for N random "
                    "images and record the per-pixel L2 norm of the gradient at every FPN level (DeFeat "
                    "supplementary, Fig. 2-3): overlaid heatmaps and the object/background mean-norm ratio.")
    p.add_argument("--student", required=True, help="student checkpoint ('detector' or 'distill')")
    p.add_argument("--teacher", default=None, help="teacher checkpoint (kind 'detector'); needed for the "
                                                   "distillation loss and --train-steps")
    p.add_argument("--mode", default="all",
                   help="feature_mode of the distiller whose loss is back-propagated: none, object, background, all, "
                        "decoupled or fgfi (default all)")
    p.add_argument("--proposal-mode", default="none",
                   help="proposal_mode of that distiller: none (default: only the feature term), positive, negative, "
                        "all or decoupled")
    p.add_argument("--loss", choices=LOSSES, default=None,
                   help="loss to back-propagate (default: sum with --teacher, else detection)")
    p.add_argument("--levels", default=None, help="comma-separated FPN levels to draw (default: all)")
    p.add_argument("--train-steps", type=int, default=0,
                   help="first distil the student for K steps, all regions (the supplementary's setting; default 0)")
    _add_data_arguments(p, "training", 8)
    p.set_defaults(func=run_grad_norm)
