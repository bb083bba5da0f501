"""A built-in synthetic corpus: offline, deterministic, with structure a small model can learn.

A fixed "world" (made-up names, places, foods, colours; each name has one of each, and a friend)
is stated in short sentences, mixed with a sparse word-level Markov chain and counting runs. A model
that learns the world's facts and the chain's transitions drives its loss far below the unigram
entropy. The world depends only on WORLD_SEED, so every split and every sample seed shares it; the
documents depend on the seed, so train and held-out text differ.

`facts()` exposes the world so evaluation can build multiple-choice questions that are learnable
from this corpus (a model that learned nothing scores at chance).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

WORLD_SEED = 1234
N_NAMES, N_PLACES, N_FOODS, N_COLORS, N_WORDS = 48, 12, 12, 8, 160
NUMBERS = "one two three four five six seven eight nine ten".split()


@dataclass(frozen=True)
class World:
    names: tuple[str, ...]
    places: tuple[str, ...]
    foods: tuple[str, ...]
    colors: tuple[str, ...]
    words: tuple[str, ...]
    lives: dict  # name -> place
    likes: dict  # name -> food
    color: dict  # name -> colour
    friend: dict  # name -> name
    successors: dict  # word -> tuple of 3 words (the Markov chain's support)


def _words(rng: random.Random, n: int, taken: set[str]) -> tuple[str, ...]:
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    out = []
    while len(out) < n:
        w = "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(rng.randint(2, 3)))
        if w not in taken:
            taken.add(w)
            out.append(w)
    return tuple(out)


@lru_cache(maxsize=1)
def world() -> World:
    rng = random.Random(WORLD_SEED)
    taken: set[str] = set()
    names = tuple(w.capitalize() for w in _words(rng, N_NAMES, taken))
    places, foods = _words(rng, N_PLACES, taken), _words(rng, N_FOODS, taken)
    colors, words = _words(rng, N_COLORS, taken), _words(rng, N_WORDS, taken)
    return World(
        names, places, foods, colors, words,
        lives={n: rng.choice(places) for n in names},
        likes={n: rng.choice(foods) for n in names},
        color={n: rng.choice(colors) for n in names},
        friend={n: rng.choice([m for m in names if m != n]) for n in names},
        successors={w: tuple(rng.sample(words, 3)) for w in words},
    )


def fact_sentences(name: str) -> list[str]:
    w = world()
    return [f"{name} lives in {w.lives[name]}.", f"{name} likes {w.likes[name]}.",
            f"The color of {name} is {w.color[name]}.", f"{name} is a friend of {w.friend[name]}."]


def _sentence(rng: random.Random) -> str:
    w = world()
    kind = rng.random()
    if kind < 0.55:
        return rng.choice(fact_sentences(rng.choice(w.names)))
    if kind < 0.9:  # a walk on the sparse Markov chain
        word, out = rng.choice(w.words), []
        for _ in range(rng.randint(4, 10)):
            out.append(word)
            word = rng.choice(w.successors[word])
        return " ".join(out).capitalize() + "."
    start = rng.randrange(len(NUMBERS) - 3)
    return " ".join(NUMBERS[start:start + rng.randint(3, len(NUMBERS) - start)]).capitalize() + "."


def documents(n_docs: int, seed: int) -> list[str]:
    """`n_docs` documents of 3-10 sentences, deterministic in (n_docs, seed)."""
    rng = random.Random(seed)
    return [" ".join(_sentence(rng) for _ in range(rng.randint(3, 10))) for _ in range(n_docs)]
