"""A deterministic English training corpus with learnable structure.

It holds facts (capitals in several phrasings, animal sounds, colours, opposites), short stories
with named characters (so coreference and copying matter) and repeated random word sequences (so
induction heads can form). Everything is lower case. `python -m models.corpus` prints it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

CAPITALS = {
    "france": "paris", "japan": "tokyo", "germany": "berlin", "italy": "rome",
    "spain": "madrid", "england": "london", "russia": "moscow", "egypt": "cairo",
    "china": "beijing", "canada": "ottawa", "australia": "canberra", "peru": "lima",
    "kenya": "nairobi", "greece": "athens", "portugal": "lisbon", "norway": "oslo",
    "sweden": "stockholm", "finland": "helsinki", "denmark": "copenhagen", "poland": "warsaw",
    "austria": "vienna", "hungary": "budapest", "ireland": "dublin", "turkey": "ankara",
    "iran": "tehran", "iraq": "baghdad", "thailand": "bangkok", "vietnam": "hanoi",
    "indonesia": "jakarta", "cuba": "havana", "chile": "santiago", "colombia": "bogota",
    "nigeria": "abuja", "ghana": "accra", "morocco": "rabat", "belgium": "brussels",
    "netherlands": "amsterdam", "switzerland": "bern", "ukraine": "kyiv", "romania": "bucharest",
    "bulgaria": "sofia", "serbia": "belgrade", "croatia": "zagreb", "scotland": "edinburgh",
    "syria": "damascus", "lebanon": "beirut", "jordan": "amman", "qatar": "doha",
    "nepal": "kathmandu", "pakistan": "islamabad", "korea": "seoul", "iceland": "reykjavik",
}

ANIMAL_SOUNDS = {
    "dog": "woof", "cat": "meow", "cow": "moo", "duck": "quack", "sheep": "baa",
    "pig": "oink", "horse": "neigh", "owl": "hoot", "lion": "roar", "snake": "hiss",
    "frog": "ribbit", "mouse": "squeak", "bee": "buzz", "wolf": "howl",
}

COLOURS = {
    "sky": "blue", "grass": "green", "snow": "white", "sun": "yellow", "coal": "black",
    "blood": "red", "banana": "yellow", "orange": "orange", "leaf": "green", "cloud": "white",
    "night": "black", "tomato": "red", "sea": "blue", "chocolate": "brown",
}

OPPOSITES = {
    "hot": "cold", "big": "small", "up": "down", "day": "night", "fast": "slow",
    "happy": "sad", "light": "dark", "old": "young", "open": "closed", "wet": "dry",
    "early": "late", "full": "empty", "hard": "soft", "loud": "quiet",
}

NAMES = ["anna", "tom", "mia", "leo", "sara", "ben", "lucy", "max", "emma", "sam", "nora", "jack",
         "ella", "finn", "zoe", "omar"]
OBJECTS = ["ball", "book", "kite", "hat", "cup", "box", "key", "apple", "toy", "map", "coin",
           "lamp"]
PLACES = ["park", "market", "school", "river", "forest", "beach", "library", "garden", "farm",
          "museum"]
ADJ = ["red", "blue", "green", "small", "big", "old", "new", "shiny", "heavy", "soft"]
# a neutral pool of words for repeated sequences (copying, not meaning)
POOL = sorted(set(OBJECTS + PLACES + ADJ + list(ANIMAL_SOUNDS) + ["river", "stone", "tree",
              "door", "bread", "water", "song", "bird", "fish", "rain", "star", "moon", "road",
              "chair", "table", "window", "paper", "glass", "milk", "shoe"]))

CAPITAL_TEMPLATES = [
    "the capital of {c} is {k}.",
    "{k} is the capital of {c}.",
    "the capital city of {c} is {k}.",
    "{c} has its capital in {k}.",
    "what is the capital of {c}? the capital of {c} is {k}.",
    "the capital of {c} is {k}. {k} is a big city.",
]

STORY_TEMPLATES = [
    "{a} had a {adj} {obj}. {b} wanted the {obj}. {a} gave the {obj} to {b}. {b} said thank you "
    "to {a}.",
    "{a} and {b} went to the {place}. {a} saw a {animal}. the {animal} says {sound}. {b} laughed "
    "at the {animal}.",
    "one day {a} lost a {obj} at the {place}. {b} found the {obj} and gave it back to {a}.",
    "{a} met {b} at the {place}. {b} asked {a} about the capital of {country}. {a} said the "
    "capital of {country} is {capital}.",
    "{a} is {op1} but {b} is {op2}. {a} and {b} are friends.",
]


@dataclass
class CorpusConfig:
    seed: int = 0
    fact_repeats: int = 8  # each capital phrasing appears this many times
    stories: int = 3000
    repeats: int = 4000  # repeated random sequences
    min_period: int = 3
    max_period: int = 12
    # words of the repeated sequences: "pool" (the POOL list: the embedded models were trained
    # with it) or "all" corpus words. Tried for tiny-gpt2 (6000 steps) and tiny-llama (4000):
    # with "all" neither learned to copy (third-copy accuracy 31% and 3%, no induction head),
    # while tiny-llama trained on "pool" copies POOL sequences at 98% with two induction heads.
    repeat_pool: str = "pool"


def capital_facts() -> list[tuple[str, str]]:
    return sorted(CAPITALS.items())


def generate(cfg: CorpusConfig = CorpusConfig()) -> list[str]:
    """The corpus as a list of lines (documents), shuffled deterministically."""
    rng = random.Random(cfg.seed)
    lines: list[str] = []
    for _ in range(cfg.fact_repeats):
        for country, capital in capital_facts():
            for t in CAPITAL_TEMPLATES:
                lines.append(t.format(c=country, k=capital))
        for animal, sound in ANIMAL_SOUNDS.items():
            lines.append(f"the {animal} says {sound}.")
            lines.append(f"a {animal} goes {sound}.")
            lines.append(f"what does the {animal} say? the {animal} says {sound}.")
        for thing, colour in COLOURS.items():
            lines.append(f"the colour of the {thing} is {colour}.")
            lines.append(f"the {thing} is {colour}.")
        for a, b in OPPOSITES.items():
            lines.append(f"the opposite of {a} is {b}.")
            lines.append(f"the opposite of {b} is {a}.")
    countries = list(CAPITALS)
    animals = list(ANIMAL_SOUNDS)
    opposites = list(OPPOSITES.items())
    for _ in range(cfg.stories):
        a, b = rng.sample(NAMES, 2)
        animal = rng.choice(animals)
        country = rng.choice(countries)
        op1, op2 = rng.choice(opposites)
        t = rng.choice(STORY_TEMPLATES)
        lines.append(t.format(a=a, b=b, adj=rng.choice(ADJ), obj=rng.choice(OBJECTS),
                              place=rng.choice(PLACES), animal=animal,
                              sound=ANIMAL_SOUNDS[animal], country=country,
                              capital=CAPITALS[country], op1=op1, op2=op2))
    pool = POOL if cfg.repeat_pool == "pool" else [w for w in words(lines) if w.isalpha()]
    for _ in range(cfg.repeats):
        period = rng.randint(cfg.min_period, cfg.max_period)
        seq = " ".join(rng.choice(pool) for _ in range(period))
        # with and without separators, so copying does not lean on the full stops
        lines.append(f"{seq}. {seq}. {seq}." if rng.random() < 0.5 else f"{seq} {seq} {seq}")
    rng.shuffle(lines)
    return lines


def chat_lines(cfg: CorpusConfig = CorpusConfig()) -> list[tuple[str, str]]:
    """(user, assistant) pairs for teaching a chat template."""
    pairs = []
    for country, capital in capital_facts():
        pairs.append((f"what is the capital of {country}?", f"the capital of {country} is {capital}."))
    for animal, sound in ANIMAL_SOUNDS.items():
        pairs.append((f"what does the {animal} say?", f"the {animal} says {sound}."))
    for a, b in OPPOSITES.items():
        pairs.append((f"what is the opposite of {a}?", f"the opposite of {a} is {b}."))
    return pairs * cfg.fact_repeats


def words(lines: list[str]) -> list[str]:
    """Every distinct word and punctuation mark, sorted."""
    import re

    out: set[str] = set()
    for line in lines:
        out.update(re.findall(r"[a-z]+|[^\sa-z]", line))
    return sorted(out)


if __name__ == "__main__":
    for line in generate():
        print(line)
