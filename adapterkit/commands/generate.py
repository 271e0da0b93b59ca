"""``adapterkit generate ADAPTER_DIR --base MODEL "prompt" ...``: try an adapter (decoder-only or
encoder-decoder: an encoder-decoder adapter reads each prompt as a source).

Greedy decoding. Prompts go through the tokenizer's chat template (as in training) unless
``--no-chat-template``. ``--compare`` prints the base model's answer next to the adapter's.
With no prompt, reads one prompt per line from stdin (a simple chat mode).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli import command, positive_int
from ..errors import AdapterFileError, InputError


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("adapter", help="an adapter folder (adapter_config.json + adapter_model.safetensors)")
    p.add_argument("prompts", nargs="*", help="prompts (none: read one per line from stdin)")
    p.add_argument(
        "--base",
        default=None,
        help="the base model: alias, folder or hub name (default: the one recorded in the adapter folder)",
    )
    p.add_argument("--max-new-tokens", type=positive_int, default=48, metavar="N")
    p.add_argument("--compare", action="store_true", help="also show the base model's answer")
    p.add_argument("--no-chat-template", action="store_true", help="feed the raw prompt text")
    p.add_argument("--system", default=None, help="a system prompt (default: the one used in training)")
    p.set_defaults(_trailing="prompts")  # prompts may also follow the options


def _trained(folder: Path):
    """The TrainConfig the adapter was trained with (train_config.yaml), or None; checked like any config."""
    from ..training.config import TrainConfig

    file = folder / "train_config.yaml"
    return TrainConfig.from_yaml(file) if file.is_file() else None


def _base_name(folder: Path, data: dict, trained) -> str:
    if trained is not None:
        return trained.model.name
    name = data.get("base_model_name_or_path")
    if isinstance(name, str) and name:
        return name
    raise AdapterFileError(f"{str(folder)!r} does not record its base model; pass --base MODEL.")


def _task(data: dict, trained) -> str:
    """seq2seq for an encoder-decoder adapter (its task_type, or the data it was trained on), else causal-lm."""
    if data.get("task_type") == "SEQ_2_SEQ_LM":
        return "seq2seq"
    if trained is not None and "seq2seq" in (trained.model.task, trained.data.format):
        return "seq2seq"
    return "causal-lm"


def _data_config(args, trained):
    """How prompts are rendered: as in training (train_config.yaml), unless the flags say otherwise."""
    from ..training.sections import DataConfig

    data = trained.data if trained is not None else DataConfig(train="-")
    system = args.system if args.system is not None else data.system_prompt
    return DataConfig(train="-", chat_template=data.chat_template and not args.no_chat_template, system_prompt=system)


def _stdin_prompts():
    try:
        for line in sys.stdin:
            if line.strip():
                yield line.strip()
    except UnicodeDecodeError as err:
        raise InputError(
            f"stdin is not UTF-8 text ({err.reason} at byte {err.start}); "
            f"pass the prompts as arguments, or as UTF-8 lines on stdin."
        ) from None


@command("generate", "generate text with a trained adapter (and the base model, --compare)", _arguments)
def run(args) -> int:
    import adapterkit as ak

    from ..models import load_model
    from ..training.data import prompt_ids, source_ids
    from ..training.evaluate import generate_texts

    from ..io.read import find_folder, read_config

    folder = find_folder(args.adapter)  # errors for a missing folder, a file, no adapter_config.json
    data, trained = read_config(folder), _trained(folder)  # every file checked before the model loads
    task = _task(data, trained)
    cfg = _data_config(args, trained)
    model, tokenizer = load_model(args.base or _base_name(folder, data, trained), task=task)
    ak.load_adapter(model, str(folder))
    model.eval()
    device = next(model.parameters()).device
    prompts = args.prompts or _stdin_prompts()
    for prompt in prompts:
        ids = [source_ids(tokenizer, prompt, cfg) if task == "seq2seq" else prompt_ids(tokenizer, prompt, cfg)]
        print(f"### {prompt}")
        if args.compare:
            with ak.disabled(model):
                print(f"base:    {generate_texts(model, tokenizer, ids, args.max_new_tokens, device)[0]}")
        label = "adapter: " if args.compare else ""
        print(f"{label}{generate_texts(model, tokenizer, ids, args.max_new_tokens, device)[0]}", flush=True)
    return 0
