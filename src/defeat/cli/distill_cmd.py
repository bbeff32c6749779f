"""``defeat distill CONFIG``: train a student detector from a frozen teacher with DeFeat (see docs/distill.md)."""

from __future__ import annotations

from pathlib import Path

from defeat.cli.train_cmd import add_config_arguments


def register(subparsers) -> None:
    distill = subparsers.add_parser("distill", help="distil a teacher into a student with DeFeat (runs under torchrun)")
    add_config_arguments(distill)
    distill.add_argument("--resume", action="store_true", help="continue from output.dir/checkpoint_last.pt")
    distill.add_argument("--force", action="store_true",
                         help="start even when the teacher fails its sanity check (same as distill.force=true)")
    distill.set_defaults(func=run_distill)


def load_teacher(cfg, categories: list[dict], dataset: str):
    """The frozen teacher named by ``cfg.distill``: its model section from ``teacher_config`` (or the
    checkpoint's own config), its weights from ``teacher_checkpoint``. Prints the load report; refuses
    missing/unexpected keys unless ``distill.force``."""
    from defeat.config import load_config
    from defeat.engine import check_categories, detector_state, load_checkpoint
    from defeat.models import build_detector

    path = cfg.distill.teacher_checkpoint
    if not path:
        raise ValueError("distill.teacher_checkpoint: not set (path to the teacher's model_final.pt)")
    state = load_checkpoint(path)
    check_categories(state, categories, path, dataset)
    if cfg.distill.teacher_config:
        model_cfg = load_config(cfg.distill.teacher_config).model
    else:
        from defeat.config import config_from_dict
        model_cfg = config_from_dict(state["config"], source=str(path)).model
    teacher = build_detector(model_cfg, len(categories))
    missing, unexpected = teacher.load_state_dict(detector_state(state), strict=False)
    report = f"teacher {model_cfg.name} from {path}: {len(missing)} missing, {len(unexpected)} unexpected keys"
    if missing or unexpected:
        example = (missing + unexpected)[:3]
        if not cfg.distill.force:
            raise ValueError(f"{path}: weights do not fit {model_cfg.name} ({report}, e.g. {example}); "
                             "check distill.teacher_config or pass --force")
        report += f" (e.g. {example}; continuing because of --force)"
    return teacher, model_cfg, report


def run_distill(args) -> int:
    from defeat.config import load_config
    from defeat.distill import build_distiller
    from defeat.engine import build_for_dataset, cleanup, evaluate, init_distributed, load_datasets, train
    from defeat.engine.distributed import broadcast_from_main

    overrides = list(args.overrides) + (["distill.force=true"] if args.force else [])
    cfg = load_config(args.config, overrides)
    info = init_distributed(cfg.device)
    try:
        train_set, val_set = load_datasets(cfg)
        categories = train_set.categories
        teacher, teacher_model_cfg, report = load_teacher(cfg, categories, cfg.data.train_annotations)
        student = build_for_dataset(cfg.model, categories, cfg.seed)
        try:  # DeFeatDistiller for Faster R-CNN pairs, the one-stage distiller otherwise
            distiller = build_distiller(student, teacher, cfg.distill, max_steps=cfg.schedule.max_steps,
                                        where=f"teacher {cfg.distill.teacher_checkpoint}")
        except ValueError as err:
            raise ValueError(f"{err} (student model.name={cfg.model.name})") from None
        distiller.to(info.device)
        if info.is_main:
            print(report)
            print(f"DeFeat: feature_mode={cfg.distill.feature_mode} proposal_mode={cfg.distill.proposal_mode} "
                  f"student {cfg.model.name} <- teacher {teacher_model_cfg.name}")

        reference = {}
        n = cfg.distill.teacher_check_images
        if val_set is not None and n > 0:
            # Teacher sanity check on N validation images, the (untrained) student beside it.
            quick = dict(batch_size=cfg.eval.batch_size, max_images=n, score_thresh=cfg.eval.score_thresh,
                         progress=False)
            t_stats = evaluate(teacher, val_set, info, **quick)
            s_stats = evaluate(student, val_set, info, **quick)
            verdict = None
            if info.is_main:
                print(f"teacher check on {min(n, len(val_set))} val images: teacher AP {100 * t_stats['AP']:.1f} "
                      f"AP50 {100 * t_stats['AP50']:.1f} | student AP {100 * s_stats['AP']:.1f} "
                      f"AP50 {100 * s_stats['AP50']:.1f}")
                if t_stats["AP"] < cfg.distill.teacher_min_ap:
                    verdict = (f"{cfg.distill.teacher_checkpoint}: teacher AP {100 * t_stats['AP']:.1f} on "
                               f"{min(n, len(val_set))} val images is below distill.teacher_min_ap "
                               f"({100 * cfg.distill.teacher_min_ap:.1f}); is it trained on this dataset?")
            verdict = broadcast_from_main(verdict, info)
            if verdict and not cfg.distill.force:
                raise ValueError(f"{verdict} Pass --force to distil anyway")
            if verdict and info.is_main:
                print(f"warning: {verdict} (continuing because of --force)")
            evaluated = min(cfg.data.val_max_images or len(val_set), len(val_set))
            if min(n, len(val_set)) != evaluated:  # side-by-side numbers must come from the same images as the student's
                t_stats = evaluate(teacher, val_set, info, batch_size=cfg.eval.batch_size,
                                   max_images=cfg.data.val_max_images, score_thresh=cfg.eval.score_thresh,
                                   progress=False)
            if info.is_main:
                reference = {"teacher_AP": t_stats["AP"], "teacher_AP50": t_stats["AP50"]}
            reference = broadcast_from_main(reference, info)

        result = train(cfg, distiller, student, train_set, val_set, info, kind="distill", resume=args.resume,
                       before_step=distiller.before_step, reference_metrics=reference or None)
        if info.is_main:
            print(f"final checkpoint: {result.final_checkpoint}")
            if result.metrics:
                side = f" | teacher AP {100 * reference['teacher_AP']:.1f}" if reference else ""
                print(f"student COCO AP {100 * result.metrics['AP']:.1f} (AP50 {100 * result.metrics['AP50']:.1f}){side}")
            print(f"export the student with: defeat export {Path(result.final_checkpoint)} --out student.pt")
    finally:
        cleanup(info)
    return 0
