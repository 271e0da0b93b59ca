"""Greedy ``generate`` with virtual tokens, checked step by step against the adapted model's own
full forward pass (no cache) over the sequence so far: prompt tuning, P-tuning (MLP, LSTM) and
prefix tuning (with and without projection) on tiny Llama, GPT-2, OPT and Qwen2 models. The cache
reaches the model as ``cache`` (transformers >= 5.24) or ``past_key_values`` (before); both, and
caches a user builds, must work. PEFT agrees where it can run the same case."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch

import adapterkit as ak
from adapterkit.inject import adapter_layers
from adapterkit.methods.prompt import VirtualTokenLayer
from adapterkit.methods.prompt.hook import cache_argument
from tests.checks import assert_close_scaled
from tests.methods.test_prompt_methods import METHODS, _noise
from tests.models import tiny_gpt2, tiny_llama, tiny_opt, tiny_qwen2, tokens

peft = pytest.importorskip("peft")

MODELS = {"llama": tiny_llama, "gpt2": tiny_gpt2, "opt": tiny_opt, "qwen2": tiny_qwen2}
GRID = [(m, k) for m in METHODS for k in MODELS]
NEW = 5  # new tokens per generate call


def _adapter(model):
    return next(layer.adapters["default"] for _, layer in adapter_layers(model) if isinstance(layer, VirtualTokenLayer))


def _adapted(method, model):
    base = MODELS[model]()
    ours = ak.attach(copy.deepcopy(base), METHODS[method][0]())
    _noise(ours)
    return base, ours.eval()


def _prompt(padded: bool):
    ids = tokens()
    mask = torch.ones_like(ids)
    if padded:
        mask[0, :2] = 0  # left padding, as batched generation has it
    return ids, mask


def _generate(model, ids, mask):
    """(sequences (B, T + NEW), scores (B, NEW, V)) of greedy decoding."""
    out = model.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=NEW,
        do_sample=False,
        pad_token_id=0,
        output_scores=True,
        return_dict_in_generate=True,
    )
    return out.sequences, torch.stack(out.scores, 1)


@torch.no_grad()
def _forward_scores(model, sequences, mask, positions: bool = True):
    """Last-position logits of a full forward (no cache) over each prefix of ``sequences`` that
    ``generate`` scored: (B, NEW, V). Positions count real tokens only, as ``generate`` does."""
    start = mask.shape[1]
    scores = []
    for k in range(NEW):
        m = torch.cat([mask, mask.new_ones(mask.shape[0], k)], 1)
        kw = {}
        if positions:
            kw["position_ids"] = (m.cumsum(-1) - 1).masked_fill(m == 0, 1)
        scores.append(model(input_ids=sequences[:, : start + k], attention_mask=m, **kw).logits[:, -1])
    return torch.stack(scores, 1)


def _assert_close(actual, expected):
    assert_close_scaled(actual, expected, rtol=1e-4, atol_scale=1e-5)


@pytest.mark.parametrize("method,model", GRID)
def test_every_generated_token_is_the_argmax_of_a_full_forward(method, model):
    base, ours = _adapted(method, model)
    ids, mask = _prompt(padded=True)
    sequences, scores = _generate(ours, ids, mask)
    full = _forward_scores(ours, sequences, mask)
    _assert_close(scores, full)  # every step: the cached decode equals the uncached forward
    chosen = sequences[:, ids.shape[1] :]
    finished = torch.zeros(chosen.shape[0], dtype=torch.bool)
    eos = ours.generation_config.eos_token_id
    for k in range(NEW):  # each emitted token is the full forward's argmax (rows after EOS emit padding)
        live = ~finished
        torch.testing.assert_close(
            full[live, k].gather(-1, chosen[live, k : k + 1]).squeeze(-1),
            full[live, k].max(-1).values,
            rtol=1e-5,
            atol=1e-5,
        )
        if eos is not None:
            finished |= torch.isin(chosen[:, k], torch.as_tensor(eos))
    # the virtual tokens act at every step, not only the first: no step scores like the base model
    plain = _forward_scores(base, sequences, mask)
    gaps = (scores - plain).abs().amax(dim=(0, 2))  # (NEW,)
    assert (gaps > 1e-3 * plain.abs().max()).all(), f"steps scored as by the base model: {gaps.tolist()}"


def _peft_twin(method, model, base, ours):
    theirs = peft.get_peft_model(copy.deepcopy(base), METHODS[method][1]("CAUSAL_LM")).eval()
    with torch.no_grad():
        for p_ours, p_theirs in zip(_adapter(ours).parameters(), theirs.prompt_encoder["default"].parameters()):
            p_theirs.copy_(p_ours)
    return theirs


@pytest.mark.parametrize("method,model", GRID)
def test_generate_matches_peft_where_peft_can_run_it(method, model):
    import transformers

    base, ours = _adapted(method, model)
    theirs = _peft_twin(method, model, base, ours)
    ids, mask = _prompt(padded=False)  # PEFT drops position_ids in its forward: no padding here
    expected, expected_scores = _generate(theirs, ids, mask)
    own = _forward_scores(theirs, expected, mask, positions=False)
    gap = (expected_scores - own).abs().max().item()
    if gap > 1e-4 * own.abs().max().item():
        pytest.skip(
            f"PEFT {peft.__version__}'s generate with {method} on {model} disagrees with PEFT's own "
            f"forward under transformers {transformers.__version__} (by {gap:.3g}): no reference here"
        )
    sequences, scores = _generate(ours, ids, mask)
    assert torch.equal(sequences, expected)
    _assert_close(scores, expected_scores)


def _returned_cache(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


@pytest.mark.parametrize("name", ["cache", "past_key_values"])
@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_a_hand_written_decoding_loop_with_either_cache_name(method, name):
    """A user's own loop: prefill into a cache they built, then one token at a time under either name."""
    from transformers import DynamicCache

    _, ours = _adapted(method, "llama")
    ids, mask = _prompt(padded=False)
    with torch.no_grad():
        out = ours(input_ids=ids, attention_mask=mask, use_cache=True, **{name: DynamicCache(config=ours.config)})
        sequence, cache = ids, _returned_cache(out)
        for _ in range(3):
            token = out.logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
            sequence = torch.cat([sequence, token], 1)
            m = torch.ones_like(sequence)
            out = ours(
                input_ids=token,
                attention_mask=m,
                position_ids=m.sum(1, keepdim=True) - 1,
                use_cache=True,
                **{name: cache},
            )
            cache = _returned_cache(out)
            full = ours(input_ids=sequence, attention_mask=m).logits[:, -1]
            _assert_close(out.logits[:, -1], full)


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_a_static_cache_works_when_it_has_room_and_is_refused_clearly_when_not(method):
    from transformers import StaticCache

    _, ours = _adapted(method, "llama")
    ids, mask = _prompt(padded=False)
    room = ids.shape[1] + NEW + _adapter(ours).num_virtual_tokens
    out = ours.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=NEW,
        do_sample=False,
        pad_token_id=0,
        output_scores=True,
        return_dict_in_generate=True,
        **{cache_argument(ours): StaticCache(config=ours.config, max_cache_len=room)},
    )
    _assert_close(torch.stack(out.scores, 1), _forward_scores(ours, out.sequences, mask))
    with pytest.raises(ak.InputError, match="virtual tokens"):
        ours.generate(
            ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=0, cache_implementation="static"
        )


def test_two_different_caches_in_one_call_are_refused():
    from transformers import DynamicCache

    _, ours = _adapted("prefix", "llama")
    ids, mask = _prompt(padded=False)
    with pytest.raises(ak.AdapterKitError, match="two different caches"):
        ours(input_ids=ids, cache=DynamicCache(config=ours.config), past_key_values=DynamicCache(config=ours.config))


def test_generate_command_with_a_prefix_adapter_equals_uncached_greedy_decoding(tmp_path):
    """``adapterkit train`` a prefix adapter, then ``adapterkit generate`` it as a subprocess: its
    answer is the greedy decode computed here by full forward passes of the same adapter."""
    import yaml

    from adapterkit.cli import main
    from adapterkit.training.data import prompt_ids
    from adapterkit.training.sections import DataConfig
    from tests.training.helpers import (
        char_tokenizer,
        memorise_records,
        tiny_folder,
        write_jsonl,
    )

    base_dir = tiny_folder(tmp_path / "model")
    data = write_jsonl(tmp_path / "train.jsonl", memorise_records(4))
    cfg = {
        "model": {"name": base_dir},
        "adapter": {"method": "prefix_tuning", "num_virtual_tokens": 4},
        "data": {"train": data},
        "optim": {"lr": 5e-2, "batch_size": 4, "max_steps": 4, "seed": 0},
        "eval": {"every": 0},
        "output": {"dir": str(tmp_path / "out"), "progress": False},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "c.yaml")]) == 0
    assert json.loads((tmp_path / "out" / "adapter_config.json").read_text())["peft_type"] == "PREFIX_TUNING"
    run = subprocess.run(
        [sys.executable, "-m", "adapterkit", "generate", str(tmp_path / "out"), "--max-new-tokens", "6", "q1?"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert run.returncode == 0, run.stderr
    answer = run.stdout.split("### q1?\n", 1)[1].strip()

    from transformers import AutoModelForCausalLM

    model = ak.load_adapter(AutoModelForCausalLM.from_pretrained(base_dir), str(tmp_path / "out")).eval()
    tok = char_tokenizer()
    sequence = torch.tensor([prompt_ids(tok, "q1?", DataConfig(train="-"))])
    with torch.no_grad():
        for _ in range(6):
            token = model(input_ids=sequence).logits[0, -1].argmax()
            if token.item() == tok.eos_token_id:
                break
            sequence = torch.cat([sequence, token.view(1, 1)], 1)
    start = len(prompt_ids(tok, "q1?", DataConfig(train="-")))
    assert answer == tok.decode(sequence[0, start:], skip_special_tokens=True).strip()
    with torch.no_grad():  # the prefix changes the answer's scores
        adapted = model(input_ids=sequence).logits
        with ak.disabled(model):
            assert not torch.allclose(model(input_ids=sequence).logits, adapted, atol=1e-3)
