"""``adapterkit plan MODEL_OR_CONFIG [--set k=v ...] [--gpu-memory 24GB] [--json]``: predicted peak
memory of a fine-tune, from the model's config alone, and the settings that fit a GPU."""

from __future__ import annotations

import argparse
import json

from ..cli import command


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        metavar="MODEL_OR_CONFIG",
        help="a training YAML, a model folder with config.json, or an alias (smollm2-135m, minilm-l6)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a training-config value, e.g. --set optim.batch_size=4 --set model.dtype=bfloat16",
    )
    p.add_argument(
        "--gpu-memory",
        metavar="SIZE",
        default=None,
        help="the GPU's memory (24GB = 24e9 bytes, 24GiB, 24000MB; a bare number is GiB): "
        "also list the settings that fit, fastest first",
    )
    p.add_argument(
        "--device", choices=("cuda", "cpu"), default="cuda", help="plan for a CUDA GPU (default) or for this CPU's heap"
    )
    p.add_argument("--json", action="store_true", help="print the plan as JSON (bytes)")


@command("plan", "predict a fine-tune's peak memory and the settings that fit a GPU", _arguments)
def run(args: argparse.Namespace) -> int:
    from ..planning import plan
    from ..planning.units import parse_memory

    budget = None if args.gpu_memory is None else parse_memory(args.gpu_memory)  # fail before reading
    result = plan(args.model, tuple(args.set), budget, device=args.device)
    print(json.dumps(result.to_dict(), indent=1) if args.json else result)
    return 0
