"""GLUE / SuperGLUE tasks: reading the original files from a local folder (or the hub), and metrics.

The local layout is that of ``shared/data`` (``glue/SST-2/train.tsv``, ``superglue/CB/val.jsonl``, ...).
Every task becomes a ``datasets.Dataset`` with columns ``text_a``, ``text_b`` (may be empty) and
``label`` (int).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import Dataset

DATA_DIR_ENV = "FEDTT_DATA_DIR"


@dataclass(frozen=True)
class TaskSpec:
    name: str
    labels: tuple[str, ...]  # label names in id order (raw values as they appear in the files)
    folder: str  # relative to the data dir
    files: dict[str, str]  # split -> file name
    reader: Callable[[Path], list[dict]]
    metrics: tuple[str, ...]  # first one is the task's main metric
    hub: tuple[str, str]  # (dataset, config) for datasets.load_dataset
    hub_fields: tuple[str, str | None]  # text_a, text_b column names on the hub


def _tsv(path: Path, header: bool = True) -> list[list[str]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return rows[1:] if header else rows


def _jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _read_sst2(p: Path) -> list[dict]:
    return [{"text_a": r[0], "text_b": "", "label": r[1]} for r in _tsv(p)]


def _read_mrpc(p: Path) -> list[dict]:
    return [{"text_a": r[3], "text_b": r[4], "label": r[0]} for r in _tsv(p)]


def _read_pair_tsv(p: Path) -> list[dict]:  # RTE, QNLI: index, text_a, text_b, label
    return [{"text_a": r[1], "text_b": r[2], "label": r[3]} for r in _tsv(p)]


def _read_cola(p: Path) -> list[dict]:
    return [{"text_a": r[3], "text_b": "", "label": r[1]} for r in _tsv(p, header=False)]


def _read_boolq(p: Path) -> list[dict]:
    return [{"text_a": r["passage"], "text_b": r["question"], "label": str(r["label"])} for r in _jsonl(p)]


def _read_premise_hypothesis(p: Path) -> list[dict]:  # CB, SuperGLUE RTE
    return [{"text_a": r["premise"], "text_b": r["hypothesis"], "label": r["label"]} for r in _jsonl(p)]


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec("sst2", ("0", "1"), "glue/SST-2", {"train": "train.tsv", "dev": "dev.tsv"}, _read_sst2,
                 ("accuracy",), ("nyu-mll/glue", "sst2"), ("sentence", None)),
        TaskSpec("mrpc", ("0", "1"), "glue/MRPC", {"train": "train.tsv", "dev": "dev.tsv"}, _read_mrpc,
                 ("f1", "accuracy"), ("nyu-mll/glue", "mrpc"), ("sentence1", "sentence2")),
        TaskSpec("rte", ("entailment", "not_entailment"), "glue/RTE", {"train": "train.tsv", "dev": "dev.tsv"},
                 _read_pair_tsv, ("accuracy",), ("nyu-mll/glue", "rte"), ("sentence1", "sentence2")),
        TaskSpec("qnli", ("entailment", "not_entailment"), "glue/QNLI", {"train": "train.tsv", "dev": "dev.tsv"},
                 _read_pair_tsv, ("accuracy",), ("nyu-mll/glue", "qnli"), ("question", "sentence")),
        TaskSpec("cola", ("0", "1"), "glue/CoLA", {"train": "train.tsv", "dev": "dev.tsv"}, _read_cola,
                 ("mcc", "accuracy"), ("nyu-mll/glue", "cola"), ("sentence", None)),
        TaskSpec("boolq", ("False", "True"), "superglue/BoolQ", {"train": "train.jsonl", "dev": "val.jsonl"},
                 _read_boolq, ("accuracy",), ("aps/super_glue", "boolq"), ("passage", "question")),
        TaskSpec("cb", ("entailment", "contradiction", "neutral"), "superglue/CB",
                 {"train": "train.jsonl", "dev": "val.jsonl"}, _read_premise_hypothesis, ("accuracy", "f1"),
                 ("aps/super_glue", "cb"), ("premise", "hypothesis")),
        TaskSpec("superglue-rte", ("entailment", "not_entailment"), "superglue/RTE",
                 {"train": "train.jsonl", "dev": "val.jsonl"}, _read_premise_hypothesis, ("accuracy",),
                 ("aps/super_glue", "rte"), ("premise", "hypothesis")),
    ]
}


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


def default_data_dir() -> Path | None:
    """``$FEDTT_DATA_DIR``, else ``shared/data`` next to this checkout when present, else None (hub)."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env)
    candidate = Path(__file__).resolve().parents[2] / "shared" / "data"
    return candidate if candidate.is_dir() else None


def _to_dataset(task: TaskSpec, rows: list[dict], source: str) -> Dataset:
    index = {name: i for i, name in enumerate(task.labels)}
    bad = sorted({r["label"] for r in rows if r["label"] not in index})
    if bad:
        raise ValueError(f"{source}: unexpected label value(s) {bad[:5]} for task {task.name} "
                         f"(expected one of {list(task.labels)})")
    return Dataset.from_dict({
        "text_a": [r["text_a"] for r in rows],
        "text_b": [r["text_b"] for r in rows],
        "label": [index[r["label"]] for r in rows],
    })


def load_split(task_name: str, split: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """One split (``train`` or ``dev``) of a task, from ``data_dir`` when given (or found), else the hub.

    A local folder that lacks the split's file is an error naming the file (no silent hub fallback).
    """
    task = get_task(task_name)
    if split not in task.files:
        raise ValueError(f"split must be one of {list(task.files)}, got {split!r}")
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    if data_dir is not None:
        path = data_dir / task.folder / task.files[split]
        if not path.is_file():
            raise FileNotFoundError(f"task {task.name}: no {split} file at {path} (data-dir={data_dir})")
        return _to_dataset(task, task.reader(path), str(path))
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise FileNotFoundError(
            f"task {task.name}: no data folder given or found (data-dir, ${DATA_DIR_ENV}, ../shared/data) and the "
            "hub is offline (HF_HUB_OFFLINE=1); point data-dir at a folder laid out like GLUE/SuperGLUE")
    from datasets import load_dataset  # the hub path, for machines with network access

    hub_split = "validation" if split == "dev" else "train"
    ds = load_dataset(*task.hub, split=hub_split)
    a, b = task.hub_fields
    return Dataset.from_dict({
        "text_a": ds[a], "text_b": ds[b] if b else [""] * len(ds), "label": ds["label"],
    })


def compute_metrics(task_name: str, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's metrics by name: ``accuracy``, ``f1`` (binary: positive class 1; else macro), ``mcc``."""
    task = get_task(task_name)
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    out = {"accuracy": float((predictions == labels).mean()) if len(labels) else 0.0}
    if "f1" in task.metrics:
        classes = [1] if len(task.labels) == 2 else list(range(len(task.labels)))
        f1s = []
        for c in classes:
            tp = float(((predictions == c) & (labels == c)).sum())
            denom = float((predictions == c).sum() + (labels == c).sum())
            f1s.append(2 * tp / denom if denom else 0.0)
        out["f1"] = float(np.mean(f1s))
    if "mcc" in task.metrics:
        tp = float(((predictions == 1) & (labels == 1)).sum())
        tn = float(((predictions == 0) & (labels == 0)).sum())
        fp = float(((predictions == 1) & (labels == 0)).sum())
        fn = float(((predictions == 0) & (labels == 1)).sum())
        denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        out["mcc"] = float((tp * tn - fp * fn) / denom) if denom else 0.0
    return out


#: Tasks shipped here without a train split get one carved from their dev/val file with this fixed
#: seed (independent of a run's seed, so every run is scored on the same held-out part).
DEV_SPLIT_SEED = 1234
DEV_SPLIT_TRAIN_FRACTION = 0.8


def load_task(task_name: str, data_dir: str | os.PathLike | None = None) -> tuple[Dataset, Dataset, str | None]:
    """``(train, dev, note)``. When a local folder has the dev file but no train file (QNLI and BoolQ in
    shared/data), the dev file is split 80/20 deterministically and ``note`` says so."""
    dev = load_split(task_name, "dev", data_dir)
    try:
        return load_split(task_name, "train", data_dir), dev, None
    except FileNotFoundError:
        if data_dir is None and default_data_dir() is None:
            raise
    parts = dev.train_test_split(train_size=DEV_SPLIT_TRAIN_FRACTION, seed=DEV_SPLIT_SEED, shuffle=True)
    note = (f"task {task_name}: no local train file, so its dev file ({len(dev)} rows) was split "
            f"{DEV_SPLIT_TRAIN_FRACTION:.0%}/{1 - DEV_SPLIT_TRAIN_FRACTION:.0%} (seed {DEV_SPLIT_SEED}) into "
            f"train ({len(parts['train'])}) and test ({len(parts['test'])}); the test part is reported as dev")
    return parts["train"], parts["test"], note


@dataclass(frozen=True)
class PartitionSpec:
    kind: str  # iid | dirichlet | pathological
    num_partitions: int
    alpha: float = 0.5
    classes_per_client: int = 1
    seed: int = 0


def make_partitioner(spec: PartitionSpec):
    """A flwr-datasets partitioner for the spec (deterministic by seed)."""
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

    if spec.num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {spec.num_partitions}")
    if spec.kind == "iid":
        return IidPartitioner(num_partitions=spec.num_partitions)
    if spec.kind == "dirichlet":
        return DirichletPartitioner(num_partitions=spec.num_partitions, partition_by="label", alpha=spec.alpha,
                                    min_partition_size=2, self_balancing=False, seed=spec.seed)
    if spec.kind == "pathological":
        return PathologicalPartitioner(num_partitions=spec.num_partitions, partition_by="label",
                                       num_classes_per_partition=spec.classes_per_client,
                                       class_assignment_mode="deterministic", seed=spec.seed)
    raise ValueError(f"unknown partition {spec.kind!r}: use iid, dirichlet or pathological")


def check_partition_id(spec: PartitionSpec, partition_id: int) -> None:
    if not 0 <= partition_id < spec.num_partitions:
        raise ValueError(f"partition-id {partition_id} is outside 0..{spec.num_partitions - 1}")


def partition(dataset: Dataset, spec: PartitionSpec, partition_id: int) -> Dataset:
    """One client's share of ``dataset``."""
    check_partition_id(spec, partition_id)
    p = make_partitioner(spec)
    p.dataset = dataset
    return p.load_partition(partition_id)
