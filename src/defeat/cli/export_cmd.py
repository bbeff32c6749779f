"""``defeat export --checkpoint CKPT --out student.pt [--onnx [student.onnx]]``: the student alone, for stock
torchvision. The checkpoint is spelled ``--checkpoint`` as in ``defeat eval`` and ``defeat predict``; the old
positional ``defeat export CKPT`` is still accepted (deprecated, with a warning)."""

from __future__ import annotations

import sys
from pathlib import Path


def register(subparsers) -> None:
    export = subparsers.add_parser(
        "export",
        help="write the (distilled) student as a plain torchvision state dict",
        usage="defeat export --checkpoint CKPT --out OUT [--onnx [PATH]]",
    )
    export.add_argument(
        "--checkpoint", metavar="CKPT", help="a model_final.pt / checkpoint_last.pt of distill (or train)"
    )
    export.add_argument("old_checkpoint", nargs="?", metavar="CKPT", help="deprecated spelling of --checkpoint CKPT")
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


def checkpoint_from_args(args) -> str:
    """``--checkpoint CKPT``, or the deprecated positional ``CKPT`` (with a warning): exactly one of them."""
    if args.checkpoint is not None and args.old_checkpoint is not None:
        raise ValueError(
            f"export: the checkpoint given twice ({args.old_checkpoint} and --checkpoint {args.checkpoint}); "
            "give it once, as --checkpoint CKPT"
        )
    if args.checkpoint is None and args.old_checkpoint is None:
        raise ValueError("export: give the checkpoint to export: --checkpoint CKPT (e.g. runs/distill/model_final.pt)")
    if args.old_checkpoint is not None:
        print(
            f"defeat: warning: `defeat export CKPT` is deprecated; write `defeat export --checkpoint "
            f"{args.old_checkpoint}`",
            file=sys.stderr,
        )
        return args.old_checkpoint
    return args.checkpoint


def run_export(args) -> int:
    from defeat import api

    checkpoint = checkpoint_from_args(args)
    onnx = None if args.onnx is None else (Path(args.onnx) if args.onnx else Path(args.out).with_suffix(".onnx"))
    meta = api.export(checkpoint, args.out, onnx=onnx)
    print(
        f"wrote {args.out} ({meta['tensors']} tensors, {meta['parameters']:,} parameters of "
        f"{meta['model']['name']}, {meta['num_classes']} classes) and {args.out}.json"
    )
    if onnx is not None:
        print(f"wrote {onnx}")
    return 0
