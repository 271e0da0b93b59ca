"""Write translation_train.jsonl and translation_test.jsonl: short everyday English sentences and
their French translations, written for this project.

Pairs come from sentence templates written in both languages at once, filled from small
vocabularies in which every French noun carries its gender, so articles (le / la / l'), contractions
(au, du, à l'), possessives (mon / ma) and adjective agreement come out right; plus a list of
hand-written pairs. Each record holds ``source`` / ``target`` (sequence-to-sequence) and the same
pair as ``prompt`` / ``response`` (instruction tuning). Deterministic.

    python examples/data/translation_make.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from translation_vocab import (
    ACTIONS,
    ADJECTIVES,
    ANIMALS,
    CITIES,
    DAYS,
    DRINKS,
    FIXED,
    FOODS,
    HOURS,
    ITEMS,
    NUMBERS,
    OBJECTS,
    PLACES,
    PROFESSIONS,
    RELATIVES,
    SHOPS,
    SIGHTS,
    SURFACES,
    WEATHER,
    WEATHER_TIMES,
    WHEN,
    Noun,
)

HERE = Path(__file__).resolve().parent
SEED = 20261124
PER_TEMPLATE = 32
N_TEST = 120
INSTRUCTION = "Translate into French: "


def le(n: Noun) -> str:
    return "l'" + n.fr if n.vowel else ("le " if n.m else "la ") + n.fr


def un(n: Noun) -> str:
    return ("un " if n.m else "une ") + n.fr


def au(n: Noun) -> str:  # à + the
    return "à l'" + n.fr if n.vowel else ("au " if n.m else "à la ") + n.fr


def du(n: Noun) -> str:  # de + the
    return "de l'" + n.fr if n.vowel else ("du " if n.m else "de la ") + n.fr


def mon(n: Noun) -> str:
    return ("mon " if n.m or n.vowel else "ma ") + n.fr


def a_en(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def cap(s: str) -> str:
    return s[0].upper() + s[1:]


def pick(rng, xs):
    return rng.choice(xs)


def t_where(r):
    p = pick(r, PLACES)
    return f"Where is the {p.en}?", f"Où est {le(p)} ?"


def t_how_get(r):
    p = pick(r, PLACES)
    return f"How can I get to the {p.en}?", f"Comment puis-je aller {au(p)} ?"


def t_far(r):
    p = pick(r, PLACES)
    return f"Is the {p.en} far from here?", f"Est-ce que {le(p)} est loin d'ici ?"


def t_open(r):
    p, verb = pick(r, SHOPS), pick(r, [("open", "ouvre"), ("close", "ferme")])
    return f"What time does the {p.en} {verb[0]}?", f"À quelle heure {verb[1]} {le(p)} ?"


def t_closed(r):
    p, d = pick(r, SHOPS), pick(r, DAYS)
    return f"The {p.en} is closed on {d[0]}s.", f"{cap(le(p))} est {'fermé' if p.m else 'fermée'} le {d[1]}."


def t_would_like(r):
    d = pick(r, DRINKS)
    return f"I would like {a_en(d.en)}, please.", f"Je voudrais {un(d)}, s'il vous plaît."


def t_dislike(r):
    f, love = pick(r, FOODS), r.random() < 0.5
    if love:
        return f"I love {f.en}.", f"J'adore les {f.fr}."
    return f"I don't like {f.en}.", f"Je n'aime pas les {f.fr}."


def t_lives(r):
    p, c = pick(r, RELATIVES), pick(r, CITIES)
    return f"My {p.en} lives in {c[0]}.", f"{cap(mon(p))} habite à {c[1]}."


def t_job(r):
    p, j = pick(r, RELATIVES), pick(r, PROFESSIONS)
    return f"My {p.en} is {a_en(j[0])}.", f"{cap(mon(p))} est {j[1] if p.m else j[2]}."


def t_feels(r):
    p, a = pick(r, RELATIVES), pick(r, ADJECTIVES)
    return f"My {p.en} is {a[0]} today.", f"{cap(mon(p))} est {a[1] if p.m else a[2]} aujourd'hui."


def t_going(r):
    c, w = pick(r, CITIES), pick(r, WHEN)
    return f"We are going to {c[0]} {w[0]}.", f"Nous allons à {c[1]} {w[1]}."


def t_train(r):
    c, h = pick(r, CITIES), pick(r, HOURS)
    return f"The train to {c[0]} leaves at {h[0]} o'clock.", f"Le train pour {c[1]} part à {h[1]} heures."


def t_weather(r):
    w, t = pick(r, WEATHER), pick(r, WEATHER_TIMES)
    return f"{w[0]} {t[0]}.", f"{w[1]} {t[1]}."


def t_animals(r):
    n, a = pick(r, NUMBERS), pick(r, ANIMALS)
    return f"We have {n[0]} {a[0]}.", f"Nous avons {n[1]} {a[1]}."


def t_on(r):
    o, under = pick(r, OBJECTS), r.random() < 0.3
    s = pick(r, [x for x in SURFACES if not under or x.en not in ("shelf", "fridge")])
    return (
        f"The {o.en} is {'under' if under else 'on'} the {s.en}.",
        f"{cap(le(o))} est {'sous' if under else 'sur'} {le(s)}.",
    )


def t_cant_find(r):
    o = pick(r, OBJECTS)
    return f"I can't find my {o.en}.", f"Je ne trouve pas {mon(o)}."


def t_could_you(r):
    a = pick(r, ACTIONS)
    return f"Could you {a[0]}, please?", f"Pourriez-vous {a[1]}, s'il vous plaît ?"


def t_cost(r):
    i = pick(r, ITEMS)
    return f"How much does the {i.en} cost?", f"Combien coûte {le(i)} ?"


def t_looking(r):
    i, p = pick(r, ITEMS), pick(r, RELATIVES)
    return f"I'm looking for {a_en(i.en)} for my {p.en}.", f"Je cherche {un(i)} pour {mon(p)}."


def t_visited(r):
    s, p = pick(r, SIGHTS), pick(r, RELATIVES)
    return f"Yesterday I visited the {s.en} with my {p.en}.", f"Hier, j'ai visité {le(s)} avec {mon(p)}."


def t_near(r):
    a, b = r.sample(PLACES, 2)
    return f"There is {a_en(a.en)} near the {b.en}.", f"Il y a {un(a)} près {du(b)}."


def t_meet(r):
    p, h = pick(r, PLACES), pick(r, HOURS)
    return (f"Let's meet in front of the {p.en} at {h[0]} o'clock.", f"Retrouvons-nous devant {le(p)} à {h[1]} heures.")


def t_bought(r):
    i, p, c = pick(r, ITEMS), pick(r, RELATIVES), pick(r, CITIES)
    return f"I bought {a_en(i.en)} for my {p.en} in {c[0]}.", f"J'ai acheté {un(i)} pour {mon(p)} à {c[1]}."


def t_coming(r):
    p, c, w = pick(r, RELATIVES), pick(r, CITIES), pick(r, WHEN)
    return f"My {p.en} is coming to {c[0]} {w[0]}.", f"{cap(mon(p))} vient à {c[1]} {w[1]}."


TEMPLATES = [
    t_meet,
    t_bought,
    t_coming,
    t_where,
    t_how_get,
    t_far,
    t_open,
    t_closed,
    t_would_like,
    t_dislike,
    t_lives,
    t_job,
    t_feels,
    t_going,
    t_train,
    t_weather,
    t_animals,
    t_on,
    t_cant_find,
    t_could_you,
    t_cost,
    t_looking,
    t_visited,
    t_near,
]


def build() -> tuple[list[dict], list[dict]]:
    rng = random.Random(SEED)
    pairs: dict[str, str] = {}
    for template in TEMPLATES:
        for _ in range(PER_TEMPLATE):
            en, fr = template(rng)
            pairs.setdefault(en, fr)
    for en, fr in FIXED:
        pairs.setdefault(en, fr)
    items = sorted(pairs.items())
    rng.shuffle(items)
    rows = [{"source": en, "target": fr, "prompt": INSTRUCTION + en, "response": fr} for en, fr in items]
    return rows[N_TEST:], rows[:N_TEST]


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


if __name__ == "__main__":
    train, test = build()
    write(HERE / "translation_train.jsonl", train)
    write(HERE / "translation_test.jsonl", test)
    print(f"translation: {len(train)} train, {len(test)} test pairs")
