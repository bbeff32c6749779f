"""``defeat data synth | import-yolo | export-yolo | import-voc | stats``: make, convert or measure COCO-format
datasets."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="generate the embedded benchmark or import datasets to COCO JSON")
    commands = data.add_subparsers(dest="data_command", required=True)

    synth = commands.add_parser("synth", help="generate the synthetic embedded benchmark (images + COCO JSON)")
    synth.add_argument("--out", required=True, help="output folder (train/, val/, train.json, val.json)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--num-train", type=int, default=600)
    synth.add_argument("--num-val", type=int, default=150)
    synth.add_argument("--image-size", type=int, default=320)
    synth.add_argument("--min-objects", type=int, default=2)
    synth.add_argument("--max-objects", type=int, default=8)
    synth.add_argument("--workers", type=int, default=2)
    synth.set_defaults(func=run_synth)

    yolo = commands.add_parser("import-yolo", help="convert YOLO txt labels to a COCO instances JSON")
    yolo.add_argument("--images", required=True, help="image folder")
    yolo.add_argument("--labels", required=True, help="folder of <image stem>.txt label files")
    yolo.add_argument("--classes", required=True, help="class names, one per line (line i = class i)")
    yolo.add_argument("--out", required=True, help="output COCO JSON")
    yolo.set_defaults(func=run_import_yolo)

    export = commands.add_parser(
        "export-yolo", help="COCO JSON to the Ultralytics layout (images linked, labels .txt, data.yaml)"
    )
    export.add_argument("--images", required=True, help="train image folder")
    export.add_argument("--annotations", required=True, help="train COCO instances JSON")
    export.add_argument("--val-images", help="val image folder")
    export.add_argument("--val-annotations", help="val COCO instances JSON")
    export.add_argument("--out", required=True, help="dataset folder to create (images/, labels/, data.yaml)")
    export.set_defaults(func=run_export_yolo)

    voc = commands.add_parser("import-voc", help="convert Pascal VOC xml annotations to a COCO instances JSON")
    voc.add_argument("--annotations", required=True, help="folder of VOC .xml files")
    voc.add_argument("--images", required=True, help="image folder")
    voc.add_argument("--out", required=True, help="output COCO JSON")
    voc.add_argument("--classes", help="comma-separated class list (default: every name seen, sorted)")
    voc.add_argument("--keep-difficult", action="store_true", help="keep 'difficult' objects (marked difficult: 1)")
    voc.set_defaults(func=run_import_voc)

    from defeat.cli.init_cmd import add_dataset_arguments

    stats = commands.add_parser("stats", help="dataset statistics, anchor coverage and a figure (writes no config)")
    add_dataset_arguments(stats)
    stats.add_argument("--model", default="faster_rcnn_r18_fpn", help="detector the anchors are fitted for")
    stats.add_argument("--json", help="also write the statistics as JSON here")
    stats.set_defaults(func=run_stats)


def run_synth(args) -> int:
    from defeat import api

    summary = api.synth(
        args.out,
        seed=args.seed,
        num_train=args.num_train,
        num_val=args.num_val,
        image_size=args.image_size,
        min_objects=args.min_objects,
        max_objects=args.max_objects,
        workers=args.workers,
    )
    print(json.dumps(summary, indent=2, default=str))
    return 0


def run_import_yolo(args) -> int:
    from defeat import api

    print(json.dumps(api.import_yolo(args.images, args.labels, args.classes, args.out), default=str))
    return 0


def run_export_yolo(args) -> int:
    from defeat import api

    summary = api.export_yolo(args.out, args.images, args.annotations, args.val_images, args.val_annotations)
    print(json.dumps(summary, default=str))
    return 0


def run_import_voc(args) -> int:
    from defeat import api

    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    print(
        json.dumps(
            api.import_voc(
                args.annotations, args.images, args.out, classes=classes, skip_difficult=not args.keep_difficult
            ),
            default=str,
        )
    )
    return 0


def run_stats(args) -> int:
    from defeat import api
    from defeat.cli.init_cmd import print_report
    from defeat.utils import atomic_write_json

    report = api.dataset_stats(
        args.annotations,
        args.images,
        val_annotations=args.val_annotations,
        val_images=args.val_images,
        model=args.model,
        image_size=args.image_size,
        figure=args.figure,
    )
    print_report(report)
    if args.json:
        atomic_write_json(args.json, report.as_dict())
        print(f"wrote {args.json}")
    return 0
