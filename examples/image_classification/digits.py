"""Data, model and training loop for the digits transfer example.

Data: scikit-learn's bundled 8x8 handwritten digits (``load_digits``: 1,797 grey images, 10
classes; no download). Classes 0-4 pretrain a small model; classes 5-9 are the new task, split once
(fixed seed) into a labelled pool, from which k images per class are drawn, and a test set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

OLD_CLASSES = (0, 1, 2, 3, 4)
NEW_CLASSES = (5, 6, 7, 8, 9)
SPLIT_SEED = 1234


@dataclass
class Split:
    """Images (N, 1, 8, 8) scaled to [0, 1] and labels (N,) renumbered 0..4."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


def _split(images: np.ndarray, labels: np.ndarray, classes, test_fraction: float):
    """Per class, a fixed random ``test_fraction`` of the images is held out."""
    rng = np.random.default_rng(SPLIT_SEED)
    train, test = [], []
    for new_label, c in enumerate(classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(len(idx) * test_fraction))
        test += [(i, new_label) for i in idx[:n_test]]
        train += [(i, new_label) for i in idx[n_test:]]

    def make(pairs):
        idx = np.array([i for i, _ in pairs])
        x = torch.tensor(images[idx] / 16.0, dtype=torch.float32).unsqueeze(1)
        return Split(x, torch.tensor([lab for _, lab in pairs]))

    return make(train), make(test)


def load():
    """(old_train, old_test, new_pool, new_test): 80/20 on classes 0-4, 50/50 on classes 5-9."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    old_train, old_test = _split(digits.images, digits.target, OLD_CLASSES, 0.2)
    new_pool, new_test = _split(digits.images, digits.target, NEW_CLASSES, 0.5)
    return old_train, old_test, new_pool, new_test


def few_shot(pool: Split, k: int, seed: int) -> Split:
    """k labelled images per class, drawn from ``pool`` with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    picked = []
    for label in pool.y.unique().tolist():
        idx = torch.nonzero(pool.y == label).flatten()
        picked.append(idx[torch.randperm(len(idx), generator=gen)[:k]])
    idx = torch.cat(picked)
    return Split(pool.x[idx], pool.y[idx])


class DigitsCNN(nn.Module):
    """Three 3x3 convolutions, one hidden linear layer, and a linear head (about 40k parameters)."""

    def __init__(self, classes: int = 5, width: int = 16):
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(1, w, 3, padding=1)
        self.conv2 = nn.Conv2d(w, 2 * w, 3, padding=1)
        self.conv3 = nn.Conv2d(2 * w, 4 * w, 3, padding=1)
        self.fc = nn.Linear(4 * w * 2 * 2, 4 * w)
        self.head = nn.Linear(4 * w, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # (B, 1, 8, 8) -> (B, w, 8, 8) -> (B, 2w, 4, 4) -> (B, 4w, 2, 2) -> (B, 4w)
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        h = F.max_pool2d(F.relu(self.conv3(h)), 2)
        return F.relu(self.fc(h.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, 1, 8, 8) -> (B, classes)


class DigitsViT(nn.Module):
    """A tiny Vision Transformer (transformers' ViTForImageClassification, built from a config):
    2x2 patches of the 8x8 image -> 16 tokens + [CLS], 2 layers, hidden 48, 4 heads (about 40k
    parameters). Dosovitskiy et al. 2020, arXiv:2010.11929."""

    def __init__(self, classes: int = 5):
        super().__init__()
        from transformers import ViTConfig, ViTForImageClassification

        config = ViTConfig(
            image_size=8,
            patch_size=2,
            num_channels=1,
            hidden_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=96,
            num_labels=classes,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        self.vit = ViTForImageClassification(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit(pixel_values=x).logits  # (B, 1, 8, 8) -> (B, classes)


def shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each image moved by up to one pixel in each direction (zero fill): light augmentation."""
    padded = F.pad(x, (1, 1, 1, 1))
    out = torch.empty_like(x)
    offsets = torch.randint(0, 3, (len(x), 2), generator=gen)
    for i, (dy, dx) in enumerate(offsets.tolist()):
        out[i] = padded[i, :, dy : dy + 8, dx : dx + 8]
    return out


def fit(
    model: nn.Module, data: Split, steps: int, lr: float, seed: int, batch: int = 64, weight_decay: float = 1e-4
) -> float:
    """AdamW on the trainable parameters, cross-entropy, shifted mini-batches; returns last loss."""
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(steps):
        idx = torch.randperm(len(data), generator=gen)[:batch]
        logits = model(shift(data.x[idx], gen))
        loss = F.cross_entropy(logits, data.y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return float(loss.detach())


@torch.no_grad()
def accuracy(model: nn.Module, data: Split) -> float:
    model.eval()
    return float((model(data.x).argmax(-1) == data.y).float().mean())
