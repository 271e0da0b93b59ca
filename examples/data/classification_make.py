"""Write classification_train.jsonl and classification_test.jsonl: customer messages to an online
shop, each labelled with what it is about (delivery, billing, technical, account).

Every sentence comes from a template written for this project, filled from small vocabularies,
with an optional greeting and closing. The split is by template: the test file's sentences come
from templates that the training file never uses, so the test measures phrasings the model has
not seen. Deterministic: running it again writes the same files.

    python examples/data/classification_make.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20261123
PER_TEMPLATE = 14  # variants drawn per template (duplicates dropped)
TEST_TEMPLATES = 4  # templates per class held out for the test file

SLOTS = {
    "product": [
        "blender",
        "phone case",
        "desk lamp",
        "pair of running shoes",
        "coffee grinder",
        "winter jacket",
        "laptop stand",
        "set of kitchen knives",
        "yoga mat",
        "Bluetooth speaker",
        "backpack",
        "electric kettle",
        "office chair",
        "rain coat",
        "baby monitor",
        "garden hose",
    ],
    "days": ["three days", "five days", "a week", "ten days", "two weeks", "almost a month"],
    "amount": ["$12.99", "$45", "$89.50", "$120", "$7.49", "$230", "$18", "$64.20"],
    "order": ["#48213", "#50977", "#31402", "#77015", "#62389", "#90544"],
    "device": ["my iPhone", "my Android phone", "my tablet", "my laptop", "my work computer", "my iPad"],
    "browser": ["Chrome", "Firefox", "Safari", "Edge"],
    "country": ["Canada", "Ireland", "Portugal", "Norway", "Australia", "Japan"],
    "day": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"],
}

OPENERS = ["", "", "", "Hi, ", "Hello, ", "Good morning, ", "Hi there. ", "Hello team, "]
QUESTION_OPENERS = OPENERS + ["Quick question: "]
CLOSERS = ["", "", "", " Thanks.", " Thank you.", " Thanks in advance.", " Cheers."]
STATEMENT_CLOSERS = CLOSERS + [" Please help.", " This is really frustrating.", " Any update would be appreciated."]

TEMPLATES = {
    "delivery": [
        "My {product} still hasn't arrived and it has been {days}.",
        "The tracking page says my parcel was delivered, but there is nothing at my door.",
        "Can you tell me when order {order} will be shipped?",
        "The {product} arrived in a crushed box and has a dent on the side.",
        "I need to change the delivery address for order {order} before it goes out.",
        "Is it possible to have my {product} delivered on a {day}?",
        "The courier left my package with a neighbour I have never met.",
        "Do you ship to {country}, and how long does it usually take?",
        "I received somebody else's order instead of my {product}.",
        "My order was split into two parcels and only one of them has turned up.",
        "The tracking number for order {order} doesn't show any information.",
        "The estimated delivery date keeps moving back by a day.",
        "Could I collect my {product} from a shop instead of waiting for the van?",
        "The {product} came without the parts that should be in the box.",
        "Nobody was home on {day}; how do I rearrange the delivery?",
        "My parcel has been stuck at the sorting centre for {days}.",
        "Why does express shipping to {country} take {days}?",
        "The driver said he couldn't find my street and took the {product} back.",
    ],
    "billing": [
        "I was charged twice for the same {product}.",
        "Why is there an extra charge of {amount} on my card?",
        "I sent the {product} back {days} ago and I still haven't had my refund.",
        "Can I pay for my order in monthly instalments?",
        "My discount code didn't work at checkout, so I paid {amount} more than I should have.",
        "Please send me a VAT invoice for order {order}.",
        "The price of the {product} dropped the day after I bought it; can I get the difference back?",
        "My card was declined even though there is plenty of money in the account.",
        "I cancelled my membership, but you took {amount} from my account again this month.",
        "Do you accept PayPal, or only credit cards?",
        "The total on my receipt is different from what I saw in the basket.",
        "How long does a refund take to show up on my bank statement?",
        "I paid for express shipping on order {order} but it came by standard post; please refund the difference.",
        "Can I use two gift cards on one order?",
        "I was charged {amount} for a {product} that was out of stock.",
        "The refund for order {order} was only {amount}, not the full price.",
        "Why was I charged in euros when I live in {country}?",
        "There is a pending payment of {amount} that I don't recognise.",
    ],
    "technical": [
        "The app crashes every time I open my basket on {device}.",
        "Your website won't load in {browser}; I just get a blank page.",
        "I keep getting an error message when I try to upload a photo with my review.",
        "The search bar shows no results, even for things I know you sell.",
        "Nothing happens when I press the checkout button.",
        "Every page takes ages to load on {device}.",
        "Notifications from the app don't show up on {device} any more.",
        "The size guide shows strange symbols instead of text.",
        "The product pictures have been missing since the last update.",
        "The app keeps logging me out every few minutes on {device}.",
        "I can't scroll to the bottom of the page in {browser}.",
        "The price filter resets whenever I go to the next page of results.",
        "Since the latest update, the app freezes on the loading screen.",
        "The page for the {product} shows a 404 error.",
        "The buttons overlap the text when I use the site on {device}.",
        "The video on the {product} page plays without any sound in {browser}.",
        "The map for choosing a pickup point never finishes loading.",
        "The chat window on your site closes by itself after a few seconds.",
    ],
    "account": [
        "I forgot my password and the reset email never arrives.",
        "How do I change the email address on my account?",
        "Please delete my account and all the personal data you keep about me.",
        "Someone logged into my account from {country} and it wasn't me.",
        "I'd like to merge my two accounts into one.",
        "How can I stop getting your marketing emails?",
        "My account has been locked after too many login attempts.",
        "Can I change the name on my profile? It is spelled wrong.",
        "I want to save a second address in my profile for future orders.",
        "How do I set up two-step verification on my account?",
        "All my loyalty points have disappeared from my account.",
        "I never signed up with you, but I keep getting emails addressed to me.",
        "Can I update my phone number without calling customer service?",
        "My order history is empty, although I have bought from you many times.",
        "I'd like to sign in with Google instead of a password.",
        "Can my partner and I share one account?",
        "The verification code you text me expires before it arrives.",
        "Please unsubscribe me from the newsletter but keep my account open.",
    ],
}


def fill(template: str, rng: random.Random) -> str:
    values = {k: rng.choice(v) for k, v in SLOTS.items() if "{" + k + "}" in template}
    body = template.format(**values)
    question = body.endswith("?")
    opener = rng.choice(QUESTION_OPENERS if question else OPENERS)
    if opener.endswith((", ", ": ")) and not body.startswith(("I ", "I'")):
        body = body[0].lower() + body[1:]  # "Hi, the app crashes ..."
    return (opener + body + rng.choice(CLOSERS if question else STATEMENT_CLOSERS)).strip()


def build() -> tuple[list[dict], list[dict]]:
    rng = random.Random(SEED)
    train, test = [], []
    for label, templates in TEMPLATES.items():
        held_out = set(rng.sample(range(len(templates)), TEST_TEMPLATES))
        for i, template in enumerate(templates):
            seen = set()
            for _ in range(PER_TEMPLATE):
                seen.add(fill(template, rng))
            rows = [{"text": t, "label": label} for t in sorted(seen)]
            (test if i in held_out else train).extend(rows)
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


if __name__ == "__main__":
    train, test = build()
    write(HERE / "classification_train.jsonl", train)
    write(HERE / "classification_test.jsonl", test)
    print(f"classification: {len(train)} train, {len(test)} test sentences")
