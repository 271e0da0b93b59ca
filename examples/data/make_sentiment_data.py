"""Writes sentiment_train.csv and sentiment_eval.csv: short product reviews labelled pos / neg.

Reviews are built from templates; the eval file uses products and phrases that never appear
in the training file. Run: ``python examples/data/make_sentiment_data.py`` (deterministic).
"""

import csv
import random
from pathlib import Path

PRODUCTS = [
    "phone",
    "laptop",
    "kettle",
    "chair",
    "lamp",
    "backpack",
    "camera",
    "blender",
    "jacket",
    "headset",
    "keyboard",
    "toaster",
    "watch",
    "tent",
    "bike",
    "printer",
]
HELD_PRODUCTS = ["speaker", "mattress", "drill", "scarf"]
GOOD = [
    "works perfectly",
    "is excellent",
    "exceeded my expectations",
    "is worth every penny",
    "feels very well made",
    "arrived quickly and works great",
    "is a joy to use",
    "is sturdy and reliable",
]
BAD = [
    "broke after a week",
    "is a waste of money",
    "stopped working quickly",
    "feels cheap and flimsy",
    "arrived damaged",
    "is very disappointing",
    "never worked properly",
    "is noisy and unreliable",
]
HELD_GOOD = ["is simply wonderful", "does everything I hoped"]
HELD_BAD = ["fell apart immediately", "is the worst purchase I made"]
OPENERS = ["The {}", "This {}", "My new {}", "Honestly, the {}"]


def reviews(products, good, bad, rng):
    rows = []
    for product in products:
        for phrase, label in [(p, "pos") for p in good] + [(p, "neg") for p in bad]:
            rows.append({"text": f"{rng.choice(OPENERS).format(product)} {phrase}.", "label": label})
    rng.shuffle(rows)
    return rows


def main() -> None:
    rng = random.Random(0)
    train = reviews(PRODUCTS, GOOD, BAD, rng)[:200]
    held = reviews(HELD_PRODUCTS, HELD_GOOD, HELD_BAD, rng)
    here = Path(__file__).parent
    for name, rows in (("sentiment_train.csv", train), ("sentiment_eval.csv", held)):
        with open(here / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "label"])
            writer.writeheader()
            writer.writerows(rows)
        print(f"{name}: {len(rows)} examples")


if __name__ == "__main__":
    main()
