"""Run under `accelerate launch` with an FSDP config: train from a JSON config, then each process
writes what it held (rank-<r>.json): whether the model was sharded, and its share of what trained.

With a second argument ``resume``, the processes then train again from the next-to-last checkpoint
(``--resume`` after a crash): the adapter of the first run is kept as ``whole.safetensors``.
"""
import json
import os
import shutil
import sys
import time
from pathlib import Path

import adapterkit as ak


def report(model) -> dict:
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    trained = [p for p in model.parameters() if p.requires_grad]
    return {"sharded": isinstance(model, FSDPModule), "dtensors": sum(isinstance(p, DTensor) for p in trained),
            "trained": len(trained), "whole": sum(p.numel() for p in trained),
            "local": sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in trained)}


def rewind(out: Path, rank: int) -> None:
    """Keep the adapter, drop the newest checkpoint (rank 0), then let every process go on."""
    ready = out / "rewound"
    if rank == 0:
        shutil.copy(out / "adapter_model.safetensors", out / "whole.safetensors")
        shutil.rmtree(sorted((out / "checkpoints").iterdir())[-1])
        ready.touch()
    deadline = time.time() + 120
    while not ready.exists():
        if time.time() > deadline:
            raise TimeoutError("rank 0 did not rewind the run")
        time.sleep(0.05)


config = json.loads(open(sys.argv[1]).read())
out, rank = Path(config["output"]["dir"]), int(os.environ.get("RANK", "0"))
result = ak.train(config)
(out / f"rank-{rank}.json").write_text(json.dumps(report(result.model)))
if sys.argv[2:] == ["resume"]:
    rewind(out, rank)
    ak.train(config, resume=True)
