"""What a task is: where its rows come from, which columns hold the text(s), the label and (multiple choice) the
candidates, its kind and its metrics. GLUE and SuperGLUE are presets read from their original files; a user's
own data is the same spec built from the run config (``task = "custom"``, ``train-file``, ``text-columns``, ...).

Every task becomes a ``datasets.Dataset`` with ``text_a``, ``text_b`` (may be empty) and ``label`` (a class id,
a float score, or the index of the right candidate), plus ``choices`` (multiple choice) and ``group`` (when a
``partition-column`` is set). Every value is checked on the way in: a bad one is one error naming the file, the
row and the column.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from .readers import FileFormat, Records, RowError

Kind = Literal["classification", "regression", "multiple-choice", "generation"]
KINDS: tuple[Kind, ...] = ("classification", "regression", "multiple-choice", "generation")
METRICS = ("accuracy", "f1", "mcc", "pearson", "spearman", "mse", "exact_match", "perplexity")
DEFAULT_METRICS: dict[Kind, tuple[str, ...]] = {"classification": ("accuracy", "f1"),
                                                "regression": ("pearson", "spearman", "mse"),
                                                "multiple-choice": ("accuracy",),
                                                "generation": ("exact_match", "perplexity")}
_KIND_METRICS = {"classification": {"accuracy", "f1", "mcc"}, "regression": {"pearson", "spearman", "mse"},
                 "multiple-choice": {"accuracy"}, "generation": {"exact_match", "perplexity"}}
#: instruction tuning: an Alpaca record's columns, and a chat record's
ALPACA = ("instruction", "input", "output")
MESSAGES = "messages"
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class TaskSpec:
    """A task, declaratively. ``files``: ``(split, path)`` pairs, a path relative to ``folder`` under the data
    folder (presets) or absolute, a folder, or a glob (a user's files). ``labels``: the raw label values in id
    order; None: the sorted values of the training split (then fixed in the run config, so every node agrees)."""

    name: str
    kind: Kind
    text: tuple[str, ...]  # 1 column, or 2 (a pair); multiple choice: the context
    label: str = "label"
    choices: tuple[str, ...] = ()
    labels: tuple[str, ...] | None = None
    metrics: tuple[str, ...] = ()
    files: tuple[tuple[str, str], ...] = ()
    folder: str = ""
    fmt: FileFormat = FileFormat()
    hub: tuple[str, str] | None = None  # (dataset, config) for datasets.load_dataset
    hub_splits: tuple[tuple[str, str], ...] = (("train", "train"), ("dev", "validation"))
    hub_columns: tuple[tuple[str, str], ...] = ()  # (file column, hub column) where the hub names it otherwise
    render: str = ""  # a preset's own way of joining its columns: "copa", "wic"
    group: str = ""  # partition-column: a natural partition follows its values
    bad_rows: Literal["error", "skip"] = "error"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not self.metrics:
            object.__setattr__(self, "metrics", DEFAULT_METRICS[self.kind])
        wrong = [m for m in self.metrics if m not in _KIND_METRICS[self.kind]]
        if wrong:
            raise ValueError(f"task {self.name}: metric(s) {wrong} do not apply to {self.kind} (use "
                             f"{', '.join(sorted(_KIND_METRICS[self.kind]))})")
        if self.kind == "multiple-choice":
            if len(self.choices) < 2 or len(set(self.choices)) != len(self.choices):
                raise ValueError(f"task {self.name}: multiple choice needs at least 2 different choice-columns, got "
                                 f"{list(self.choices)}")
            if not self.text:
                raise ValueError(f"task {self.name}: multiple choice needs a context: text-columns names its column(s)")
        elif self.choices:
            raise ValueError(f"task {self.name}: choice-columns are for multiple choice; this task is a {self.kind}")
        elif self.kind == "generation":  # Alpaca records (instruction [, input], output) or chat records (messages)
            if not 1 <= len(self.text) <= 2:
                raise ValueError(f"task {self.name}: instruction tuning reads an instruction column (and an input "
                                 f"column): text-columns names one or two, got {list(self.text)}")
        elif not 1 <= len(self.text) <= (3 if self.render else 2):
            raise ValueError(f"task {self.name}: text-columns must name 1 column or 2 (a pair), got {list(self.text)}")
        if self.labels is not None and self.kind != "classification":
            raise ValueError(f"task {self.name}: labels are for a classification; this task is a {self.kind}")
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise ValueError(f"task {self.name}: labels {list(self.labels)} repeat a value")
        if self.kind == "classification" and self.labels is not None and len(self.labels) < 2:
            raise ValueError(f"task {self.name}: a classification needs at least 2 labels, got {list(self.labels)}")

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(s for s, _ in self.files) if self.files else tuple(s for s, _ in self.hub_splits)

    def file(self, split: str) -> str | None:
        return dict(self.files).get(split)

    def hub_split(self, split: str) -> str:
        return dict(self.hub_splits)[split]

    @property
    def num_outputs(self) -> int:
        """Width of the model's head: the classes; 1 for a score; 1 per candidate for multiple choice."""
        if self.kind == "classification":
            if self.labels is None:
                raise ValueError(f"task {self.name}: its labels are not known yet; set labels = 'a,b,...' (the "
                                 "command line infers them from the training file)")
            return len(self.labels)
        return 1

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.text, *self.choices, self.label, *((self.group,) if self.group else ()))

    @property
    def required(self) -> tuple[str, ...]:
        """The columns every row must have (instruction tuning: checked row by row, its two formats differ)."""
        return ((self.group,) if self.group else ()) if self.kind == "generation" else self.columns


# --- reading records into examples ------------------------------------------------------------------------

def _text(value: object, where: str, column: str) -> str:
    if not isinstance(value, str):
        raise RowError(f"{where}, column '{column}': expected text, got {type(value).__name__} {value!r}")
    if not value.strip():
        raise RowError(f"{where}, column '{column}': empty text")
    return value


def label_text(value: object) -> str | None:
    """A class label as text, the way it is written in files: ``True``, ``1``, ``positive``. None: not a label."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _score(value: object, where: str, column: str) -> float:
    try:
        if isinstance(value, bool):
            raise TypeError
        score = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise RowError(f"{where}, column '{column}': expected a number, got {value!r}") from None
    if not math.isfinite(score):
        raise RowError(f"{where}, column '{column}': expected a finite number, got {value!r}")
    return score


def _copa(texts: list[str], where: str, spec: TaskSpec) -> tuple[str, str]:
    """COPA's premise and question as one context that the candidates continue: "The man broke his toe because"."""
    premise, question = texts
    joiner = {"cause": "because", "effect": "so"}.get(question.strip())
    if joiner is None:
        raise RowError(f"{where}, column '{spec.text[1]}': expected 'cause' or 'effect', got {question!r}")
    return f"{premise.strip().rstrip('.')} {joiner}", ""


def _wic(texts: list[str], where: str, spec: TaskSpec) -> tuple[str, str]:
    """WiC: the word, then the two sentences as a pair ("bank: He sat on the bank.", "The bank closed.")."""
    word, first, second = texts
    return f"{word.strip()}: {first}", second


RENDERS: dict[str, Callable[[list[str], str, TaskSpec], tuple[str, str]]] = {"copa": _copa, "wic": _wic}


def _instruction(spec: TaskSpec, record: dict, at: str) -> tuple[list[dict], str]:
    """An instruction-tuning row as (the prompt's messages, the response): a chat record's messages up to the last
    one, which must be the assistant's; or an Alpaca record's instruction (and input) as one user message."""
    if record.get(MESSAGES) is not None and record.get(spec.text[0]) is None:  # Parquet: absent columns are nulls
        messages = record[MESSAGES]
        if not isinstance(messages, list) or len(messages) < 2:
            raise RowError(f"{at}, column '{MESSAGES}': expected a list of at least two messages (a question and "
                           f"the answer), got {type(messages).__name__}")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise RowError(f"{at}, column '{MESSAGES}': message {i} must be {{'role': one of {', '.join(ROLES)}, "
                               f"'content': text}}, got {m!r}"[:300])
        if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
            raise RowError(f"{at}, column '{MESSAGES}': the last message must be the assistant's answer, not empty")
        return [{"role": m["role"], "content": m["content"]} for m in messages[:-1]], messages[-1]["content"]
    missing = [c for c in (spec.text[0], spec.label) if c not in record]
    if missing:
        raise RowError(f"{at}: no column '{missing[0]}' (an instruction record has {', '.join(ALPACA)} or "
                       f"'{MESSAGES}'; this one has {', '.join(map(str, record)) or 'none'})")
    instruction = _text(record[spec.text[0]], at, spec.text[0])
    extra = record.get(spec.text[1]) if len(spec.text) > 1 else None
    if extra is not None and not isinstance(extra, str):
        raise RowError(f"{at}, column '{spec.text[1]}': expected text, got {type(extra).__name__} {extra!r}")
    user = instruction.strip() + (f"\n\n{extra.strip()}" if extra and extra.strip() else "")
    return [{"role": "user", "content": user}], _text(record[spec.label], at, spec.label)


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text[:2] != text[:2].upper() else text


@dataclass
class Examples:
    """Checked rows of one split, labels still as written (mapped to ids once the label set is known)."""

    text_a: list[str] = field(default_factory=list)
    text_b: list[str] = field(default_factory=list)
    choices: list[list[str]] = field(default_factory=list)
    label: list = field(default_factory=list)
    group: list[str] = field(default_factory=list)
    where: list[tuple[str, str]] = field(default_factory=list)  # (file, "line 12") for every row
    skipped: list[str] = field(default_factory=list)  # bad-rows = skip: what was wrong with each skipped row
    blank: int = 0

    def add(self, spec: TaskSpec, path: str, where: str, record: dict) -> None:
        at = f"{path} {where}"
        missing = [c for c in spec.required if c not in record]
        if missing:
            raise RowError(f"{at}: no column '{missing[0]}' (the record has {', '.join(map(str, record)) or 'none'})")
        if spec.kind == "generation":
            prompt, response = _instruction(spec, record, at)
            self._append(json.dumps(prompt, ensure_ascii=False), "", [], response, spec, record, at, path, where)
            return
        texts = [_text(record[c], at, c) for c in spec.text]
        if spec.render:
            a, b = RENDERS[spec.render](texts, at, spec)
        elif spec.kind == "multiple-choice":
            a, b = " ".join(t.strip() for t in texts), ""
        else:
            a, b = texts[0], texts[1] if len(texts) > 1 else ""
        value = record[spec.label]
        if spec.kind == "regression":
            label = _score(value, at, spec.label)
        elif spec.kind == "multiple-choice":
            label = label_text(value)
            if label is None or not re.fullmatch(r"[0-9]+", label) or int(label) >= len(spec.choices):
                raise RowError(f"{at}, column '{spec.label}': expected the index of the right choice, 0.."
                               f"{len(spec.choices) - 1}, got {value!r}")
            label = int(label)
        else:
            label = label_text(value)
            if label is None:
                raise RowError(f"{at}, column '{spec.label}': expected a label, got {value!r}")
        choices = [_text(record[c], at, c) for c in spec.choices]
        if spec.render == "copa":
            choices = [_lower_first(c.strip()) for c in choices]
        self._append(a, b, choices, label, spec, record, at, path, where)

    def _append(self, a: str, b: str, choices: list[str], label, spec: TaskSpec, record: dict, at: str, path: str,
                where: str) -> None:
        group = label_text(record[spec.group]) if spec.group else ""
        if group is None:
            raise RowError(f"{at}, column '{spec.group}': expected a value to partition by, got {record[spec.group]!r}")
        self.text_a.append(a)
        self.text_b.append(b)
        self.choices.append(choices)
        self.label.append(label)
        self.group.append(group)
        self.where.append((path, where))

    def read(self, spec: TaskSpec, records: Records) -> None:
        """Every record of one file; a missing column is found from the header before any row is read."""
        if records.columns is not None:
            missing = [c for c in spec.required if c not in records.columns]
            if missing:
                raise ValueError(f"{records.path}: no column '{missing[0]}' (columns: {', '.join(records.columns)})")
        for where, record in records.rows:
            try:
                if isinstance(record, RowError):
                    raise record
                self.add(spec, str(records.path), where, record)
            except RowError as e:
                if spec.bad_rows != "skip":
                    raise ValueError(str(e)) from None
                self.skipped.append(str(e))
        self.blank += len(records.blank)

    def notes(self, split: str) -> list[str]:
        """What was skipped, said once (never silent)."""
        out = []
        if self.skipped and not self.label:
            out.append(f"{split}: every row was bad and skipped ({len(self.skipped)}); first: {self.skipped[0]}")
        if self.blank:
            out.append(f"{split}: skipped {self.blank} blank line(s)")
        if self.skipped:
            out.append(f"{split}: skipped {len(self.skipped)} bad row(s) (bad-rows = skip); first: {self.skipped[0]}")
        return out


def infer_labels(raw: Iterable[str]) -> tuple[str, ...]:
    """The label set of a training split, sorted (numerically when every label is an integer)."""
    values = set(raw)
    if all(re.fullmatch(r"-?[0-9]+", v) for v in values):
        return tuple(sorted(values, key=int))
    return tuple(sorted(values))


def label_ids(spec: TaskSpec, examples: Examples, split: str) -> list:
    """Labels as the model reads them: class ids (checked against the task's label set), scores, choice ids."""
    if spec.kind != "classification":
        return examples.label
    index = {name: i for i, name in enumerate(spec.labels or ())}
    out = []
    for value, (path, where) in zip(examples.label, examples.where, strict=True):
        if value not in index:
            unknown = sorted(set(examples.label) - index.keys())
            raise ValueError(f"{path} {where}, column '{spec.label}': unknown label {value!r} for task {spec.name} "
                             f"(labels: {list(spec.labels or ())}; not among them in this {split} split: "
                             f"{unknown[:5]})")
        out.append(index[value])
    return out


# --- metrics ----------------------------------------------------------------------------------------------

def compute_metrics(spec: TaskSpec, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's metrics: ``accuracy``, ``f1`` (binary: class 1; else macro), ``mcc``; regression: ``pearson``,
    ``spearman`` and ``mse`` (0 where undefined: a constant prediction has no correlation)."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    out: dict[str, float] = {}
    if spec.kind == "regression":
        from scipy.stats import pearsonr, spearmanr

        constant = len(labels) < 2 or np.ptp(predictions) == 0 or np.ptp(labels) == 0
        for name, fn in (("pearson", pearsonr), ("spearman", spearmanr)):
            if name in spec.metrics:
                out[name] = 0.0 if constant else float(fn(predictions, labels)[0])
        out["mse"] = float(np.mean((predictions - labels) ** 2)) if len(labels) else 0.0
        return out
    out["accuracy"] = float((predictions == labels).mean()) if len(labels) else 0.0
    if "f1" in spec.metrics:
        n = len(spec.labels or ()) or int(max(labels.max(initial=0), predictions.max(initial=0))) + 1
        classes = [1] if n == 2 else list(range(n))
        f1s = []
        for c in classes:
            tp = float(((predictions == c) & (labels == c)).sum())
            denom = float((predictions == c).sum() + (labels == c).sum())
            f1s.append(2 * tp / denom if denom else 0.0)
        out["f1"] = float(np.mean(f1s))
    if "mcc" in spec.metrics:  # Matthews (Gorodkin's K classes; the usual formula for 2)
        classes = np.union1d(labels, predictions)
        true = np.array([(labels == c).sum() for c in classes], dtype=np.float64)
        pred = np.array([(predictions == c).sum() for c in classes], dtype=np.float64)
        correct, total = float((predictions == labels).sum()), float(len(labels))
        denom = np.sqrt((total ** 2 - (pred ** 2).sum()) * (total ** 2 - (true ** 2).sum()))
        out["mcc"] = float((correct * total - (pred * true).sum()) / denom) if denom else 0.0
    return out


# --- presets: GLUE and SuperGLUE from their original files ---------------------------------------------------

_GLUE_TSV = FileFormat("tsv", quoting=False)  # GLUE's .tsv files quote nothing: a '"' is part of the text
_GLUE = (("train", "train.tsv"), ("dev", "dev.tsv"))
_SUPERGLUE = (("train", "train.jsonl"), ("dev", "val.jsonl"))
_JSONL = FileFormat("jsonl")
_PAIR = ("entailment", "not_entailment")
_BINARY = ("0", "1")
_BOOL = ("False", "True")
_GLUE_HUB, _SUPERGLUE_HUB = "nyu-mll/glue", "aps/super_glue"


def _glue(name: str, folder: str, text: tuple[str, ...], label: str, labels: tuple[str, ...] | None,
          metrics: tuple[str, ...], hub_columns: tuple[tuple[str, str], ...] = (), **kw) -> TaskSpec:
    kind = "regression" if labels is None else "classification"
    return TaskSpec(name, kind, text, label, labels=labels, metrics=metrics, files=kw.pop("files", _GLUE),
                    folder=f"glue/{folder}", fmt=kw.pop("fmt", _GLUE_TSV), hub=(_GLUE_HUB, kw.pop("hub", name)),
                    hub_columns=(*hub_columns, *(((label, "label"),) if label != "label" else ())), **kw)


def _superglue(name: str, folder: str, text: tuple[str, ...], labels: tuple[str, ...] | None,
               metrics: tuple[str, ...] = ("accuracy",), **kw) -> TaskSpec:
    return TaskSpec(name, kw.pop("kind", "classification"), text, labels=labels, metrics=metrics, files=_SUPERGLUE,
                    folder=f"superglue/{folder}", fmt=_JSONL, hub=(_SUPERGLUE_HUB, kw.pop("hub", name)), **kw)


_MNLI_FILES = {"mnli": "dev_matched.tsv", "mnli-mm": "dev_mismatched.tsv"}
_MNLI_HUB = {"mnli": "validation_matched", "mnli-mm": "validation_mismatched"}

PRESETS: dict[str, TaskSpec] = {t.name: t for t in [
    _glue("cola", "CoLA", ("sentence",), "label", _BINARY, ("mcc", "accuracy"),
          fmt=FileFormat("tsv", quoting=False, columns=("source", "label", "original_label", "sentence"))),
    _glue("sst2", "SST-2", ("sentence",), "label", _BINARY, ("accuracy",)),
    _glue("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", _BINARY, ("f1", "accuracy"),
          (("#1 String", "sentence1"), ("#2 String", "sentence2"))),
    _glue("stsb", "STS-B", ("sentence1", "sentence2"), "score", None, ("pearson", "spearman", "mse")),
    _glue("qqp", "QQP", ("question1", "question2"), "is_duplicate", _BINARY, ("f1", "accuracy"),
          bad_rows="skip"),  # the GLUE release has rows with missing fields; the reference processors skip them
    *(_glue(name, "MNLI", ("sentence1", "sentence2"), "gold_label", ("entailment", "neutral", "contradiction"),
            ("accuracy",), (("sentence1", "premise"), ("sentence2", "hypothesis")), hub="mnli",
            files=(("train", "train.tsv"), ("dev", dev)), hub_splits=(("train", "train"), ("dev", _MNLI_HUB[name])))
      for name, dev in _MNLI_FILES.items()),
    _glue("qnli", "QNLI", ("question", "sentence"), "label", _PAIR, ("accuracy",)),
    _glue("rte", "RTE", ("sentence1", "sentence2"), "label", _PAIR, ("accuracy",)),
    _glue("wnli", "WNLI", ("sentence1", "sentence2"), "label", _BINARY, ("accuracy",)),
    _superglue("boolq", "BoolQ", ("passage", "question"), _BOOL),
    _superglue("cb", "CB", ("premise", "hypothesis"), ("entailment", "contradiction", "neutral"), ("accuracy", "f1")),
    _superglue("copa", "COPA", ("premise", "question"), None, kind="multiple-choice", choices=("choice1", "choice2"),
               render="copa"),
    _superglue("superglue-rte", "RTE", ("premise", "hypothesis"), _PAIR, hub="rte"),
    _superglue("wic", "WiC", ("word", "sentence1", "sentence2"), _BOOL, render="wic"),
]}
CUSTOM = "custom"


def _names(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def task_of(cfg) -> TaskSpec:
    """The run's task: a preset (``task = "sst2"``), or ``task = "custom"`` built from the run config's data keys.
    ``partition-column`` and ``bad-rows`` apply to both."""
    if cfg.task != CUSTOM:
        if cfg.task not in PRESETS:
            raise ValueError(f"unknown task {cfg.task!r}; presets: {', '.join(PRESETS)}, or {CUSTOM!r} for your own")
        spec = PRESETS[cfg.task]
        bad_rows = spec.bad_rows if cfg.bad_rows == "auto" else cfg.bad_rows
        return replace(spec, group=cfg.partition_column, bad_rows=bad_rows)
    files = tuple((split, path) for split, path in (("train", cfg.train_file), ("dev", cfg.dev_file)) if path)
    kind = cfg.task_kind if cfg.task_kind != "auto" else "multiple-choice" if cfg.choice_columns else "classification"
    text, label = _names(cfg.text_columns), cfg.label_column
    if kind == "generation":  # an Alpaca record's columns unless named otherwise (a chat record: 'messages')
        text = text if cfg.text_columns != "text" else ALPACA[:2]
        label = label if cfg.label_column != "label" else ALPACA[2]
    return TaskSpec(
        cfg.task_name or CUSTOM, kind, text, label, choices=_names(cfg.choice_columns),
        labels=_names(cfg.labels) or None, metrics=_names(cfg.metrics), files=files,
        fmt=FileFormat(None if cfg.data_format == "auto" else cfg.data_format),
        hub=(cfg.hub_dataset, cfg.hub_config) if cfg.hub_dataset else None,
        hub_splits=(("train", cfg.hub_train_split), ("dev", cfg.hub_dev_split)), group=cfg.partition_column,
        bad_rows="error" if cfg.bad_rows == "auto" else cfg.bad_rows)
