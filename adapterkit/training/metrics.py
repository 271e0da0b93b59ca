"""Metrics, each a plain function of predictions and references.

loss: mean negative log-likelihood per target token, sum(nll) / n.
perplexity: exp(loss).
accuracy: fraction of predictions equal to their reference.
macro F1: the unweighted mean over classes of F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c); a class
    with no predictions and no references is left out (the classes are those seen in either list,
    as scikit-learn's ``f1_score(average="macro")`` does).
BLEU (Papineni et al. 2002) and chrF (Popovic 2015): corpus scores from sacrebleu, 0-100.
"""

from __future__ import annotations

import math
from typing import Sequence


def loss(nll_sum: float, n_tokens: int) -> float:
    return nll_sum / max(1, n_tokens)


def perplexity(mean_loss: float) -> float:
    return math.exp(min(mean_loss, 700.0))  # exp overflows a float past ~709


def accuracy(predictions: Sequence, references: Sequence) -> float:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references.")
    return sum(p == r for p, r in zip(predictions, references)) / max(1, len(references))


def macro_f1(predictions: Sequence, references: Sequence) -> float:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references.")
    classes = sorted(set(predictions) | set(references))
    scores = []
    for c in classes:
        tp = sum(p == c and r == c for p, r in zip(predictions, references))
        fp = sum(p == c and r != c for p, r in zip(predictions, references))
        fn = sum(p != c and r == c for p, r in zip(predictions, references))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(scores) / len(scores) if scores else 0.0


def _sacrebleu():
    try:
        import sacrebleu
    except ImportError:
        from ..errors import ConfigError

        raise ConfigError("BLEU and chrF (eval.generate: true) need sacrebleu: pip install sacrebleu.") from None
    return sacrebleu


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    return float(_sacrebleu().corpus_bleu(list(hypotheses), [list(references)]).score)


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    return float(_sacrebleu().corpus_chrf(list(hypotheses), [list(references)]).score)


HIGHER_IS_BETTER = {"loss": False, "perplexity": False, "accuracy": True, "macro_f1": True, "bleu": True, "chrf": True}
