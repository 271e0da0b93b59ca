"""DPO with adapterkit's trainer holds one copy of the base weights: peak memory vs TRL's own DPOTrainer.

Each run is a fresh process (dpo_memory_run.py) on the same saved model: 1 decoder layer, hidden 256,
a 131,072-token vocabulary, untied head, so the weights (68M parameters, 270 MB in fp32) dominate.
The folder stores bf16 weights that both runs load as fp32, so every model owns its weights in
anonymous memory: loaded in the stored dtype, transformers maps the safetensors file and two models
mapping one file share its page cache, which hides a second copy on CPU (on a GPU each copy is
device memory). The figure is the peak resident set size (VmHWM, see dpo_memory_run.py for why not
ru_maxrss) of each process, run with MALLOC_MMAP_THRESHOLD_=65536 so that glibc returns large freed
blocks to the system at once: with its default (a threshold that grows after each large free),
whether the loader's temporary bf16 buffers are kept varies between runs (the saving measured
0.95-1.04x the weights on a smaller model; 1.00-1.01x with the setting).
"""

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("trl")

HERE = os.path.dirname(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))


def _model_folder(path) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=131072,
        max_position_embeddings=64,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(path)
    return str(path)


def _run(folder: str, which: str) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", MALLOC_MMAP_THRESHOLD_="65536")
    done = subprocess.run(
        [sys.executable, os.path.join(HERE, "dpo_memory_run.py"), folder, which],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_dpo_peak_memory_is_one_model_copy_below_trls_separate_reference(tmp_path):
    folder = _model_folder(tmp_path / "model")
    ours = _run(folder, "adapterkit")
    theirs = _run(folder, "trl")
    assert theirs["separate_ref_model"] and not ours["separate_ref_model"]
    saved = theirs["peak_rss"] - ours["peak_rss"]
    print(
        f"peak RSS: adapterkit {ours['peak_rss']:,} B, trl {theirs['peak_rss']:,} B; saved {saved:,} B = "
        f"{saved / ours['weight_bytes']:.2f} x the weights ({ours['weight_bytes']:,} B). Heap held after "
        f"training: {ours['malloc_in_use']} vs {theirs['malloc_in_use']} B."
    )
    assert saved >= 0.9 * ours["weight_bytes"], (ours, theirs)
