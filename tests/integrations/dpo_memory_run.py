"""One DPO run in its own process; prints its peak memory as JSON (run by test_trl_memory.py).

    python tests/integrations/dpo_memory_run.py FOLDER adapterkit|trl

FOLDER holds a saved causal LM. Both runs load it the same way and attach the same LoRA adapter;
``trl`` trains with ``trl.DPOTrainer`` (which loads a second, full reference model from FOLDER),
``adapterkit`` with ``adapterkit.integrations.trl.DPOTrainer`` (reference = adapters disabled).
Peak memory is the process's peak resident set size, ``VmHWM`` in ``/proc/self/status`` (Linux). Not
``getrusage(RUSAGE_SELF).ru_maxrss``: across ``exec`` Linux keeps the larger of the child's peak and
the peak of the process it was forked from, so under a big pytest process every child reports at
least the parent's size.
``malloc_in_use`` (glibc ``mallinfo2``: uordblks + hblkhd) is the heap held after training, for information.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))


def _malloc_in_use():
    class Info(ctypes.Structure):
        _fields_ = [
            (f, ctypes.c_size_t)
            for f in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
        ]

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = Info
    except (OSError, AttributeError):
        return None
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd


def _peak_rss() -> int:
    with open("/proc/self/status") as status:
        line = next(row for row in status if row.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024  # kB


def main(folder: str, which: str) -> None:
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    import adapterkit as ak
    from adapterkit.integrations.trl import DPOTrainer
    from tests.training.helpers import char_tokenizer

    torch.manual_seed(0)
    tok = char_tokenizer(template=False)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    ak.attach(model, ak.LoRAConfig(rank=4, alpha=8, targets="all-linear"))
    pairs = Dataset.from_list([{"prompt": f"q{i}?", "chosen": f" yes{i}", "rejected": f" no{i}"} for i in range(4)])
    args = trl.DPOConfig(
        os.path.join(folder, f"out-{which}"),
        per_device_train_batch_size=2,
        max_steps=2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        logging_steps=1,
    )
    trainer_cls = DPOTrainer if which == "adapterkit" else trl.DPOTrainer
    trainer = trainer_cls(model, args=args, train_dataset=pairs, processing_class=tok)
    trainer.train()
    peak = _peak_rss()
    print(
        json.dumps(
            {
                "which": which,
                "peak_rss": peak,
                "weight_bytes": weight_bytes,
                "malloc_in_use": _malloc_in_use(),
                "separate_ref_model": trainer.ref_model is not None,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
