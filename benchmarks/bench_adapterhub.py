"""Compacter and LoReFT: adapterkit beside AdapterHub (the ``adapters`` package) on the model of
bench_methods.py: trainable parameters, adapter file size, training-step time.

AdapterHub's ``adapters`` 1.3.0 requires transformers ~=4.57.6, so this runs in an environment of
its own (adapterkit's tests and other benchmarks use transformers 5):

    python -m venv /tmp/ah && /tmp/ah/bin/pip install torch==2.13.0 adapters==1.3.0 transformers==4.57.6 safetensors
    OMP_NUM_THREADS=1 PYTHONPATH=. /tmp/ah/bin/python benchmarks/bench_adapterhub.py --steps 5

- params: trainable parameters after attach (``ak.summary``; AdapterHub: ``requires_grad`` after
  ``train_adapter``, without the model's head).
- file:   bytes of the adapter's weights file (``ak.save_adapter``; AdapterHub ``save_adapter``).
- step:   as in bench_methods.py: the two alternate step by step in one process; ratio = ak / AdapterHub.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import warnings

import torch

import adapterkit as ak

sys.path.insert(0, os.path.dirname(__file__))
from bench_methods import BATCH, MODEL, SEQ, _stepper, base_model, table  # noqa: E402


def methods():
    """name -> (adapterkit config, AdapterHub config)."""
    import adapters

    return {
        "compacter": (ak.CompacterConfig(), adapters.CompacterConfig()),
        "compacter_pp": (ak.CompacterConfig(preset="pfeiffer"), adapters.CompacterPlusPlusConfig()),
        "loreft": (
            ak.LoReFTConfig(rank=4, positions="f7+l7"),
            adapters.LoReftConfig(r=4, prefix_positions=7, suffix_positions=7, dropout=0.0),
        ),
    }


def _weights_bytes(folder: str) -> int:
    return sum(
        os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.endswith((".safetensors", ".bin"))
    )


def measure(name, ours_cfg, hub_cfg, base, ids, steps: int) -> dict:
    import adapters

    ours = ak.attach(copy.deepcopy(base), ours_cfg)
    theirs = copy.deepcopy(base)
    adapters.init(theirs)
    theirs.add_adapter(name, config=hub_cfg)
    theirs.train_adapter(name)
    theirs.train()
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        ak.save_adapter(ours, a)
        theirs.save_adapter(b, name, with_head=False)
        row = {
            "method": name,
            "ak_params": ak.summary(ours).trainable,
            "ak_file": _weights_bytes(a),
            "peft_params": sum(
                p.numel() for n, p in theirs.named_parameters() if p.requires_grad and "lm_head" not in n
            ),
            "peft_file": _weights_bytes(b),
        }
    runs = {"ak": (_stepper(ours, ids), []), "peft": (_stepper(theirs, ids), [])}
    for i in range(steps + 2):
        for lib in list(runs) if i % 2 == 0 else list(reversed(runs)):
            took = runs[lib][0]()
            if i >= 2:
                runs[lib][1].append(took)
    for lib, (_, times) in runs.items():
        row[f"{lib}_ms"] = 1000 * statistics.median(times)
        row[f"{lib}_min_ms"] = 1000 * min(times)
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="*", default=None)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    import adapters
    import transformers

    chosen = methods()
    base = base_model()
    ids = torch.randint(0, MODEL["vocab_size"], (BATCH, SEQ), generator=torch.Generator().manual_seed(1))
    rows = []
    for name in args.methods or list(chosen):
        rows.append(measure(name, *chosen[name], base, ids, args.steps))
        print(f"{name}: {rows[-1]}", file=sys.stderr, flush=True)
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, adapters {adapters.__version__}, "
        f"{torch.get_num_threads()} threads, batch {BATCH}x{SEQ}"
    )
    print(table(rows).replace("PEFT", "AdapterHub"))


if __name__ == "__main__":
    main()
