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

from typing import Any, Optional

import torch

from ..errors import ConfigError
from .records import Record, read_records  # noqa: F401  (read_records: part of this module's API)
from .sections import DataConfig

IGNORE = -100


def _where(record: dict, path: str, index: int) -> str:
    return getattr(record, "where", "") or f"{path}: record {index + 1}"


def _field(record: dict, name: str, path: str, index: int, key: str) -> Any:
    """A record's field ``name`` (set by ``data.<key>``); an error names the file and line."""
    if not isinstance(record, dict):
        raise ConfigError(f"{_where(record, path, index)}: a record must be an object of fields; got {record!r}.")
    if name not in record or record[name] is None:
        has = ", ".join(repr(k) for k in record if record[k] is not None) or "no fields"
        raise ConfigError(
            f"{_where(record, path, index)}: the record has no field {name!r} (it has: {has}); "
            f"add it, or set data.{key} to the field to use."
        )
    return record[name]


def _text_field(record: dict, name: str, path: str, index: int, key: str) -> str:
    """A field that holds text: a string (a number is read as its text)."""
    value = _field(record, name, path, index, key)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{_where(record, path, index)}: field {name!r} must be a string; got {value!r:.60}.")
    return str(value)


def _messages(record: dict, cfg: DataConfig, path: str, index: int) -> list[dict]:
    """A chat record's messages: a list of {"role": str, "content": str}."""
    messages = _field(record, cfg.messages_field, path, index, "messages_field")
    where = _where(record, path, index)
    if not isinstance(messages, list):
        raise ConfigError(f"{where}: field {cfg.messages_field!r} must be a list of messages; got {messages!r:.60}.")
    for k, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise ConfigError(
                f"{where}: {cfg.messages_field}[{k}] must be an object with 'role' and 'content' "
                f"strings; got {m!r:.60}."
            )
    return messages


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
        source = _text_field(r, cfg.source_field, path, i, "source_field")
        target = _text_field(r, cfg.target_field, path, i, "target_field")
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
            raise ConfigError(
                "the chat template does not render conversations by appending turns; "
                "use data.format 'instruction' with chat_template: false."
            )
        labels += [IGNORE] * (len(before) - len(ids)) + upto[len(before) :]
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
    blocks = [stream[i : i + length] for i in range(0, len(stream), length)]
    return [{"input_ids": b, "labels": list(b)} for b in blocks if len(b) > 1]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) or (isinstance(value, str) and value.strip().lstrip("-").isdigit())


def label_ids(records: list[dict], cfg: DataConfig, path: str) -> list[int]:
    """Integer labels (none below 0); an error names the line of a label that is not one."""
    out = []
    for i, r in enumerate(records):
        raw = _field(r, cfg.label_field, path, i, "label_field")
        if isinstance(raw, bool) or not _is_int(raw) or int(raw) < 0:
            raise ConfigError(
                f"{_where(r, path, i)}: label {raw!r:.60} is not a class number (0, 1, ...) like "
                f"the training labels; use numbers in every file, or names in every file."
            )
        out.append(int(raw))
    return out


def label_names(records: list[dict], cfg: DataConfig, path: str) -> Optional[list[str]]:
    """Class names in sorted order when labels are names; None when they are integers."""
    labels = [_field(r, cfg.label_field, path, i, "label_field") for i, r in enumerate(records)]
    for i, (r, v) in enumerate(zip(records, labels)):
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            raise ConfigError(f"{_where(r, path, i)}: label {v!r:.60} must be a whole number or a class name.")
    if all(_is_int(v) for v in labels):
        return None
    return sorted({str(v) for v in labels})


def tokenize(
    records: list[dict], tokenizer, cfg: DataConfig, path: str, names: Optional[list[str]] = None
) -> list[dict]:
    """Examples: ``{"input_ids": [...], "labels": [...] or int}``."""
    if cfg.format == "classification":
        out = []
        numbers = label_ids(records, cfg, path) if names is None else None
        for i, r in enumerate(records):
            text = _text_field(r, cfg.text_field, path, i, "text_field")
            raw = _field(r, cfg.label_field, path, i, "label_field")
            if numbers is not None:
                label = numbers[i]
            elif str(raw) in names:
                label = names.index(str(raw))
            else:
                raise ConfigError(f"{_where(r, path, i)}: label {raw!r} is not among the training labels {names}.")
            ids = tokenizer(text, truncation=True, max_length=cfg.max_length)["input_ids"]
            out.append({"input_ids": list(ids), "labels": label})
        return out
    if cfg.format == "seq2seq":
        return _seq2seq(records, tokenizer, cfg, path)
    if cfg.format == "text":
        docs = [
            _encode(tokenizer, _text_field(r, cfg.text_field, path, i, "text_field")) + _eos(tokenizer)
            for i, r in enumerate(records)
        ]
        if cfg.packing:
            return _pack(docs, cfg.max_length)
        return [_cut({"input_ids": d, "labels": list(d)}, cfg.max_length) for d in docs if len(d) > 1]
    out = []
    for i, r in enumerate(records):
        if cfg.format == "chat":
            example = _chat_example(tokenizer, _messages(r, cfg, path, i))
        else:
            prompt = _text_field(r, cfg.prompt_field, path, i, "prompt_field")
            response = _text_field(r, cfg.response_field, path, i, "response_field")
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
