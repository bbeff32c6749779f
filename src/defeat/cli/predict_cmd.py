"""``defeat predict INPUT --checkpoint CKPT --out results.json [--draw DIR [--draw-thresh 0.3]]``: a detector on
your images.

INPUT is an image, a folder of images or a COCO JSON (with ``--images DIR``); the COCO results JSON is ready
for ``defeat analyze errors`` (see :func:`defeat.api.predict`).
"""

from __future__ import annotations

import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="run a detector on an image, a folder or a COCO JSON's images; write COCO results",
        description="Run a detector on an image, a folder of images (sorted by name, ids 1..N; non-image files "
        "are skipped with a warning) or the images of a COCO JSON. Writes COCO results JSON "
        "(for `defeat analyze errors`); for a folder or an image also OUT's .images.json (the image "
        "ids, file names, sizes and categories the results refer to); with --draw, the images with "
        "labelled boxes.",
    )
    p.add_argument("input", help="an image file, a folder of images, or a COCO JSON (then --images DIR)")
    p.add_argument("--out", required=True, help="results JSON to write (e.g. runs/predict/results.json)")
    p.add_argument("--checkpoint", default=None, help="a checkpoint of defeat train / distill (model_final.pt)")
    p.add_argument("--model", default=None, help="a torchvision detector by name (with --weights)")
    p.add_argument(
        "--weights",
        default=None,
        help="its weight file as torchvision writes it (with --model; "
        "default DEFAULT: torchvision's COCO weights, downloaded once)",
    )
    p.add_argument(
        "--images",
        default=None,
        metavar="DIR",
        help="with a COCO JSON input: the folder its file_name entries are relative to",
    )
    p.add_argument("--score-thresh", type=float, default=0.05, help="keep detections scoring >= this (default 0.05)")
    p.add_argument("--draw", default=None, metavar="DIR", help="also write the images with labelled boxes to DIR")
    p.add_argument(
        "--draw-thresh",
        type=float,
        default=0.3,
        help="with --draw: draw only boxes scoring >= this (default 0.3); the results JSON keeps every detection "
        ">= --score-thresh",
    )
    p.add_argument("--batch-size", type=int, default=2, help="images per forward pass (default 2)")
    p.add_argument("--workers", type=int, default=0, help="data-loader processes decoding images (default 0)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"), help="default cpu")
    p.add_argument(
        "--precision",
        default=None,
        choices=("auto", "fp32", "bf16", "fp16"),
        help="inference precision (default: the model config's, as `defeat eval`)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=run_predict)


def detector_from_args(args):
    """The one place the model options become a LoadedModel: ``--checkpoint FILE``, or ``--model NAME [--weights
    FILE]`` (a torchvision detector; without ``--weights`` torchvision's DEFAULT COCO weights)."""
    from defeat import api
    from defeat.config import ModelConfig
    from defeat.models.spec import is_torchvision_name
    from defeat.models.torchvision_zoo import torchvision_defaults, torchvision_names

    if args.model is None and args.weights is None:
        if args.checkpoint is None:
            raise ValueError("predict: give --checkpoint FILE (or --model NAME --weights FILE)")
        return api.load_detector(args.checkpoint)
    if args.checkpoint is not None:
        raise ValueError("predict: give either --checkpoint or --model/--weights, not both")
    if args.model is None:
        raise ValueError("--weights needs --model NAME (the torchvision detector the file is for)")
    if not is_torchvision_name(args.model):
        raise ValueError(
            f"--model {args.model!r}: not a torchvision detector name (choose from {', '.join(torchvision_names())})"
        )
    # torchvision's own sizes and thresholds, the model's score threshold no higher than --score-thresh
    defaults = torchvision_defaults(args.model)
    model = ModelConfig(
        name=args.model, **{**defaults, "box_score_thresh": min(defaults["box_score_thresh"], args.score_thresh)}
    )
    return api.load_detector(model=model, weights=args.weights or "DEFAULT")


def run_predict(args) -> int:
    from defeat import api

    summary = api.predict(
        detector_from_args(args),
        args.input,
        args.out,
        images_dir=args.images,
        score_thresh=args.score_thresh,
        draw_dir=args.draw,
        draw_thresh=args.draw_thresh,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        workers=args.workers,
        progress=not args.quiet,
    )
    skipped = summary["skipped"]
    if skipped:
        names = ", ".join(s.rsplit("/", 1)[-1] for s in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        print(
            f"defeat: warning: {args.input}: skipped {len(skipped)} files that are not images ({names})",
            file=sys.stderr,
        )
    if args.quiet:
        return 0
    if summary["mapped_by_name"]:
        unmatched = summary["unmatched"]
        line = f"classes mapped to {args.input}'s categories by name"
        if unmatched:
            line += (
                f"; dropped {summary['dropped']} detections of {len(unmatched)} model classes it lacks "
                f"(e.g. {', '.join(unmatched[:3])})"
            )
        print(line)
    extra = f" and {summary['images_file']}" if summary["images_file"] else ""
    print(
        f"wrote {summary['results']}{extra}: {summary['detections']} detections (score >= {args.score_thresh}) "
        f"on {summary['images']} images in {summary['seconds']:.1f} s; {summary['precision']}"
    )
    if summary["draw_dir"]:
        print(
            f"drew {summary['drawn']} images with {summary['boxes_drawn']} boxes (score >= {args.draw_thresh}) "
            f"in {summary['draw_dir']}"
        )
    return 0
