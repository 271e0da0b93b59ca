"""Metrics against their references: scikit-learn, sacrebleu, torch and transformers."""

import math
import random

import pytest
import torch

from adapterkit.training import metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_accuracy_and_macro_f1_match_sklearn(seed):
    from sklearn.metrics import accuracy_score, f1_score

    rng = random.Random(seed)
    refs = [rng.randrange(4) for _ in range(50)]
    preds = [r if rng.random() < 0.6 else rng.randrange(5) for r in refs]  # class 4 only predicted
    assert metrics.accuracy(preds, refs) == pytest.approx(accuracy_score(refs, preds))
    assert metrics.macro_f1(preds, refs) == pytest.approx(f1_score(refs, preds, average="macro"))


def test_macro_f1_edge_cases_match_sklearn():
    from sklearn.metrics import f1_score

    for preds, refs in [([0, 0, 0], [1, 1, 1]), ([2, 2], [2, 2]), (["a", "b", "a"], ["a", "a", "c"])]:
        assert metrics.macro_f1(preds, refs) == pytest.approx(f1_score(refs, preds, average="macro", zero_division=0))
    with pytest.raises(ValueError):
        metrics.accuracy([1], [1, 2])


def test_bleu_and_chrf_match_sacrebleu_scorers():
    import sacrebleu

    hyps = ["the cat sat on the mat", "a quick brown fox", "hello there world"]
    refs = ["the cat is on the mat", "the quick brown fox", "hello world"]
    assert metrics.bleu(hyps, refs) == pytest.approx(sacrebleu.BLEU().corpus_score(hyps, [refs]).score)
    assert metrics.chrf(hyps, refs) == pytest.approx(sacrebleu.CHRF().corpus_score(hyps, [refs]).score)
    assert metrics.bleu(refs, refs) == pytest.approx(100.0)


def test_loss_and_perplexity_match_transformers():
    """causal_nll / tokens is the loss transformers computes; perplexity its exp."""
    from adapterkit.training.data import IGNORE
    from adapterkit.training.evaluate import causal_nll
    from tests.models import tiny_llama

    model = tiny_llama()
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :4] = IGNORE  # no row has a target there: those logits are skipped
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    with torch.no_grad():
        nll, n = causal_nll(model, batch)
        reference = model(input_ids=ids, labels=labels).loss
    assert int(n) == int((labels[:, 1:] != IGNORE).sum())
    mean = metrics.loss(float(nll), int(n))
    assert mean == pytest.approx(float(reference), rel=1e-5)
    assert metrics.perplexity(mean) == pytest.approx(math.exp(float(reference)), rel=1e-5)
