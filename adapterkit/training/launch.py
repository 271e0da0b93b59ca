"""Several processes through ``accelerate launch`` (never a launcher of our own).

``adapterkit train CONFIG --num-processes N`` re-runs the same command under
``python -m accelerate.commands.launch ... -m adapterkit.training.launch train CONFIG ...`` (this
module runs the command line; ``-m adapterkit.cli`` would import the CLI twice). With a GPU it asks
for DDP (``--multi_gpu``); on a CPU-only machine it runs DDP over gloo
(``ACCELERATE_USE_CPU=true`` with ``--multi_gpu``: ``--cpu`` alone would start one process).
``--config-file`` passes an Accelerate config (FSDP, DeepSpeed, ...) through (with a free port on
one machine); the loop then runs what it asks (sharding.py: FSDP2, on a CPU too) or says why not.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Optional, Sequence


def launched() -> bool:
    """True inside a process started by a launcher (accelerate / torchrun set these)."""
    return "LOCAL_RANK" in os.environ or "ACCELERATE_LAUNCHED" in os.environ


def _free_port() -> int:
    """A free TCP port, so two runs on one machine do not collide on the default one."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _accelerate_config(path: str, num_processes: Optional[int]) -> dict:
    """The Accelerate config file's settings, refusing what would not start N processes here."""
    import yaml

    from ..errors import ConfigError

    try:
        data = yaml.safe_load(open(path)) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"--config-file {path!r} is not a readable Accelerate YAML config: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config-file {path!r} is not an Accelerate config (a YAML mapping).")
    processes = num_processes or data.get("num_processes", 1)
    if data.get("use_cpu") and processes > 1:
        raise ConfigError(
            f"--config-file {path!r} sets use_cpu: true, with which `accelerate launch` starts one "
            f"process, not {processes} (it needs MPI); remove use_cpu: adapterkit trains on the CPU "
            "when there is no GPU."
        )
    return data


def launch_command(
    target: Sequence[str], num_processes: Optional[int], config_file: Optional[str], cuda: bool
) -> tuple[list[str], dict]:
    """(argv, environment) for ``accelerate launch`` running ``target`` (a script and its
    arguments, or ``["-m", module, ...]``) in each process."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    env = dict(os.environ, ACCELERATE_LAUNCHED="1")
    if config_file:
        cmd += ["--config_file", config_file]
        if num_processes:
            cmd += ["--num_processes", str(num_processes)]
        if _accelerate_config(config_file, num_processes).get("num_machines", 1) == 1:
            cmd += ["--main_process_port", str(_free_port())]
        if not cuda:
            env.setdefault("OMP_NUM_THREADS", "1")
    else:
        cmd += [
            "--multi_gpu",
            "--num_processes",
            str(num_processes or 1),
            "--num_machines",
            "1",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(_free_port()),
        ]
        if not cuda:
            cmd += ["--mixed_precision", "no"]
            env["ACCELERATE_USE_CPU"] = "true"
            env.setdefault("OMP_NUM_THREADS", "1")
    return cmd + list(target), env


def run_launched(child_args: Sequence[str], num_processes: Optional[int], config_file: Optional[str]) -> int:
    import torch

    target = ["-m", "adapterkit.training.launch", *child_args]
    cmd, env = launch_command(target, num_processes, config_file, torch.cuda.is_available())
    return subprocess.call(cmd, env=env)


if __name__ == "__main__":
    from adapterkit.cli import main

    sys.exit(main())
