"""A tiny local transformers model folder (Llama or BERT) with a character-level tokenizer."""

from __future__ import annotations

import json
import string
from pathlib import Path

SPECIAL = ["<pad>", "<eos>", "<unk>"]
CHARS = list(string.printable[:95]) + ["\n"]  # digits, letters, punctuation, space, newline
TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}<eos>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def char_tokenizer(template: bool = True):
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL + CHARS)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    if template:
        tok.chat_template = TEMPLATE
    return tok


def tiny_folder(path: Path, kind: str = "llama", num_labels: int = 2, template: bool = True) -> str:
    """Save a tiny model and its tokenizer as a transformers folder; returns its path."""
    from tests.models import tiny_bert, tiny_llama

    tok = char_tokenizer(template)
    size = len(tok)
    if kind == "bert":
        model = tiny_bert(num_labels=num_labels, vocab_size=size, pad_token_id=0)
    else:
        model = tiny_llama(
            vocab_size=size,
            pad_token_id=0,
            eos_token_id=1,
            bos_token_id=None,
            max_position_embeddings=256,
            initializer_range=0.5,
        )
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def write_jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def memorise_records(n: int = 8) -> list[dict]:
    """Short prompt -> fixed-format answer pairs, easy to memorise."""
    return [{"prompt": f"q{i}?", "response": f"A:{i * 7 % 10}"} for i in range(n)]


def whole_and_resumed(cfg: dict, root: Path, crash_at: int):
    """Train ``cfg`` uninterrupted into root/whole, and into root/split stopped after step
    ``crash_at`` and resumed; returns the resumed run's result."""
    import pytest

    import adapterkit as ak

    ak.train(dict(cfg, output=dict(cfg["output"], dir=str(root / "whole"))))

    def crash(step, logs):
        if step == crash_at:
            raise KeyboardInterrupt

    split = dict(cfg, output=dict(cfg["output"], dir=str(root / "split")))
    with pytest.raises(KeyboardInterrupt):
        ak.train(split, callbacks=[crash])
    assert not (root / "split" / "adapter_model.safetensors").exists()
    return ak.train(split, resume=True)


def close_under_adam(got, want, what):
    """Equal within float tolerance, but for a rare few elements: Adam normalises each element's
    update, so one whose gradient is ~0 can move the other way when the all-reduce sums in another
    order. Those may differ by a fraction of the learning rate (1e-2 in these tests)."""
    gap = (got - want).abs()
    assert gap.max() < 1e-3 and (gap > 1e-5 + 1e-4 * want.abs()).float().mean() < 0.01, (what, gap.max())


def eval_losses(folder: Path) -> list[float]:
    """The eval losses a run logged in its metrics.jsonl, in order."""
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    return [x["eval_loss"] for x in lines if "eval_loss" in x]
