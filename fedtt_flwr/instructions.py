"""A FLAN-style instruction-tuning mix built offline from the GLUE/SuperGLUE files of a data folder: a few
natural-language templates per task family, answers as words ("positive", "yes", ...), one ``family`` column to
split clients by. Deterministic by seed; written as JSONL, never committed.

    fedtt-flwr instructions --out DIR [--data-dir DIR] [--per-family 600] [--dev-per-family 60] [--seed 0]

then ``--set task=custom --set task-kind=generation --set train-file=DIR/train.jsonl --set dev-file=DIR/dev.jsonl
--set partition=dirichlet --set partition-column=family`` (docs/instruction-tuning.md).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .data import load_task


@dataclass(frozen=True)
class Family:
    """A task family: its presets, instruction templates, and how a row becomes (input, answer)."""

    name: str
    tasks: tuple[str, ...]
    templates: tuple[str, ...] | dict[str, tuple[str, ...]]  # one set, or one per task
    render: Callable[[str, dict], tuple[str, str]]  # (task, example) -> (input, answer)

    def template(self, task: str, rng: random.Random) -> str:
        return rng.choice(self.templates[task] if isinstance(self.templates, dict) else self.templates)


def _yes_no(task: str, ex: dict) -> str:
    return "yes" if ex["label"] == {"rte": 0, "superglue-rte": 0, "mrpc": 1, "cola": 1, "boolq": 1}[task] else "no"


def _pair(task: str, ex: dict) -> tuple[str, str]:
    if task == "cb":
        return f"Premise: {ex['text_a']}\nHypothesis: {ex['text_b']}", ("yes", "no", "maybe")[ex["label"]]
    return f"Premise: {ex['text_a']}\nHypothesis: {ex['text_b']}", _yes_no(task, ex)


FAMILIES = (
    Family("sentiment", ("sst2",), (
        "Is the sentiment of this movie review positive or negative?",
        "Classify the review as positive or negative.",
        "How does the reviewer feel about the movie? Answer positive or negative."),
        lambda task, ex: (ex["text_a"].strip(), ("negative", "positive")[ex["label"]])),
    Family("paraphrase", ("mrpc",), (
        "Do the two sentences mean the same thing? Answer yes or no.",
        "Is the second sentence a paraphrase of the first? Answer yes or no."),
        lambda task, ex: (f"Sentence 1: {ex['text_a']}\nSentence 2: {ex['text_b']}", _yes_no(task, ex))),
    Family("entailment", ("rte", "cb"), {  # RTE is two-way (entailed or not), CB three-way
        "rte": ("Does the premise imply the hypothesis? Answer yes or no.",
                "Read the premise. Must the hypothesis be true? Answer yes or no."),
        "cb": ("Does the premise imply the hypothesis? Answer yes, no, or maybe if it cannot be told.",
               "Read the premise. Is the hypothesis true? Answer yes, no or maybe.")},
        _pair),
    Family("acceptability", ("cola",), (
        "Is this sentence grammatically acceptable English? Answer yes or no.",
        "Would a native speaker accept this sentence as grammatical? Answer yes or no."),
        lambda task, ex: (ex["text_a"].strip(), _yes_no(task, ex))),
    Family("question-answering", ("boolq",), (
        "Answer the question about the passage with yes or no.",
        "Read the passage and answer the yes/no question."),
        lambda task, ex: (f"Passage: {ex['text_a']}\nQuestion: {ex['text_b']}?", _yes_no(task, ex))),
    Family("causal-reasoning", ("copa",), (
        "Which option completes the sentence more plausibly? Answer first or second.",
        "Pick the more likely continuation. Answer first or second."),
        lambda task, ex: (f"{ex['text_a']} ...\nFirst: {ex['choices'][0]}\nSecond: {ex['choices'][1]}",
                          ("first", "second")[ex["label"]])),
)


def build(data_dir: str | None, per_family: int, dev_per_family: int, seed: int) -> dict[str, list[dict]]:
    """``{"train": rows, "dev": rows}``: each family's rows drawn evenly from its tasks' train and dev splits (a
    task shipped without a train file: its dev file's 80/20 split), a template drawn per row; shuffled."""
    rng = random.Random(seed)
    out: dict[str, list[dict]] = {"train": [], "dev": []}
    for family in FAMILIES:
        for split, budget in (("train", per_family), ("dev", dev_per_family)):
            rows = []
            for task in family.tasks:
                train, dev, _ = load_task(task, data_dir)
                part = train if split == "train" else dev
                take = min(len(part), budget // len(family.tasks))
                for i in rng.sample(range(len(part)), take):
                    text, answer = family.render(task, part[i])
                    rows.append({"instruction": family.template(task, rng), "input": text, "output": answer,
                                 "family": family.name, "task": task})
            out[split] += rows
    for rows in out.values():
        rng.shuffle(rows)
    return out


def write(out_dir: str | Path, data_dir: str | None = None, per_family: int = 600, dev_per_family: int = 60,
          seed: int = 0) -> list[Path]:
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for split, rows in build(data_dir, per_family, dev_per_family, seed).items():
        path = folder / f"{split}.jsonl"
        part = path.with_name(path.name + ".part")
        part.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        part.replace(path)
        written.append(path)
    return written
