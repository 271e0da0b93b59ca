"""``adapterkit merge DIR [--base MODEL] --out OUT``: a plain transformers model with the adapter folded in.

The base defaults to the one the adapter records; a folder, a hub name or an offline alias. The
merged model has the adapter's task (its head, number of labels and label names for a classifier)."""

from __future__ import annotations

import argparse

from ..cli import command


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("adapter", metavar="DIR", help="adapter folder (adapterkit's or PEFT's)")
    parser.add_argument(
        "--base",
        default=None,
        metavar="MODEL",
        help="the base model: a transformers folder, a hub name or an alias "
        "(default: the one recorded in the adapter folder)",
    )
    parser.add_argument("--out", required=True, metavar="OUT", help="folder to write the merged model to")
    parser.add_argument(
        "--dtype",
        choices=("bf16", "fp16", "fp32"),
        default=None,
        help="dtype of the saved weights (default: the base model's)",
    )
    parser.add_argument("--name", default="default", help="which adapter, for a folder holding several")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="read a base that has only pickle weights (.bin), with weights_only=True; only for files you trust",
    )


@command("merge", "Fold an adapter into its base model and save a plain transformers model.", _arguments)
def run(args: argparse.Namespace) -> int:
    from ..io.export import export_merged

    out = export_merged(
        args.adapter,
        args.base,
        args.out,
        dtype=args.dtype,
        name=args.name,
        overwrite=args.overwrite,
        allow_pickle=args.allow_pickle,
    )
    print(f"merged model written to {out}")
    return 0
