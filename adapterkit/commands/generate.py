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

from ..cli import command
from ..errors import AdapterFileError


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("adapter", help="an adapter folder (adapter_config.json + adapter_model.safetensors)")
    p.add_argument("prompts", nargs="*", help="prompts (none: read one per line from stdin)")
    p.add_argument("--base", default=None, help="the base model: alias, folder or hub name "
                   "(default: the one recorded in the adapter folder)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--compare", action="store_true", help="also show the base model's answer")
    p.add_argument("--no-chat-template", action="store_true", help="feed the raw prompt text")
    p.add_argument("--system", default=None, help="a system prompt (default: the one used in training)")
    p.set_defaults(_trailing="prompts")  # prompts may also follow the options


def _base_name(adapter: Path) -> str:
    import json

    import yaml

    trained = adapter / "train_config.yaml"
    if trained.is_file():
        return yaml.safe_load(trained.read_text())["model"]["name"]
    config = adapter / "adapter_config.json"
    if config.is_file():
        name = json.loads(config.read_text()).get("base_model_name_or_path")
        if name:
            return name
    raise AdapterFileError(f"{str(adapter)!r} does not record its base model; pass --base MODEL.")


def _task(folder: Path) -> str:
    """seq2seq for an encoder-decoder adapter (its task_type, or the data it was trained on), else causal-lm."""
    import json

    import yaml

    config = folder / "adapter_config.json"
    if config.is_file() and json.loads(config.read_text()).get("task_type") == "SEQ_2_SEQ_LM":
        return "seq2seq"
    trained = folder / "train_config.yaml"
    if trained.is_file():
        data = yaml.safe_load(trained.read_text())
        if (data.get("model") or {}).get("task") == "seq2seq" or (data.get("data") or {}).get("format") == "seq2seq":
            return "seq2seq"
    return "causal-lm"


def _data_config(args, folder: Path):
    """How prompts are rendered: as in training (train_config.yaml), unless the flags say otherwise."""
    import yaml

    from ..training.sections import DataConfig

    trained = folder / "train_config.yaml"
    data = yaml.safe_load(trained.read_text()).get("data", {}) if trained.is_file() else {}
    system = args.system if args.system is not None else data.get("system_prompt")
    template = data.get("chat_template", True) and not args.no_chat_template
    return DataConfig(train="-", chat_template=template, system_prompt=system)


@command("generate", "generate text with a trained adapter (and the base model, --compare)", _arguments)
def run(args) -> int:
    import adapterkit as ak

    from ..models import load_model
    from ..training.data import prompt_ids, source_ids
    from ..training.evaluate import generate_texts

    folder = Path(args.adapter)
    if not folder.is_dir():
        raise AdapterFileError(f"adapter folder {args.adapter!r} does not exist.")
    task = _task(folder)
    model, tokenizer = load_model(args.base or _base_name(folder), task=task)
    ak.load_adapter(model, str(folder))
    model.eval()
    cfg = _data_config(args, folder)
    device = next(model.parameters()).device
    prompts = args.prompts or (line.strip() for line in sys.stdin if line.strip())
    for prompt in prompts:
        ids = [source_ids(tokenizer, prompt, cfg) if task == "seq2seq" else prompt_ids(tokenizer, prompt, cfg)]
        print(f"### {prompt}")
        if args.compare:
            with ak.disabled(model):
                print(f"base:    {generate_texts(model, tokenizer, ids, args.max_new_tokens, device)[0]}")
        label = "adapter: " if args.compare else ""
        print(f"{label}{generate_texts(model, tokenizer, ids, args.max_new_tokens, device)[0]}", flush=True)
    return 0
