"""Run under `accelerate launch`: train from a JSON config, then each process saves what it holds."""

import json
import sys

from safetensors.torch import save_file

import adapterkit as ak
from adapterkit.training.checkpoint import trainable_state

config = json.loads(open(sys.argv[1]).read())
result = ak.train(config)
rank = int(__import__("os").environ.get("RANK", "0"))
save_file(trainable_state(result.model), f"{config['output']['dir']}/rank-{rank}.safetensors")
