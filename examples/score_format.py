"""Score the held-out questions before and after fine-tuning: valid JSON answers, right answers.

    python examples/score_format.py runs/smollm2-format [--limit 20]

For each prompt of examples/data/format_eval.jsonl it generates greedily with the base model
(adapter disabled) and with the adapter, and counts answers that parse as
``{"answer": ..., "topic": ...}`` and whose answer equals the reference. Prints a few examples.
"""

import argparse
import json
from pathlib import Path

import adapterkit as ak
from adapterkit.models import load_model
from adapterkit.training import TrainConfig
from adapterkit.training.data import prompt_ids, read_records
from adapterkit.training.evaluate import generate_texts


def parse(text: str):
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) and set(value) == {"answer", "topic"} else None


def score(texts: list[str], refs: list[dict]) -> tuple[float, float]:
    parsed = [parse(t) for t in texts]
    valid = sum(p is not None for p in parsed) / len(refs)
    right = sum(p is not None and str(p["answer"]).lower() == r["answer"].lower() for p, r in zip(parsed, refs))
    return valid, right / len(refs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("adapter", help="the folder adapterkit train wrote")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N questions")
    parser.add_argument("--show", type=int, default=4, help="examples to print")
    args = parser.parse_args()
    cfg = TrainConfig.from_yaml(Path(args.adapter) / "train_config.yaml")
    model, tokenizer = load_model(cfg.model.name)
    ak.load_adapter(model, args.adapter)
    model.eval()
    records = read_records(cfg.data.eval, cfg.data.format)[: args.limit]
    prompts = [prompt_ids(tokenizer, r["prompt"], cfg.data) for r in records]
    refs = [json.loads(r["response"]) for r in records]
    with ak.disabled(model):
        before = generate_texts(model, tokenizer, prompts, 32, "cpu")
    after = generate_texts(model, tokenizer, prompts, 32, "cpu")
    for r, b, a in list(zip(records, before, after))[: args.show]:
        print(f"### {r['prompt']}\nbase:    {b}\nadapter: {a}\n")
    print(f"| held-out questions ({len(records)}) | valid JSON form | right answer |\n|---|---:|---:|")
    for label, texts in (("base model", before), ("with the adapter", after)):
        valid, right = score(texts, refs)
        print(f"| {label} | {valid:.0%} | {right:.0%} |")


if __name__ == "__main__":
    main()
