"""Writes format_train.jsonl and format_eval.jsonl: short questions answered in one fixed JSON form.

Every response is a one-line JSON object, ``{"answer": "...", "topic": "..."}``. SmolLM2-135M-Instruct
answers these questions in free sentences; after fine-tuning it answers in this form. The eval file
holds facts and numbers that never appear in the training file, so its loss measures the format
learned, not facts memorised. Run: ``python examples/data/make_format_data.py`` (deterministic).
"""

import json
import random
from pathlib import Path

CAPITALS = [
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Portugal", "Lisbon"),
    ("Japan", "Tokyo"),
    ("China", "Beijing"),
    ("Russia", "Moscow"),
    ("Egypt", "Cairo"),
    ("Greece", "Athens"),
    ("Norway", "Oslo"),
    ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"),
    ("Denmark", "Copenhagen"),
    ("Poland", "Warsaw"),
    ("Austria", "Vienna"),
    ("Ireland", "Dublin"),
    ("Belgium", "Brussels"),
    ("Netherlands", "Amsterdam"),
    ("Hungary", "Budapest"),
    ("Canada", "Ottawa"),
    ("Mexico", "Mexico City"),
    ("Peru", "Lima"),
    ("Chile", "Santiago"),
    ("Argentina", "Buenos Aires"),
    ("Kenya", "Nairobi"),
    ("Thailand", "Bangkok"),
    ("Cuba", "Havana"),
    ("South Korea", "Seoul"),
    ("India", "New Delhi"),
    ("Turkey", "Ankara"),
    ("Australia", "Canberra"),
    ("Iceland", "Reykjavik"),
    ("Czech Republic", "Prague"),
    ("Switzerland", "Bern"),
    ("Colombia", "Bogota"),
]
OPPOSITES = [
    ("hot", "cold"),
    ("big", "small"),
    ("up", "down"),
    ("fast", "slow"),
    ("happy", "sad"),
    ("light", "dark"),
    ("open", "closed"),
    ("early", "late"),
    ("full", "empty"),
    ("hard", "soft"),
    ("old", "young"),
    ("rich", "poor"),
    ("strong", "weak"),
    ("wet", "dry"),
    ("loud", "quiet"),
    ("tall", "short"),
    ("heavy", "light"),
    ("thick", "thin"),
    ("clean", "dirty"),
    ("first", "last"),
    ("inside", "outside"),
    ("win", "lose"),
    ("push", "pull"),
    ("buy", "sell"),
    ("true", "false"),
    ("day", "night"),
    ("left", "right"),
    ("north", "south"),
    ("east", "west"),
    ("begin", "end"),
]
PLURALS = [
    ("mouse", "mice"),
    ("child", "children"),
    ("tooth", "teeth"),
    ("foot", "feet"),
    ("man", "men"),
    ("woman", "women"),
    ("goose", "geese"),
    ("person", "people"),
    ("sheep", "sheep"),
    ("fish", "fish"),
    ("box", "boxes"),
    ("city", "cities"),
    ("knife", "knives"),
    ("leaf", "leaves"),
    ("wolf", "wolves"),
    ("baby", "babies"),
    ("bus", "buses"),
    ("potato", "potatoes"),
    ("cat", "cats"),
    ("book", "books"),
    ("glass", "glasses"),
    ("story", "stories"),
    ("life", "lives"),
    ("ox", "oxen"),
]
YOUNG = [
    ("cat", "kitten"),
    ("dog", "puppy"),
    ("cow", "calf"),
    ("horse", "foal"),
    ("sheep", "lamb"),
    ("goat", "kid"),
    ("duck", "duckling"),
    ("frog", "tadpole"),
    ("bear", "cub"),
    ("lion", "cub"),
    ("kangaroo", "joey"),
    ("swan", "cygnet"),
    ("goose", "gosling"),
    ("pig", "piglet"),
    ("owl", "owlet"),
    ("deer", "fawn"),
    ("hen", "chick"),
    ("eagle", "eaglet"),
]
COLORS = [
    ("the sky on a clear day", "blue"),
    ("fresh grass", "green"),
    ("a ripe banana", "yellow"),
    ("snow", "white"),
    ("coal", "black"),
    ("a ripe tomato", "red"),
    ("an orange", "orange"),
    ("a lemon", "yellow"),
    ("milk", "white"),
    ("a polar bear's fur", "white"),
    ("a fire truck", "red"),
    ("a crow", "black"),
    ("an emerald", "green"),
    ("chocolate", "brown"),
    ("a flamingo", "pink"),
    ("a ruby", "red"),
    ("the sea on a sunny day", "blue"),
    ("a carrot", "orange"),
]
COUNTS = [
    ("days are in a week", "7"),
    ("months are in a year", "12"),
    ("hours are in a day", "24"),
    ("minutes are in an hour", "60"),
    ("seconds are in a minute", "60"),
    ("legs does a spider have", "8"),
    ("legs does an insect have", "6"),
    ("sides does a triangle have", "3"),
    ("sides does a square have", "4"),
    ("sides does a hexagon have", "6"),
    ("days are in a leap year", "366"),
    ("continents are there", "7"),
    ("wheels does a bicycle have", "2"),
    ("players are on a soccer team on the field", "11"),
    ("cents are in a dollar", "100"),
    ("centimeters are in a meter", "100"),
    ("grams are in a kilogram", "1000"),
    ("weeks are in a year", "52"),
    ("strings does a standard guitar have", "6"),
    ("letters are in the English alphabet", "26"),
]
ASK = {
    "capital": ["What is the capital of {}?", "Which city is the capital of {}?", "Name the capital of {}."],
    "opposite": ["What is the opposite of '{}'?", "Give the opposite of the word '{}'.", "Opposite of {}?"],
    "plural": ["What is the plural of '{}'?", "How do you write more than one {}?", "Plural of {}?"],
    "young": ["What is a baby {} called?", "What do you call a young {}?"],
    "color": ["What color is {}?", "Which color is {}?"],
    "count": ["How many {}?"],
}
OPS = [("plus", lambda a, b: a + b), ("minus", lambda a, b: a - b), ("times", lambda a, b: a * b)]


def record(prompt: str, answer: str, topic: str) -> dict:
    return {"prompt": prompt, "response": json.dumps({"answer": answer, "topic": topic})}


def facts(kind: str, pairs, topic: str, rng: random.Random) -> list[dict]:
    out = []
    for subject, answer in pairs:
        for template in rng.sample(ASK[kind], min(2, len(ASK[kind]))):
            out.append(record(template.format(subject), answer, topic))
    return out


def arithmetic(rng: random.Random, n: int, seen: set) -> list[dict]:
    out = []
    while len(out) < n:
        a, b = rng.randint(2, 20), rng.randint(2, 12)
        name, op = rng.choice(OPS)
        if (a, name, b) in seen or (name == "minus" and b > a):
            continue
        seen.add((a, name, b))
        form = rng.choice(["What is {} {} {}?", "Compute {} {} {}.", "How much is {} {} {}?"])
        out.append(record(form.format(a, name, b), str(op(a, b)), "arithmetic"))
    return out


def split(pairs, rng: random.Random, held: int):
    pairs = list(pairs)
    rng.shuffle(pairs)
    return pairs[held:], pairs[:held]


def main() -> None:
    rng = random.Random(0)
    train, held = [], []
    for kind, pairs, topic, k in [
        ("capital", CAPITALS, "geography", 6),
        ("opposite", OPPOSITES, "language", 5),
        ("plural", PLURALS, "language", 4),
        ("young", YOUNG, "animals", 3),
        ("color", COLORS, "colors", 3),
        ("count", COUNTS, "numbers", 3),
    ]:
        tr, ev = split(pairs, rng, k)
        train += facts(kind, tr, topic, rng)
        held += facts(kind, ev, topic, rng)[::2]  # one phrasing per held-out fact
    seen: set = set()
    train += arithmetic(rng, 90, seen)
    held += arithmetic(rng, 16, seen)
    rng.shuffle(train)
    here = Path(__file__).parent
    for name, rows in (("format_train.jsonl", train), ("format_eval.jsonl", held)):
        (here / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{name}: {len(rows)} examples")


if __name__ == "__main__":
    main()
