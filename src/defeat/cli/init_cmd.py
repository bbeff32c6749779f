"""``defeat init``: dataset statistics, anchors fitted to the boxes and a commented config for one's own data."""

from __future__ import annotations


def add_dataset_arguments(parser) -> None:
    parser.add_argument("--annotations", required=True, help="training COCO instances JSON")
    parser.add_argument("--images", required=True, help="training image folder")
    parser.add_argument("--val-annotations", help="validation COCO instances JSON")
    parser.add_argument("--val-images", help="validation image folder")
    parser.add_argument("--image-size", type=int, help="shorter side for training (default: from the images)")
    parser.add_argument("--figure", help="also draw box sizes per class and anchor coverage to this PNG")


def register(subparsers) -> None:
    init = subparsers.add_parser("init", help="measure a COCO dataset and write a config for it (anchors fitted)")
    add_dataset_arguments(init)
    init.add_argument(
        "--out",
        required=True,
        help="config to write (with --family/--model also <stem>_teacher.yaml and <stem>_distill.yaml)",
    )
    init.add_argument(
        "--family",
        choices=["faster_rcnn", "retinanet", "fcos"],
        help="student <family>_r18_fpn, teacher <family>_r50_fpn; writes teacher + distill configs",
    )
    init.add_argument("--model", help="the student model, e.g. faster_rcnn_r34_fpn (implies the companions)")
    init.add_argument("--teacher", help="the teacher model (default: the family at depth 50; implies the companions)")
    init.add_argument("--batch-size", type=int, default=4)
    init.add_argument("--epochs", type=float, default=12.0, help="student schedule in passes over the train images")
    init.add_argument("--dry-run", action="store_true", help="print the statistics and configs, write no config")
    init.add_argument("--force", action="store_true", help="overwrite existing config files")
    init.set_defaults(func=run_init)


def print_report(report) -> None:
    from defeat.data.stats import format_statistics

    print("\n".join(format_statistics(report.train, "train")))
    if report.val is not None:
        print("\n".join(format_statistics(report.val, "val")))
    print(f"training size: min_size {report.min_size}, max_size {report.max_size} ({report.image_size_reason})")
    print(report.anchors.summary())
    for note in report.anchors.notes:
        print(f"note: {note}")
    if report.figure:
        print(f"wrote {report.figure}")


def run_init(args) -> int:
    from defeat import api

    result = api.init_config(
        args.annotations,
        args.images,
        args.out,
        val_annotations=args.val_annotations,
        val_images=args.val_images,
        family=args.family,
        model=args.model,
        teacher=args.teacher,
        image_size=args.image_size,
        batch_size=args.batch_size,
        epochs=args.epochs,
        dry_run=args.dry_run,
        overwrite=args.force,
        figure=args.figure,
    )
    print_report(result.report)
    for kind, path in result.configs.items():
        if result.written:
            print(f"wrote {path} ({kind})")
        else:
            print(f"--- {path} ({kind}, not written: --dry-run)\n{result.texts[kind]}")
    if result.written:
        first = result.configs["train"]
        print(f"next: defeat train {first} --estimate   (cost of the schedule), then defeat train {first}")
    return 0
