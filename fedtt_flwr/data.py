"""GLUE / SuperGLUE tasks: where their data comes from, reading the original files, and metrics.

The local layout is that of ``shared/data`` (``glue/SST-2/train.tsv``, ``superglue/CB/val.jsonl``, ...).
Every task becomes a ``datasets.Dataset`` with columns ``text_a``, ``text_b`` (may be empty) and
``label`` (int). ``python -m fedtt_flwr.data download TASK --out DIR`` writes that layout from the hub.
"""

from __future__ import annotations

import argparse
import codecs
import csv
import io
import json
import os
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
from datasets import Dataset

DATA_DIR_ENV = "FEDTT_DATA_DIR"
#: ``shared/data`` next to this checkout (``../shared/data`` from the repository root); a module constant
#: so that tests can point it elsewhere.
SHARED_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
#: The hub probe's limit: long enough for a slow link, short enough that a machine without network
#: fails within seconds instead of hanging in DNS or TCP timeouts.
HUB_PROBE_TIMEOUT_S = 3.0
_TRUE = {"1", "ON", "YES", "TRUE"}


class _Rows(NamedTuple):
    """A file's rows as columns (raw label strings), with each row's 1-based line for error messages."""

    text_a: list[str]
    text_b: list[str]
    label: list[str]
    lines: Sequence[int]


def _read_text(path: Path) -> str:
    """The whole file as text, a leading BOM dropped. One decode is several times faster than decoding
    line by line, and on failure the error's byte offset still gives the line and column."""
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        # everything before e.start decoded fine; count lines the way universal newlines do
        before = data[:e.start].decode("utf-8").replace("\r\n", "\n").replace("\r", "\n").split("\n")
        raise ValueError(f"{path} line {len(before)}, column {len(before[-1]) + 1} (byte 0x{data[e.start]:02x}): "
                         "not valid UTF-8") from None


@dataclass(frozen=True)
class TsvFormat:
    """A GLUE .tsv file: tab-separated, no quoting (quotes are text), one row per line."""

    columns: tuple[str, ...]  # the file's columns, in order
    text_a: str
    text_b: str | None
    label: str
    header: bool = True

    def read(self, path: Path) -> _Rows:
        lines = io.StringIO(_read_text(path), newline="")
        skip = 1 if self.header else 0
        rows = list(csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE))[skip:]
        first_line = skip + 1
        a, label = self.columns.index(self.text_a), self.columns.index(self.label)
        b = self.columns.index(self.text_b) if self.text_b else None
        try:
            return _Rows([r[a] for r in rows], [r[b] for r in rows] if b is not None else [""] * len(rows),
                         [r[label] for r in rows], range(first_line, first_line + len(rows)))
        except IndexError:
            need = max(a, label, -1 if b is None else b) + 1
            i = next(i for i, r in enumerate(rows) if len(r) < need)
            raise ValueError(f"{path} line {first_line + i}: expected at least {need} tab-separated fields "
                             f"({', '.join(self.columns[:need])}), got {len(rows[i])}") from None

    def write(self, path: Path, rows: _Rows) -> None:
        with open(path, "w", encoding="utf-8", newline="") as f:
            if self.header:
                f.write("\t".join(self.columns) + "\n")
            for i, (a, b, label) in enumerate(zip(rows.text_a, rows.text_b, rows.label, strict=True)):
                values = {self.text_a: a, self.label: label, **({self.text_b: b} if self.text_b else {})}
                fields = [values.get(c, "") for c in self.columns]
                if any("\t" in v or "\n" in v or "\r" in v for v in fields):
                    raise ValueError(f"{path}: row {i} has a tab or line break in its text, which a GLUE .tsv "
                                     "(no quoting) cannot hold")
                f.write("\t".join(fields) + "\n")


@dataclass(frozen=True)
class JsonlFormat:
    """A SuperGLUE .jsonl file: one JSON object per line, blank lines skipped; labels compared as ``str``."""

    text_a: str
    text_b: str
    label: str = "label"
    bool_labels: bool = False  # labels are JSON true/false (BoolQ), written back as such

    def read(self, path: Path) -> _Rows:
        out = _Rows([], [], [], [])
        for n, line in enumerate(io.StringIO(_read_text(path), newline=None), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line.rstrip("\n"))  # without it, an error at the end would be on "line 2"
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {n}: invalid JSON ({e.msg} at column {e.colno})") from None
            try:
                a, b, label = record[self.text_a], record[self.text_b], record[self.label]
            except KeyError as e:
                raise ValueError(f"{path} line {n}: no field {e.args[0]!r}") from None
            except (TypeError, IndexError):  # a list, string or number instead of an object
                raise ValueError(f"{path} line {n}: expected a JSON object, got {type(record).__name__}") from None
            if not (isinstance(a, str) and isinstance(b, str)):
                field, value = (self.text_a, a) if not isinstance(a, str) else (self.text_b, b)
                raise ValueError(f"{path} line {n}: field {field!r} is {type(value).__name__}, expected a string")
            out.text_a.append(a)
            out.text_b.append(b)
            out.label.append(str(label))
            out.lines.append(n)
        return out

    def write(self, path: Path, rows: _Rows) -> None:
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            for i, (a, b, label) in enumerate(zip(rows.text_a, rows.text_b, rows.label, strict=True)):
                value: str | bool = label == "True" if self.bool_labels else label
                f.write(json.dumps({self.text_a: a, self.text_b: b, self.label: value, "idx": i},
                                   ensure_ascii=False) + "\n")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    labels: tuple[str, ...]  # label names in id order (raw values as they appear in the files)
    folder: str  # relative to the data dir
    files: dict[str, str]  # split -> file name
    file_format: TsvFormat | JsonlFormat
    metrics: tuple[str, ...]  # first one is the task's main metric
    hub: tuple[str, str]  # (dataset, config) for datasets.load_dataset
    hub_fields: tuple[str, str | None]  # text_a, text_b column names on the hub


_GLUE_FILES = {"train": "train.tsv", "dev": "dev.tsv"}
_SUPERGLUE_FILES = {"train": "train.jsonl", "dev": "val.jsonl"}
_PAIR = ("entailment", "not_entailment")

TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec("sst2", ("0", "1"), "glue/SST-2", _GLUE_FILES,
                 TsvFormat(("sentence", "label"), "sentence", None, "label"),
                 ("accuracy",), ("nyu-mll/glue", "sst2"), ("sentence", None)),
        TaskSpec("mrpc", ("0", "1"), "glue/MRPC", _GLUE_FILES,
                 TsvFormat(("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"), "#1 String", "#2 String",
                           "Quality"),
                 ("f1", "accuracy"), ("nyu-mll/glue", "mrpc"), ("sentence1", "sentence2")),
        TaskSpec("rte", _PAIR, "glue/RTE", _GLUE_FILES,
                 TsvFormat(("index", "sentence1", "sentence2", "label"), "sentence1", "sentence2", "label"),
                 ("accuracy",), ("nyu-mll/glue", "rte"), ("sentence1", "sentence2")),
        TaskSpec("qnli", _PAIR, "glue/QNLI", _GLUE_FILES,
                 TsvFormat(("index", "question", "sentence", "label"), "question", "sentence", "label"),
                 ("accuracy",), ("nyu-mll/glue", "qnli"), ("question", "sentence")),
        TaskSpec("cola", ("0", "1"), "glue/CoLA", _GLUE_FILES,
                 TsvFormat(("source", "label", "original_label", "sentence"), "sentence", None, "label", header=False),
                 ("mcc", "accuracy"), ("nyu-mll/glue", "cola"), ("sentence", None)),
        TaskSpec("boolq", ("False", "True"), "superglue/BoolQ", _SUPERGLUE_FILES,
                 JsonlFormat("passage", "question", bool_labels=True), ("accuracy",), ("aps/super_glue", "boolq"),
                 ("passage", "question")),
        TaskSpec("cb", ("entailment", "contradiction", "neutral"), "superglue/CB", _SUPERGLUE_FILES,
                 JsonlFormat("premise", "hypothesis"), ("accuracy", "f1"), ("aps/super_glue", "cb"),
                 ("premise", "hypothesis")),
        TaskSpec("superglue-rte", _PAIR, "superglue/RTE", _SUPERGLUE_FILES, JsonlFormat("premise", "hypothesis"),
                 ("accuracy",), ("aps/super_glue", "rte"), ("premise", "hypothesis")),
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
    return SHARED_DATA_DIR if SHARED_DATA_DIR.is_dir() else None


@dataclass(frozen=True)
class DataSource:
    """Where a task's data is read from, resolved once so that every reader and message agrees on it."""

    kind: Literal["local", "hub"]  # local: a folder in the GLUE/SuperGLUE layout
    description: str  # for messages: "data-dir /x", "the Hugging Face hub (nyu-mll/glue sst2, cached)", ...
    folder: Path | None = None  # local only
    cached: bool = False  # hub only: in the local datasets cache, so it loads without the network


def _split_path(task: TaskSpec, folder: Path, split: str) -> Path:
    return folder / task.folder / task.files[split]


def _has_task(task: TaskSpec, folder: Path) -> bool:
    return any(_split_path(task, folder, split).is_file() for split in task.files)


def _layout(task: TaskSpec) -> str:
    return ", ".join(f"{task.folder}/{name}" for name in task.files.values())


def _named_folder(task: TaskSpec, folder: Path, description: str) -> DataSource:
    """A folder the user named must hold the task: a typo is an error, not a silent download from the hub."""
    if not folder.is_dir():
        raise FileNotFoundError(f"task {task.name}: {description} is not a folder")
    if not _has_task(task, folder):
        raise FileNotFoundError(f"task {task.name}: {description} has none of the task's files ({_layout(task)})")
    return DataSource("local", description, folder.resolve())


def _offline_vars() -> list[str]:
    """The variables that force Hugging Face's offline mode (``HF_HUB_OFFLINE=1`` and the like), if any."""
    return [f"{v}={os.environ[v]}" for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
            if os.environ.get(v, "").upper() in _TRUE]


def _datasets_cache() -> Path:
    """The datasets cache, from the environment as it is now (datasets itself reads it once, at import)."""
    if os.environ.get("HF_DATASETS_CACHE"):
        return Path(os.environ["HF_DATASETS_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "datasets"
    from datasets import config

    return Path(config.HF_DATASETS_CACHE)


def _hub_cached(task: TaskSpec) -> bool:
    """Whether ``load_dataset`` would find the task in the cache offline (its layout:
    ``<namespace>___<name>/<config>/<version>/<hash>/dataset_info.json``); a glob, so no import or network."""
    name, config = task.hub
    return any((_datasets_cache() / name.replace("/", "___") / config).glob("*/*/dataset_info.json"))


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def _hub_problem(endpoint: str) -> str | None:
    """None when ``endpoint`` answers below HTTP 500 within ``HUB_PROBE_TIMEOUT_S``, else why not. The request
    runs in a daemon thread because urllib's timeout does not cover DNS, which can stall far longer offline."""
    done, answer = threading.Event(), []

    def probe() -> None:
        try:
            with urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"),
                                        timeout=HUB_PROBE_TIMEOUT_S) as response:
                answer.append(response.status)
        except urllib.error.HTTPError as e:
            answer.append(e.code)
        except (OSError, ValueError) as e:  # refused, unresolvable, timed out, malformed URL
            reason = getattr(e, "reason", e)
            answer.append(None if isinstance(reason, TimeoutError) else str(reason))
        finally:
            done.set()

    threading.Thread(target=probe, daemon=True).start()
    # urllib's own timeout and this wait end at about the same time: either way, one message
    if not done.wait(HUB_PROBE_TIMEOUT_S) or answer[0] is None:
        return f"no answer within {HUB_PROBE_TIMEOUT_S:g} s"
    if isinstance(answer[0], str):
        return answer[0]
    return f"HTTP {answer[0]}" if answer[0] >= 500 else None  # 5xx: e.g. a proxy that cannot reach the hub


def _hub_source(task: TaskSpec) -> tuple[DataSource | None, str]:
    """The hub as a source when usable (its cache first: no network needed), else ``(None, where it looked)``."""
    label = f"{task.hub[0]} {task.hub[1]}"
    if _hub_cached(task):
        return DataSource("hub", f"the Hugging Face hub ({label}, cached)", cached=True), ""
    looked = f"the Hugging Face datasets cache ({_datasets_cache()}: no {label})"
    if _offline_vars():
        return None, f"{looked}, not the hub itself (offline mode forced by {' and '.join(_offline_vars())})"
    endpoint = _hub_endpoint()
    problem = _hub_problem(endpoint)
    if problem is None:
        return DataSource("hub", f"the Hugging Face hub ({label})"), ""
    return None, f"{looked}, the Hugging Face hub ({endpoint}: {problem})"


def resolve_data_source(task_name: str, data_dir: str | os.PathLike | None = None) -> DataSource:
    """Where ``task_name``'s data comes from, first found of: ``data_dir``, ``$FEDTT_DATA_DIR``, ``../shared/data``
    next to the checkout, the Hugging Face hub's local cache, the hub itself (when reachable and offline mode is
    not forced). Checked before anything starts, so that a run without data fails in seconds, not after launch.

    A named folder (``data_dir`` or the variable) without the task is an error, not a fallback. With no source,
    one ``FileNotFoundError`` whose one-line message says where it looked and how to fix it.
    """
    task = get_task(task_name)
    if data_dir:  # "" is the run config's "not set"
        return _named_folder(task, Path(data_dir), f"data-dir {data_dir}")
    if os.environ.get(DATA_DIR_ENV):
        return _named_folder(task, Path(os.environ[DATA_DIR_ENV]), f"${DATA_DIR_ENV} {os.environ[DATA_DIR_ENV]}")
    shared = f"../shared/data next to the checkout ({SHARED_DATA_DIR})"
    if _has_task(task, SHARED_DATA_DIR):
        return DataSource("local", shared, SHARED_DATA_DIR)
    hub, hub_looked = _hub_source(task)
    if hub is not None:
        return hub
    looked = ["data-dir (not set)", f"${DATA_DIR_ENV} (not set)",
              f"{shared}: {'no ' + task.folder if SHARED_DATA_DIR.is_dir() else 'absent'}", hub_looked]
    raise FileNotFoundError(
        f"task {task.name}: no data found; looked at {'; '.join(looked)}. Fix: set {DATA_DIR_ENV}=/path/to/folder "
        f"(GLUE/SuperGLUE layout: {_layout(task)}) or --set data-dir=/path/to/folder; to get that folder, run "
        f"`python -m fedtt_flwr.data download {task.name} --out DIR` on a machine with network access")


def _to_dataset(task: TaskSpec, rows: _Rows, path: Path) -> Dataset:
    index = {name: i for i, name in enumerate(task.labels)}
    try:
        labels = [index[value] for value in rows.label]
    except KeyError:
        i = next(i for i, value in enumerate(rows.label) if value not in index)
        bad = sorted(set(rows.label) - index.keys())
        raise ValueError(f"{path} line {rows.lines[i]}: unexpected label {rows.label[i]!r} for task {task.name} "
                         f"(expected one of {list(task.labels)}; unexpected values in the file: {bad[:5]})") from None
    return Dataset.from_dict({"text_a": rows.text_a, "text_b": rows.text_b, "label": labels})


@contextmanager
def _datasets_offline(on: bool) -> Iterator[None]:
    """datasets reads HF_HUB_OFFLINE once, at import: setting it on its config for one call makes a cached
    dataset load without asking the hub (no network wait, and the same data on every run)."""
    from datasets import config

    saved = config.HF_HUB_OFFLINE
    config.HF_HUB_OFFLINE = saved or on
    try:
        yield
    finally:
        config.HF_HUB_OFFLINE = saved


def _load_hub(task: TaskSpec, split: str, cached: bool) -> Dataset:
    from datasets import load_dataset

    with _datasets_offline(cached):
        ds = load_dataset(*task.hub, split="validation" if split == "dev" else "train",
                          cache_dir=str(_datasets_cache()))
    a, b = task.hub_fields
    return Dataset.from_dict({"text_a": ds[a], "text_b": ds[b] if b else [""] * len(ds), "label": ds["label"]})


def _load(task: TaskSpec, split: str, source: DataSource) -> Dataset:
    if source.kind == "hub":
        return _load_hub(task, split, source.cached)
    path = _split_path(task, source.folder, split)
    if not path.is_file():
        raise FileNotFoundError(f"task {task.name}: no {split} file at {path} ({source.description})")
    return _to_dataset(task, task.file_format.read(path), path)


def load_split(task_name: str, split: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """One split (``train`` or ``dev``) of a task, from the source :func:`resolve_data_source` finds.

    A local folder that lacks the split's file is an error naming the file (no silent hub fallback); a
    malformed file is a ``ValueError`` naming the file and line.
    """
    task = get_task(task_name)
    if split not in task.files:
        raise ValueError(f"split must be one of {list(task.files)}, got {split!r}")
    return _load(task, split, resolve_data_source(task_name, data_dir))


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
    task = get_task(task_name)
    source = resolve_data_source(task_name, data_dir)
    dev = _load(task, "dev", source)
    if source.kind == "hub" or _split_path(task, source.folder, "train").is_file():
        return _load(task, "train", source), dev, None
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


def write_split(task_name: str, split: str, dataset: Dataset, out_dir: str | os.PathLike) -> Path:
    """Write one split (columns ``text_a``, ``text_b``, ``label`` ids) under ``out_dir`` in the task's local
    GLUE/SuperGLUE layout, which the readers then load offline; returns the file written. It is written
    under a temporary name first, so an interrupted download never leaves a half file that looks complete."""
    task = get_task(task_name)
    if split not in task.files:
        raise ValueError(f"split must be one of {list(task.files)}, got {split!r}")
    ids = dataset["label"]
    wrong = next((i for i, y in enumerate(ids) if not 0 <= y < len(task.labels)), None)
    if wrong is not None:
        raise ValueError(f"task {task.name} {split}: row {wrong} has label id {ids[wrong]}, "
                         f"outside 0..{len(task.labels) - 1}")
    path = _split_path(task, Path(out_dir), split)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    rows = _Rows(dataset["text_a"], dataset["text_b"], [task.labels[y] for y in ids], range(1, len(ids) + 1))
    task.file_format.write(part, rows)
    part.replace(path)
    return path


def download(task_names: Sequence[str], out_dir: str | os.PathLike) -> list[Path]:
    """Fetch tasks' train and dev splits from the hub (or its cache) into ``out_dir`` in the local layout:
    fetch once on a machine with network access, then run anywhere with ``FEDTT_DATA_DIR=out_dir``."""
    written = []
    for name in task_names:
        task = get_task(name)
        source, looked = _hub_source(task)
        if source is None:
            raise FileNotFoundError(f"task {name}: cannot download; looked at {looked}")
        written += [write_split(name, split, _load_hub(task, split, source.cached), out_dir) for split in task.files]
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fedtt_flwr.data download TASK [TASK...] --out DIR``."""
    parser = argparse.ArgumentParser(prog="python -m fedtt_flwr.data", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    dl = commands.add_parser("download", help="write tasks' train/dev files from the Hugging Face hub into a folder "
                             "in the GLUE/SuperGLUE layout, for offline runs")
    dl.add_argument("tasks", nargs="+", choices=list(TASKS), metavar="TASK", help=f"one of {', '.join(TASKS)}")
    dl.add_argument("--out", required=True, type=Path, help="folder to write (glue/SST-2/train.tsv, ...)")
    args = parser.parse_args(argv)
    try:
        for path in download(args.tasks, args.out):
            print(path)
    except (OSError, ValueError) as e:  # OSError: also the hub's connection errors
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"done; use it with: export {DATA_DIR_ENV}={args.out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
