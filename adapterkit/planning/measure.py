"""Measure the peak memory of one real training step, to check ``plan``'s prediction.

Each case runs in a fresh Python process (``measure(...)`` starts it), so nothing from an earlier
case stays in the heap. The child builds the model from its config with random weights (no
download), quantizes it and attaches the adapter as ``adapterkit train`` does, builds the optimizer
with ``training.optim.build_optimizer``, and runs two steps of the training loop's own loss
(``training.evaluate.batch_loss``), backward, gradient clipping and optimizer step.

Bytes counted (CPU): glibc's ``mallinfo2`` bytes in use (small blocks in arenas + mmapped blocks),
with ``MALLOC_MMAP_THRESHOLD_=65536`` so every large tensor is its own mmapped block, counted when
allocated and given back when freed (as ``benchmarks/bench_lora.py`` measures). The peak of the
second step is sampled after every torch function call (``torch.overrides.TorchFunctionMode``) and
before and after every autograd node of the backward pass, so an op's output and inputs are seen
alive together; a buffer that lives only inside one C++ op is not seen.
On CUDA: ``torch.cuda.max_memory_allocated`` (tensor bytes) and ``max_memory_reserved``.

Returned (bytes, relative to the heap before the model was built):
    weights     after building, quantizing and attaching: weights + adapter + Python objects
    states      after step 1 minus ``weights``: optimizer states and lazily built buffers
    held        in use after the forward and the loss minus before them: what backward keeps
    peak        the highest sample during step 2
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import subprocess
import sys
from typing import Any, Optional

import torch


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (f, ctypes.c_size_t)
        for f in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


_LIBC: Any = None


def heap_in_use() -> int:
    """Bytes in use in the C heap (glibc mallinfo2: arena blocks + mmapped blocks)."""
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL("libc.so.6")
        _LIBC.mallinfo2.restype = _Mallinfo2
    info = _LIBC.mallinfo2()
    return info.uordblks + info.hblkhd


class _Peak(torch.overrides.TorchFunctionMode):
    """Samples the bytes in use after every torch function call (forward ops, Python backward)."""

    def __init__(self, read):
        super().__init__()
        self.read, self.peak = read, 0

    def sample(self, *_ignored) -> None:
        self.peak = max(self.peak, self.read())

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.sample()
        return out


def _hook_graph(root, meter: _Peak) -> None:
    """Sample before and after every node of the backward graph below ``root``."""
    seen, stack = set(), [root]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        node.register_prehook(lambda grads, m=meter: m.sample())
        node.register_hook(lambda grads_in, grads_out, m=meter: m.sample())
        stack.extend(fn for fn, _ in node.next_functions)


def _build(case: dict):
    """The model of a case: random weights from its config, quantized and adapted as asked."""
    import transformers

    import adapterkit as ak
    from .. import checkpointing
    from ..training.config import build_adapter

    config = transformers.AutoConfig.for_model(**case["config"])
    torch.manual_seed(case.get("seed", 0))
    auto = (
        transformers.AutoModelForSequenceClassification
        if case["task"] == "classification"
        else transformers.AutoModelForCausalLM
    )
    model = auto.from_config(config, dtype=getattr(torch, case["dtype"]))
    if case.get("quantization"):
        q = case["quantization"]
        ak.quantize(
            model,
            bits=q["bits"],
            quant_type=q.get("quant_type", "nf4"),
            double_quant=q.get("double_quant", True),
            block=q.get("block", 64),
        )
    adapter = build_adapter(case["adapter"])
    ak.attach(model, adapter)
    if case.get("gradient_checkpointing"):
        checkpointing.enable(model)
    return model.train()


def _batch(case: dict, vocab: int) -> dict:
    """Random token ids (B, T); all tokens are targets. ``padded``: row 0 ends one token short."""
    gen = torch.Generator().manual_seed(1)
    b, t = case["batch_size"], case["seq_len"]
    ids = torch.randint(0, vocab, (b, t), generator=gen)
    mask = torch.ones_like(ids)
    if case.get("padded"):
        mask[0, -1] = 0
    if case["task"] == "classification":
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 2, (b,), generator=gen)}
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def _step(model, optimizer, batch: dict, task: str, meter: Optional[_Peak], read) -> int:
    """One training step as the loop runs it; returns the bytes held after forward + loss."""
    from ..training.evaluate import batch_loss

    before = read()
    loss, _ = batch_loss(model, batch, task)
    held = read() - before
    if meter is not None:
        meter.sample()
        _hook_graph(loss.grad_fn, meter)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return held


def run_case(case: dict) -> dict:
    """Measure one case in this process (call it through ``measure`` for a fresh process)."""
    from ..training.optim import build_optimizer
    from ..training.sections import OptimConfig

    torch.set_num_threads(case.get("threads", 1))
    cuda = case.get("device", "cpu") == "cuda"
    if cuda:
        read = torch.cuda.memory_allocated
        torch.set_default_device("cuda")
    else:
        read = heap_in_use
    gc.collect()
    base = read()
    model = _build(case)
    gc.collect()
    weights = read() - base
    optimizer = build_optimizer(model, OptimConfig(optimizer=case.get("optimizer", "adamw"), lr=1e-4))
    batch = _batch(case, model.config.vocab_size)
    _step(model, optimizer, batch, case["task"], None, read)
    gc.collect()
    states = read() - base - weights
    meter = _Peak(read)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with meter:
        held = _step(model, optimizer, batch, case["task"], meter, read)
    peak = meter.peak - base
    out = {"weights": weights, "states": states, "held": held, "peak": peak}
    if cuda:
        out.update(peak=torch.cuda.max_memory_allocated() - base, reserved=torch.cuda.max_memory_reserved())
    return out


def _warm_case(case: dict) -> dict:
    """The case with one block: run once before the baseline, so one-time set-up (lazy imports,
    thread pools, the CPU matmul library's workspace for these shapes) is not counted."""
    return dict(case, config=dict(case["config"], num_hidden_layers=1))


def _child(case: dict) -> dict:
    try:
        run_case(_warm_case(case))
        gc.collect()
        return run_case(case)
    except Exception as err:  # reported to the parent, which raises it there
        import traceback

        return {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}


def _serve() -> None:
    """Read one case per line on stdin; measure each in a forked child (a fresh heap copied from
    this process, which has imported everything but never run a step); one JSON line out each."""
    import transformers  # noqa: F401  (imported once here, not once per case)

    from ..training import evaluate, optim  # noqa: F401

    for line in sys.stdin:
        read_fd, write_fd = os.pipe()
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            out = json.dumps(_child(json.loads(line)))
            with os.fdopen(write_fd, "w") as f:
                f.write(out)
            os._exit(0)
        os.close(write_fd)
        with os.fdopen(read_fd) as f:
            result = f.read()
        os.waitpid(pid, 0)
        print(result or json.dumps({"error": "the measuring process died"}), flush=True)


ENV = {
    "MALLOC_MMAP_THRESHOLD_": "65536",
    "OMP_WAIT_POLICY": "PASSIVE",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
}


def measure_many(cases: list, timeout: float = 900.0) -> list:
    """Each case measured in its own fresh process (forked from one server that imports once)."""
    env = dict(os.environ, **ENV)
    cmd = [sys.executable, "-m", "adapterkit.planning.measure", "--serve"]
    text = "".join(json.dumps(case) + "\n" for case in cases)
    res = subprocess.run(cmd, input=text, env=env, capture_output=True, text=True, timeout=timeout)
    lines = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    if res.returncode != 0 or len(lines) != len(cases):
        raise RuntimeError(f"the measuring process failed:\n{res.stderr[-3000:]}")
    for case, out in zip(cases, lines):
        if "error" in out:
            raise RuntimeError(f"measuring {case} failed: {out['error']}\n{out.get('traceback', '')}")
    return lines


def measure(case: dict, timeout: float = 900.0) -> dict:
    """One case in a fresh process: see ``measure_many``."""
    return measure_many([case], timeout)[0]


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        _serve()
    else:
        print(json.dumps(_child(json.loads(sys.argv[1]))))
