"""Training throughput and peak memory: `adapterkit train` vs PEFT + transformers.Trainer.

The same workload in both: the demo's model (SmolLM2-135M-Instruct, fp32), LoRA rank 8 / alpha 16
on all linear layers, dropout 0, the bundled instruction data with the same tokenization (loss on
responses only), batch 8, AdamW lr 1e-3, cosine with 4 warmup steps, clipping at 1.0, no eval,
no checkpoints. Each run is a fresh process; runs alternate (a, p, a, p, ...) and the table shows
the median. Throughput counts the non-padding tokens of steps 2..N (the first step warms up)
over the wall time and over the CPU time (``time.process_time``) those steps took: on a machine
shared with other jobs the wall time swings by 2x between runs, the CPU time much less. Peak
memory is the process's maximum resident set (ru_maxrss), model load included.

    python benchmarks/bench_train.py --steps 20 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

CONFIG = "examples/configs/smollm2_format.yaml"


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_adapterkit(steps: int, out: str) -> dict:
    import adapterkit as ak
    from adapterkit.training import TrainConfig

    cfg = TrainConfig.from_yaml(
        CONFIG,
        (
            f"optim.max_steps={steps}",
            "data.eval=null",
            "eval.every=0",
            "output.save_every=0",
            f"output.dir={out}",
            "output.progress=false",
        ),
    )
    marks = []
    ak.train(
        cfg,
        callbacks=[
            lambda step, logs: (
                marks.append((time.perf_counter(), time.process_time(), logs["tokens"])) if step in (1, steps) else None
            )
        ],
    )
    (w0, c0, t0), (w1, c1, t1) = marks
    return {"tokens": t1 - t0, "seconds": w1 - w0, "cpu_seconds": c1 - c0, "peak_mib": _peak_mib()}


def _peft_examples():
    from adapterkit.models import load_model
    from adapterkit.training import TrainConfig
    from adapterkit.training.data import read_records, tokenize

    cfg = TrainConfig.from_yaml(CONFIG)
    model, tokenizer = load_model(cfg.model.name)
    records = read_records(cfg.data.train, cfg.data.format)
    return cfg, model, tokenizer, tokenize(records, tokenizer, cfg.data, cfg.data.train)


def run_peft(steps: int, out: str) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from adapterkit.training.data import collate

    cfg, model, tokenizer, examples = _peft_examples()
    o = cfg.optim
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear"))
    seen: list[int] = []  # tokens of each batch, in the order they are fetched

    def collator(batch):
        out = collate(batch, tokenizer.pad_token_id)
        seen.append(int(out["attention_mask"].sum()))
        return out

    marks = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (1, steps):
                marks.append((time.perf_counter(), time.process_time()))

    args = TrainingArguments(
        output_dir=out,
        per_device_train_batch_size=o.batch_size,
        max_steps=steps,
        learning_rate=o.lr,
        lr_scheduler_type="cosine",
        warmup_steps=o.warmup_steps,
        max_grad_norm=o.max_grad_norm,
        weight_decay=0.0,
        save_strategy="no",
        report_to=[],
        logging_steps=10,
        use_cpu=True,
        seed=o.seed,
        dataloader_drop_last=True,
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=collator, callbacks=[Clock()])
    trainer.train()
    (w0, c0), (w1, c1) = marks
    return {
        "tokens": sum(seen[1:steps]),
        "seconds": w1 - w0,
        "cpu_seconds": c1 - c0,
        "peak_mib": _peak_mib(),
        "threads": torch.get_num_threads(),
    }


def child(kind: str, steps: int) -> None:
    with tempfile.TemporaryDirectory() as out:
        result = (run_adapterkit if kind == "adapterkit" else run_peft)(steps, out)
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", choices=["adapterkit", "peft"])
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.steps)
    runs: dict[str, list[dict]] = {"adapterkit": [], "peft": []}
    for _ in range(args.repeats):
        for kind in runs:
            done = subprocess.run(
                [sys.executable, __file__, "--child", kind, "--steps", str(args.steps)],
                capture_output=True,
                text=True,
                env=dict(os.environ, HF_HUB_OFFLINE="1"),
            )
            line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
            if done.returncode or not line:
                sys.exit(f"{kind} run failed:\n{done.stderr[-3000:]}")
            runs[kind].append(json.loads(line[0][7:]))
            print(kind, runs[kind][-1], flush=True)
    print(
        f"\n| loop (median of {args.repeats}) | tokens per wall s | tokens per CPU s | CPU s/step | "
        f"peak RSS MiB |\n|---|---:|---:|---:|---:|"
    )
    for kind, rs in runs.items():
        wall = statistics.median(r["tokens"] / r["seconds"] for r in rs)
        cpu = statistics.median(r["tokens"] / r["cpu_seconds"] for r in rs)
        step = statistics.median(r["cpu_seconds"] / (args.steps - 1) for r in rs)
        peak = statistics.median(r["peak_mib"] for r in rs)
        print(f"| {kind} | {wall:.0f} | {cpu:.0f} | {step:.2f} | {peak:.0f} |")


if __name__ == "__main__":
    main()
