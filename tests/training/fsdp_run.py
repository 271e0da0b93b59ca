"""Run under `accelerate launch` with an FSDP config: train from a JSON config, then each process
writes what it held (rank-<r>.json): whether the model was sharded, and its share of what trained.
``--resume``: continue from the newest checkpoint in the output folder.

(One training per launched process: a second `init_process_group` in a process that torchrun
started can hang, reading the first group's rendezvous keys from the launcher's store.)
"""

import json
import os
import sys
from pathlib import Path

import adapterkit as ak


def report(model) -> dict:
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    model.reshard()  # the root keeps its parameters whole after a forward (the last evaluation)
    trained = [p for p in model.parameters() if p.requires_grad]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    return {
        "sharded": isinstance(model, FSDPModule),
        "dtensors": sum(isinstance(p, DTensor) for p in trained),
        "trained": len(trained),
        "whole": sum(p.numel() for p in trained),
        "local": sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in trained),
        "frozen_dtensors": sum(isinstance(p, DTensor) for p in frozen),
        "frozen": len(frozen),
        "buffers": {type(b).__name__ for b in model.buffers()} == {"Tensor"},
    }


config = json.loads(open(sys.argv[1]).read())
result = ak.train(config, resume="--resume" in sys.argv)
rank = int(os.environ.get("RANK", "0"))
(Path(config["output"]["dir"]) / f"rank-{rank}.json").write_text(json.dumps(report(result.model)))
