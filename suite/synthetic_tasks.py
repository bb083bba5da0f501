"""Benchmarks in the five Hugging Face schemas, built from the synthetic corpus (suite.synthetic).

Every item is a sentence of the corpus's kinds with one word to choose: a fact of the world ("Bipu
likes kanu."), a walk on its Markov chain ("Kafo bezi lumo.": the last word must be a successor of
the one before) or a counting run ("Three four five six."). A model that learned the corpus picks
the right word (a tiny model learns counting and the chain within a few hundred steps, the 192
facts more slowly); a model that learned nothing, or a broken scoring path, scores chance. The
files carry the exact names and record layouts of the real sets (evals.data), so `periln eval
--data-dir` scores them offline through lm-eval's unchanged task configs: tests use them, and so
can a first run on one machine (`periln data synthetic-benchmarks DIR`).

In the multiple-choice schemas each choice restates the whole sentence with a different word, so
the scored text is a corpus sentence whatever prompt the task's config puts before it.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from evals.data import write_jsonl_gz
from evals.tasks import ALL_TASKS, TASKS
from suite.synthetic import NUMBERS, world

KINDS = ("fact", "chain", "count")
RELATIONS = ("likes", "lives", "color", "friend")
LETTERS = "ABCDEFGH"


@dataclass(frozen=True)
class Item:
    """A sentence (words, the last with its full stop) and the choices for its word at `slot`."""

    words: tuple[str, ...]
    slot: int
    choices: tuple[str, ...]  # candidates for words[slot]
    answer: int  # index of the true one
    kind: str

    def sentence(self, choice: int) -> str:
        words = list(self.words)
        words[self.slot] = self.choices[choice]
        return " ".join(words) + "."


def _values(rel: str) -> tuple[str, ...]:
    w = world()
    return {"likes": w.foods, "lives": w.places, "color": w.colors, "friend": w.names}[rel]


def _truth(rel: str, name: str) -> str:
    w = world()
    return {"likes": w.likes, "lives": w.lives, "color": w.color, "friend": w.friend}[rel][name]


def fact(rel: str, name: str, value: str) -> list[str]:
    """The corpus's sentence for a fact (suite.synthetic.fact_sentences), as words."""
    text = {"likes": f"{name} likes {value}", "lives": f"{name} lives in {value}",
            "color": f"The color of {name} is {value}", "friend": f"{name} is a friend of {value}"}[rel]
    return text.split()


def _choices(rng: random.Random, true: str, wrong_pool: list[str], n: int) -> tuple[tuple[str, ...], int]:
    wrong = rng.sample(sorted(set(wrong_pool) - {true}), n - 1)
    answer = rng.randrange(n)
    return tuple(wrong[:answer] + [true] + wrong[answer:]), answer


def last_word_item(rng: random.Random, n: int) -> Item:
    """Choose the sentence's last word among n."""
    w = world()
    kind = rng.choice(KINDS)
    if kind == "fact":
        name, rel = rng.choice(w.names), rng.choice(RELATIONS)
        true = _truth(rel, name)
        words = fact(rel, name, true)
        pool = [v for v in _values(rel) if v != name]
    elif kind == "chain":
        words = [rng.choice(w.words)]
        for _ in range(rng.randint(2, 4)):
            words.append(rng.choice(w.successors[words[-1]]))
        words[0] = words[0].capitalize()
        true = words[-1]
        pool = [x for x in w.words if x not in w.successors[words[-2].lower()]]
    else:
        start = rng.randrange(len(NUMBERS) - 3)
        words = NUMBERS[start:start + rng.randint(3, len(NUMBERS) - start)]
        words = [words[0].capitalize(), *words[1:]]
        true = words[-1]
        pool = [x for x in NUMBERS if x != true]
    choices, answer = _choices(rng, true, pool, n)
    return Item(tuple(words), len(words) - 1, choices, answer, kind)


def blank_item(rng: random.Random) -> Item:
    """Winogrande's shape: two candidates for a word with words after it that fit only one."""
    w = world()
    kind = rng.choice(KINDS)
    if kind == "fact":  # who likes kanu? the name opens the sentence
        rel, name = rng.choice(RELATIONS), rng.choice(w.names)
        value = _truth(rel, name)
        words = fact(rel, name, value)
        slot = words.index(name)
        pool = [m for m in w.names if m not in (name, value) and _truth(rel, m) != value]
        return Item(tuple(words), slot, *_choices(rng, name, pool, 2), kind)
    if kind == "chain":  # a middle word whose successor follows
        words = [rng.choice(w.words)]
        for _ in range(rng.randint(2, 3)):
            words.append(rng.choice(w.successors[words[-1]]))
        slot = len(words) - 2  # >= 1: the capitalized first word is never the blank
        nxt = words[slot + 1]
        pool = [x for x in w.words if nxt not in w.successors[x] and x != words[slot]]
        words[0] = words[0].capitalize()
        return Item(tuple(words), slot, *_choices(rng, words[slot], pool, 2), kind)
    start = rng.randrange(len(NUMBERS) - 3)
    words = NUMBERS[start:start + rng.randint(3, len(NUMBERS) - start)]
    words = [words[0].capitalize(), *words[1:]]
    slot = rng.randrange(1, len(words) - 1)
    pool = [x for x in NUMBERS if x != words[slot]]
    return Item(tuple(words), slot, *_choices(rng, words[slot], pool, 2), kind)


# ------------------------------------------------------------------------ the five schemas

def arc(rng: random.Random, i: int, task: str) -> dict:
    item = last_word_item(rng, 4)
    labels = list(LETTERS[:4])
    return {"id": f"synthetic_{task}_{item.kind}_{i}", "question": "Which sentence is true?",
            "choices": {"text": [item.sentence(c) for c in range(4)], "label": labels},
            "answerKey": labels[item.answer]}


def hellaswag(rng: random.Random, i: int) -> dict:
    item = last_word_item(rng, 4)
    # NOTE: lm-eval capitalizes ctx_b (lowering the rest, names included): the whole context sits
    # in ctx_a and ctx_b stays empty.
    ctx_a = " ".join(item.words[:-1])
    return {"ind": i, "activity_label": "Text", "ctx_a": ctx_a, "ctx_b": "", "ctx": ctx_a + " ",
            "endings": [f"{c}." for c in item.choices], "source_id": f"synthetic~{item.kind}~{i}",
            "split": "val", "split_type": "indomain", "label": str(item.answer)}


def piqa(rng: random.Random, i: int) -> dict:
    item = last_word_item(rng, 2)
    return {"goal": "Which sentence is true?", "sol1": item.sentence(0), "sol2": item.sentence(1),
            "label": item.answer}


def social_iqa(rng: random.Random, i: int) -> dict:
    item = last_word_item(rng, 3)
    a, b, c = (item.sentence(k) for k in range(3))
    return {"context": "Here is some text.", "question": "Which sentence is true?",
            "answerA": a, "answerB": b, "answerC": c, "label": str(item.answer + 1)}


def winogrande(rng: random.Random, i: int) -> dict:
    item = blank_item(rng)
    words = list(item.words)
    words[item.slot] = "_"
    return {"sentence": " ".join(words) + ".", "option1": item.choices[0], "option2": item.choices[1],
            "answer": str(item.answer + 1)}


def records(task: str, n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(f"{task}-{seed}")
    make = {"arc_easy": lambda i: arc(rng, i, task), "arc_challenge": lambda i: arc(rng, i, task),
            "hellaswag": lambda i: hellaswag(rng, i), "piqa": lambda i: piqa(rng, i),
            "social_iqa": lambda i: social_iqa(rng, i), "winogrande": lambda i: winogrande(rng, i)}[task]
    return [make(i) for i in range(n)]


# A marker beside the synthetic files: scores computed on this folder are labelled synthetic in
# runs.csv, every table and the claims (which then refuse accuracy verdicts).
MARKER = "SYNTHETIC_BENCHMARKS.json"
SYNTHETIC = "synthetic (suite/synthetic_tasks.py)"


def write_synthetic_benchmarks(out_dir: str | Path, n: int = 200, seed: int = 0,
                               tasks: tuple[str, ...] = ALL_TASKS) -> list[Path]:
    """One file per task, named as `periln eval --data-dir` expects; n items each."""
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for task in tasks:
        path = out / f"{TASKS[task].file_stem()}.jsonl.gz"
        write_jsonl_gz(records(task, n, seed), path)
        paths.append(path)
    (out / MARKER).write_text(json.dumps({"builder": "suite/synthetic_tasks.py", "items_per_task": n,
                                          "seed": seed, "tasks": list(tasks)}, indent=1))
    return paths


def benchmark_provenance(data_dir: str | Path | None) -> str:
    """Where a run's benchmark items came from: synthetic, local files, or lm-eval's hub datasets."""
    if data_dir is None:
        return "hub (lm-eval's datasets)"
    if (Path(data_dir).expanduser() / MARKER).is_file():
        return SYNTHETIC
    return f"local files ({Path(data_dir).name})"
