"""adapterkit.integrations.trl: DPO and GRPO with the adapters-disabled model as the reference.

Tiny Llama models from configs, a character tokenizer, CPU, offline. Reference log-probs are checked
against a plain forward under ``ak.disabled(model)`` computed here; the vLLM weight sync against a
fresh model's names and ``ak.merge`` of a copy.
"""

import copy
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("trl")

import trl  # noqa: E402
from datasets import Dataset  # noqa: E402

import adapterkit as ak  # noqa: E402
from adapterkit.integrations.trl import DisabledAdapters, DPOTrainer, GRPOTrainer  # noqa: E402
from adapterkit.integrations.vllm_sync import VLLMWeightSync  # noqa: E402
from tests.models import tiny_llama  # noqa: E402
from tests.training.helpers import char_tokenizer  # noqa: E402

COMMON = dict(report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, logging_steps=1, seed=0)


def _policy(tok, targets="all-linear"):
    """A tiny Llama with a LoRA adapter whose B is random, so policy and base differ from step 0."""
    model = tiny_llama(vocab_size=len(tok), pad_token_id=0, eos_token_id=1, bos_token_id=None)
    return ak.attach(model, ak.LoRAConfig(rank=4, alpha=8, targets=targets, init="random"))


def _split(model):
    """(adapter parameters, base parameters) as clones, by structure (trainable = adapter)."""
    adapter = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    return adapter, base


def _token_logps(model, input_ids, attention_mask, temperature=1.0):
    """log p(input_ids[:, t] | input_ids[:, :t]) for t >= 1, from the model's logits: (B, T-1)."""
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return logp.gather(-1, input_ids[:, 1:, None])[..., 0]


def test_dpo_reference_is_the_disabled_adapter_model_and_loss_falls(tmp_path):
    tok = char_tokenizer(template=False)
    model = _policy(tok)
    pairs = Dataset.from_list([{"prompt": f"q{i}?", "chosen": f" yes{i}", "rejected": f" no{i}"} for i in range(8)])
    args = trl.DPOConfig(
        str(tmp_path), per_device_train_batch_size=4, max_steps=10, learning_rate=1e-2, beta=0.1, **COMMON
    )
    trainer = DPOTrainer(model, args=args, train_dataset=pairs, processing_class=tok)
    assert trainer.ref_model is None and not args.precompute_ref_log_probs  # the caller's args untouched
    adapter_before, base_before = _split(model)
    trainer.train()

    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 10 and losses[-1] < losses[0] - 0.02, losses
    adapter_after, base_after = _split(model)
    assert all(torch.equal(base_after[n], p) for n, p in base_before.items())
    assert any(not torch.equal(adapter_after[n], p) for n, p in adapter_before.items())

    # what the trainer used (precomputed into its dataset) == the base model's log-probs, computed here
    model.eval()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(pairs))])
    mask = batch["completion_mask"][:, 1:]
    with ak.disabled(model):
        ref = (_token_logps(model, batch["input_ids"], batch["attention_mask"]) * mask).sum(1)
    used = torch.cat([batch["ref_chosen_logps"], batch["ref_rejected_logps"]])
    torch.testing.assert_close(used, ref, atol=1e-4, rtol=1e-5)
    policy = (_token_logps(model, batch["input_ids"], batch["attention_mask"]) * mask).sum(1)
    assert (policy - ref).abs().min() > 1e-3  # the adapters do change the model: a real check


class _Recording(GRPOTrainer):
    """Keeps the batches the loss saw (public compute_loss), to read the reference log-probs used."""

    def compute_loss(self, model, inputs, *args, **kwargs):
        self.seen = getattr(self, "seen", []) + [
            {k: v.detach().clone() for k, v in inputs.items() if torch.is_tensor(v)}
        ]
        return super().compute_loss(model, inputs, *args, **kwargs)


def test_grpo_trains_the_adapter_against_the_disabled_adapter_reference(tmp_path):
    tok = char_tokenizer(template=False)
    model = _policy(tok)
    prompts = Dataset.from_list([{"prompt": f"q{i}?"} for i in range(8)])

    def reward(completions, **kwargs):  # varies between completions, so advantages are not all zero
        return [sum(map(ord, text)) / (128.0 * max(len(text), 1)) for text in completions]

    args = trl.GRPOConfig(
        str(tmp_path),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=6,
        max_steps=2,
        learning_rate=1e-2,
        beta=0.1,
        temperature=0.7,
        **COMMON,
    )
    trainer = _Recording(model, reward_funcs=reward, args=args, train_dataset=prompts, processing_class=tok)
    assert isinstance(trainer.ref_model, DisabledAdapters) and trainer.ref_model.model is model
    assert trainer.beta == args.beta == 0.1
    adapter_before, base_before = _split(model)
    trainer.train()

    adapter_after, base_after = _split(model)
    assert all(torch.equal(base_after[n], p) for n, p in base_before.items())
    assert any(not torch.equal(adapter_after[n], p) for n, p in adapter_before.items())

    model.eval()
    assert len(trainer.seen) == 2
    for batch in trainer.seen:
        ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
        attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
        keep, mask = batch["completion_ids"].size(1), batch["completion_mask"].bool()
        with ak.disabled(model):
            ref = _token_logps(model, ids, attention, temperature=0.7)[:, -keep:]
        torch.testing.assert_close(batch["ref_per_token_logps"][mask], ref[mask], atol=1e-4, rtol=1e-5)
        policy = _token_logps(model, ids, attention, temperature=0.7)[:, -keep:]
        assert (policy[mask] - ref[mask]).abs().max() > 1e-3


def _fresh_and_adapted():
    fresh = tiny_llama()
    model = ak.attach(tiny_llama(), ak.LoRAConfig(rank=4, alpha=8, targets="all-linear", init="random"))
    return fresh, model


def _assert_sent(sent, fresh, model):
    expected = ak.merge(copy.deepcopy(model)).state_dict()
    assert [name for name, _ in sent] == list(fresh.state_dict())
    for name, tensor in sent:
        torch.testing.assert_close(tensor, expected[name], atol=0, rtol=0, msg=name)


def test_vllm_sync_sends_the_base_models_names_with_adapters_merged_server_mode():
    fresh, model = _fresh_and_adapted()
    assert any(".base." in n for n, _ in model.named_parameters())  # what TRL's own sync would send
    calls = []
    client = SimpleNamespace(
        update_named_params=lambda meta, pairs: calls.append((meta, [(n, t.clone()) for n, t in pairs])),
        reset_prefix_cache=lambda: calls.append("reset"),
    )
    generation = SimpleNamespace(
        mode="server",
        accelerator=SimpleNamespace(is_main_process=True),
        vllm_client=client,
        enable_sleep_mode=False,
        generate=lambda *a: "completions",
    )
    sync = VLLMWeightSync(generation, model)
    assert sync.generate() == "completions" and sync.vllm_client is client  # the rest is TRL's object

    sync.sync_weights()
    meta, sent = calls[0]
    assert calls[1] == "reset"
    assert meta == [(n, str(t.dtype).removeprefix("torch."), list(t.shape)) for n, t in sent]
    _assert_sent(sent, fresh, model)

    with torch.no_grad():  # a training step later, the next sync sends the new merged weights
        next(p for p in model.parameters() if p.requires_grad).add_(0.5)
    sync.sync_weights()
    assert calls[2][0] is meta
    _assert_sent(calls[2][1], fresh, model)


def test_vllm_sync_colocated_loads_the_same_pairs_into_the_engine():
    fresh, model = _fresh_and_adapted()
    loaded = []
    engine_model = SimpleNamespace(load_weights=lambda pairs: loaded.extend((n, t.clone()) for n, t in pairs))
    runner = SimpleNamespace(model_runner=SimpleNamespace(model=engine_model))
    llm = SimpleNamespace(
        llm_engine=SimpleNamespace(model_executor=SimpleNamespace(driver_worker=runner)),
        reset_prefix_cache=lambda: loaded.append(("reset", None)),
    )
    sync = VLLMWeightSync(SimpleNamespace(mode="colocate", llm=llm, enable_sleep_mode=False), model)
    sync.sync_weights()
    assert loaded.pop() == ("reset", None)
    _assert_sent(loaded, fresh, model)


def _trainer_args(tmp_path, kind, **kw):
    config = trl.DPOConfig if kind == "dpo" else trl.GRPOConfig
    return config(str(tmp_path), **COMMON, **kw)


@pytest.mark.parametrize("kind", ["dpo", "grpo"])
def test_misuse_is_refused_with_what_to_do(tmp_path, kind):
    tok = char_tokenizer(template=False)
    cls = DPOTrainer if kind == "dpo" else GRPOTrainer
    args = _trainer_args(tmp_path, kind)
    with pytest.raises(ak.ConfigError, match="no adapterkit adapter"):
        cls(tiny_llama(vocab_size=len(tok)), args=args)
    with pytest.raises(ak.ConfigError, match="model instance"):
        cls("some/model-id", args=args)
    with pytest.raises(ak.ConfigError, match="omit peft_config"):
        cls(_policy(tok), args=args, peft_config=object())
    with pytest.raises(ak.TargetError, match="output head"):
        cls(_policy(tok, targets=["q_proj", "lm_head"]), args=args)
    with pytest.raises(ak.ConfigError, match="sync_ref_model=False"):
        cls(_policy(tok), args=_trainer_args(tmp_path, kind, sync_ref_model=True, beta=0.1))
    if kind == "dpo":
        with pytest.raises(ak.ConfigError, match="Omit ref_model"):
            DPOTrainer(_policy(tok), ref_model=tiny_llama(vocab_size=len(tok)), args=args)
        stream = Dataset.from_list([{"prompt": "q", "chosen": "a", "rejected": "b"}]).to_iterable_dataset()
        with pytest.raises(ak.ConfigError, match="map-style"):
            DPOTrainer(_policy(tok), args=args, train_dataset=stream)
    with pytest.raises(ak.ConfigError, match="sleep_mode"):
        VLLMWeightSync(SimpleNamespace(enable_sleep_mode=True), _policy(tok))
