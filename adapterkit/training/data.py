"""Training data: read local files, tokenize for the task, pad into batches.

Formats (``data.format``):
- ``instruction``: records with a prompt and a response. With the tokenizer's chat template the
  prompt is a user turn (after an optional system prompt) and the response the assistant turn;
  loss on the response tokens only (labels of the prompt are -100).
- ``chat``: records with a list of ``{"role", "content"}`` messages; loss on assistant turns only.
- ``text``: plain text, loss on every token; ``packing`` concatenates the documents (each ending
  with EOS) and cuts fixed blocks of ``max_length`` tokens.
- ``classification``: a text and a label (an int, or a name: names are numbered in sorted order).
- ``seq2seq``: a source and a target, for encoder-decoder models: input_ids = source + EOS (the
  encoder's input), labels = target + EOS (the decoder's targets; the model shifts them right
  to build its decoder inputs). Loss on every target token.

Files: ``.jsonl`` / ``.json`` (one object per line, or a list), ``.csv`` (a header row), or
``.txt`` (documents separated by blank lines; text format only).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import ConfigError
from .sections import DataConfig

IGNORE = -100


def read_records(path: str, fmt: str) -> list[dict[str, Any]]:
    """The records of one file, as dicts."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"data file {path!r} does not exist; give a .jsonl, .csv or .txt file.")
    suffix = p.suffix.lower()
    text = p.read_text(encoding="utf-8")
    if suffix == ".jsonl" or (suffix == ".json" and not text.lstrip().startswith("[")):
        records = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ConfigError(f"{path}:{i} is not valid JSON: {err.msg}.") from None
        return records
    if suffix == ".json":
        return list(json.loads(text))
    if suffix == ".csv":
        return list(csv.DictReader(text.splitlines()))
    if suffix == ".txt":
        if fmt != "text":
            raise ConfigError(f"{path}: a .txt file holds plain text; use data.format 'text' (got {fmt!r}).")
        return [{"text": doc.strip()} for doc in text.split("\n\n") if doc.strip()]
    raise ConfigError(f"data file {path!r} has an unknown extension; use .jsonl, .json, .csv or .txt.")


def _field(record: dict, name: str, path: str, index: int, key: str) -> Any:
    if name not in record:
        raise ConfigError(
            f"{path}: record {index} has no field {name!r} (it has: {', '.join(map(repr, record))}); "
            f"set data.{key} to the field to use."
        )
    return record[name]


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _templated(tokenizer, messages: list[dict], generation_prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return _encode(tokenizer, text)


def _eos(tokenizer) -> list[int]:
    return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []


def prompt_messages(prompt: str, cfg: DataConfig) -> list[dict]:
    system = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    return system + [{"role": "user", "content": prompt}]


def prompt_ids(tokenizer, prompt: str, cfg: DataConfig) -> list[int]:
    """The tokens a generation starts from: the templated user turn, or the prompt and a newline."""
    if cfg.chat_template and getattr(tokenizer, "chat_template", None):
        return _templated(tokenizer, prompt_messages(prompt, cfg), True)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + _encode(tokenizer, prompt + "\n")


def source_ids(tokenizer, text: str, cfg: DataConfig) -> list[int]:
    """The encoder's input of a seq2seq example: the source and EOS, cut to ``max_length``."""
    return (_encode(tokenizer, text) + _eos(tokenizer))[: cfg.max_length]


def _seq2seq(records: list[dict], tokenizer, cfg: DataConfig, path: str) -> list[dict]:
    out = []
    for i, r in enumerate(records):
        source = str(_field(r, cfg.source_field, path, i, "source_field"))
        target = str(_field(r, cfg.target_field, path, i, "target_field"))
        labels = (_encode(tokenizer, target) + _eos(tokenizer))[: cfg.max_length]
        out.append({"input_ids": source_ids(tokenizer, source, cfg), "labels": labels})
    return out


def _chat_example(tokenizer, messages: list[dict]) -> dict:
    """Tokens of a conversation; labels only on the assistant turns."""
    ids: list[int] = []
    labels: list[int] = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        before = _templated(tokenizer, messages[:i], True)
        upto = _templated(tokenizer, messages[: i + 1], False)
        if upto[: len(ids)] != ids or before[: len(ids)] != ids:
            raise ConfigError("the chat template does not render conversations by appending turns; "
                              "use data.format 'instruction' with chat_template: false.")
        labels += [IGNORE] * (len(before) - len(ids)) + upto[len(before):]
        ids = upto
    return {"input_ids": ids, "labels": labels}


def _instruction_example(tokenizer, prompt: str, response: str, cfg: DataConfig) -> dict:
    if cfg.chat_template and getattr(tokenizer, "chat_template", None):
        messages = prompt_messages(prompt, cfg) + [{"role": "assistant", "content": response}]
        return _chat_example(tokenizer, messages)
    head = prompt_ids(tokenizer, prompt, cfg)
    tail = _encode(tokenizer, response) + _eos(tokenizer)
    return {"input_ids": head + tail, "labels": [IGNORE] * len(head) + tail}


def _cut(example: dict, max_length: int) -> dict:
    return {k: v[:max_length] if isinstance(v, list) else v for k, v in example.items()}


def _pack(docs: list[list[int]], length: int) -> list[dict]:
    """Concatenate the documents and cut blocks of ``length`` tokens (the last may be shorter)."""
    stream = [t for doc in docs for t in doc]
    blocks = [stream[i: i + length] for i in range(0, len(stream), length)]
    return [{"input_ids": b, "labels": list(b)} for b in blocks if len(b) > 1]


def label_names(records: list[dict], cfg: DataConfig, path: str) -> Optional[list[str]]:
    """Class names in sorted order when labels are names; None when they are integers."""
    labels = [_field(r, cfg.label_field, path, i, "label_field") for i, r in enumerate(records)]
    if all(isinstance(v, int) or (isinstance(v, str) and v.strip().lstrip("-").isdigit()) for v in labels):
        return None
    return sorted({str(v) for v in labels})


def tokenize(records: list[dict], tokenizer, cfg: DataConfig, path: str,
             names: Optional[list[str]] = None) -> list[dict]:
    """Examples: ``{"input_ids": [...], "labels": [...] or int}``."""
    if cfg.format == "classification":
        out = []
        for i, r in enumerate(records):
            text = str(_field(r, cfg.text_field, path, i, "text_field"))
            raw = _field(r, cfg.label_field, path, i, "label_field")
            if names is None:
                label = int(raw)
            elif str(raw) in names:
                label = names.index(str(raw))
            else:
                raise ConfigError(f"{path}: record {i} has label {raw!r}, not among the training labels {names}.")
            ids = tokenizer(text, truncation=True, max_length=cfg.max_length)["input_ids"]
            out.append({"input_ids": list(ids), "labels": label})
        return out
    if cfg.format == "seq2seq":
        return _seq2seq(records, tokenizer, cfg, path)
    if cfg.format == "text":
        docs = [_encode(tokenizer, str(_field(r, cfg.text_field, path, i, "text_field"))) + _eos(tokenizer)
                for i, r in enumerate(records)]
        if cfg.packing:
            return _pack(docs, cfg.max_length)
        return [_cut({"input_ids": d, "labels": list(d)}, cfg.max_length) for d in docs if len(d) > 1]
    out = []
    for i, r in enumerate(records):
        if cfg.format == "chat":
            example = _chat_example(tokenizer, list(_field(r, cfg.messages_field, path, i, "messages_field")))
        else:
            prompt = str(_field(r, cfg.prompt_field, path, i, "prompt_field"))
            response = str(_field(r, cfg.response_field, path, i, "response_field"))
            example = _instruction_example(tokenizer, prompt, response, cfg)
        out.append(_cut(example, cfg.max_length))
    return out


def collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids, attention_mask (B, T); labels (B, T) or (B,), or (B, L)
    for seq2seq targets (padded with -100 to the longest target)."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[row, :n] = torch.tensor(e["input_ids"])
        mask[row, :n] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if isinstance(examples[0]["labels"], int):
        batch["labels"] = torch.tensor([e["labels"] for e in examples])
    else:
        label_width = max(len(e["labels"]) for e in examples)  # = width, except for seq2seq
        labels = torch.full((len(examples), label_width), IGNORE, dtype=torch.long)
        for row, e in enumerate(examples):
            labels[row, : len(e["labels"])] = torch.tensor(e["labels"], dtype=torch.long)
        batch["labels"] = labels
    return batch
