"""``adapterkit train CONFIG.yaml``: fine-tune an adapter as a YAML file says."""

from __future__ import annotations

import argparse

from ..cli import command, positive_int
from ..errors import ConfigError


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "config", nargs="?", help="the YAML train config (sections: model, adapter, data, optim, eval, output)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value, e.g. --set optim.lr=1e-4 (repeatable)",
    )
    p.add_argument(
        "--num-processes",
        type=positive_int,
        default=None,
        metavar="N",
        help="train on N processes through `accelerate launch` (DDP; gloo on a CPU)",
    )
    p.add_argument(
        "--config-file",
        default=None,
        metavar="F",
        help="an Accelerate config file passed to `accelerate launch` (FSDP, DeepSpeed, ...)",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="auto",
        help="continue from the newest checkpoint in output.dir (an error if there is none); "
        "--resume auto: continue if there is one, else start fresh",
    )


def _resume_mode(args) -> None:
    """``--resume`` (True), ``--resume auto`` or none (False); ``train --resume CONFIG`` also works."""
    value = args.resume
    if isinstance(value, str) and value != "auto":
        if args.config is not None:
            raise ConfigError(f"--resume takes no value, or 'auto'; got {value!r}.")
        args.config, args.resume = value, True  # the config came right after a bare --resume
    if args.config is None:
        raise ConfigError("give the YAML train config: adapterkit train CONFIG.yaml (see --help).")


def _child_args(args) -> list[str]:
    out = ["train", args.config]
    for item in args.set:
        out += ["--set", item]
    return out + {False: [], True: ["--resume"], "auto": ["--resume=auto"]}[args.resume]


@command("train", "fine-tune an adapter from a YAML config", _arguments)
def run(args) -> int:
    from ..paths import check_output_folder
    from ..training import TrainConfig
    from ..training.launch import launched, run_launched

    _resume_mode(args)
    config = TrainConfig.from_yaml(args.config, tuple(args.set))  # fail early, before launching
    check_output_folder(config.output.dir, "output.dir")
    if not launched() and ((args.num_processes or 1) > 1 or args.config_file):
        return run_launched(_child_args(args), args.num_processes, args.config_file)
    from ..training import train

    result = train(config, resume=args.resume)
    _report(result)
    return 0


def _report(result) -> None:
    import os

    if os.environ.get("RANK", "0") != "0":
        return
    for label, values in (("before", result.first_eval), ("after", result.last_eval)):
        if values:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in values.items())
            print(f"eval {label}: {shown}")
    saved = "adapter" if (result.output_dir / "adapter_config.json").is_file() else "model"
    print(f"{result.steps} steps in {result.train_seconds:.1f} s; {saved} saved to {result.output_dir}")
    curves = result.output_dir / "curves.png"
    if curves.is_file():
        print(f"loss and learning-rate curves: {curves}")
