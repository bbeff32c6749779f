"""``defeat export CKPT --out student.pt [--onnx [student.onnx]]``: the student alone, for stock torchvision."""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    export = subparsers.add_parser("export", help="write the (distilled) student as a plain torchvision state dict")
    export.add_argument("checkpoint", help="a model_final.pt / checkpoint_last.pt of distill (or train)")
    export.add_argument("--out", required=True, help="output .pt (state dict; metadata goes to OUT.json)")
    export.add_argument(
        "--onnx",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="also export ONNX (default path: OUT with .onnx suffix); needs the onnx package",
    )
    export.set_defaults(func=run_export)


def run_export(args) -> int:
    from defeat import api

    onnx = None if args.onnx is None else (Path(args.onnx) if args.onnx else Path(args.out).with_suffix(".onnx"))
    meta = api.export(args.checkpoint, args.out, onnx=onnx)
    print(
        f"wrote {args.out} ({meta['tensors']} tensors, {meta['parameters']:,} parameters of "
        f"{meta['model']['name']}, {meta['num_classes']} classes) and {args.out}.json"
    )
    if onnx is not None:
        print(f"wrote {onnx}")
    return 0
