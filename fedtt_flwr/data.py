"""Where a task's data comes from (a local folder, a user's files, the Hugging Face hub), loading its splits, and
federated partitions of them.

Presets read the local layout of ``shared/data`` (``glue/SST-2/train.tsv``, ``superglue/CB/val.jsonl``, ...);
``python -m fedtt_flwr.data download TASK --out DIR`` writes that layout from the hub. What a task is (columns,
kind, labels, metrics) and how rows are checked: :mod:`.tasks`; reading files: :mod:`.readers`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
from datasets import Dataset

from .readers import Records, expand, read_records
from .tasks import PRESETS, Examples, TaskSpec, infer_labels, label_ids, label_text
from .tasks import compute_metrics as _task_metrics

DATA_DIR_ENV = "FEDTT_DATA_DIR"
#: ``shared/data`` next to this checkout (``../shared/data`` from the repository root); a module constant
#: so that tests can point it elsewhere.
SHARED_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
#: The hub probe's limit: long enough for a slow link, short enough that a machine without network
#: fails within seconds instead of hanging in DNS or TCP timeouts.
HUB_PROBE_TIMEOUT_S = 3.0
_TRUE = {"1", "ON", "YES", "TRUE"}


TASKS = PRESETS  # the preset tasks by name


def get_task(task: str | TaskSpec) -> TaskSpec:
    """A preset by name (a spec passes through)."""
    if isinstance(task, TaskSpec):
        return task
    if task not in PRESETS:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(PRESETS)}")
    return PRESETS[task]


def default_data_dir() -> Path | None:
    """``$FEDTT_DATA_DIR``, else ``shared/data`` next to this checkout when present, else None (hub)."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env)
    return SHARED_DATA_DIR if SHARED_DATA_DIR.is_dir() else None


@dataclass(frozen=True)
class DataSource:
    """Where a task's data is read from, resolved once so that every reader and message agrees on it."""

    kind: Literal["local", "hub", "files"]  # local: a folder in the GLUE/SuperGLUE layout; files: a user's files
    description: str  # for messages: "data-dir /x", "the Hugging Face hub (nyu-mll/glue sst2, cached)", ...
    folder: Path | None = None  # local: the data folder; files: the folder relative paths are under (or None)
    cached: bool = False  # hub only: in the local datasets cache, so it loads without the network


def _split_path(task: TaskSpec, folder: Path, split: str) -> Path:
    return folder / task.folder / task.file(split)


def _has_task(task: TaskSpec, folder: Path) -> bool:
    return any(_split_path(task, folder, split).is_file() for split in task.splits)


def _layout(task: TaskSpec) -> str:
    return ", ".join(f"{task.folder}/{name}" for _, name in task.files)


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
    return any((_datasets_cache() / name.replace("/", "___")).glob(f"{config or '*'}/*/*/dataset_info.json"))


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
    label = " ".join(filter(None, task.hub))
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


def _user_source(task: TaskSpec, data_dir: str | os.PathLike | None) -> DataSource:
    """A user's own files (``train-file``/``dev-file``) or hub dataset (``hub-dataset``), checked to exist."""
    if task.files and task.hub:
        raise ValueError(f"task {task.name}: give train-file/dev-file or hub-dataset, not both")
    if task.hub:
        hub, looked = _hub_source(task)
        if hub is None:
            raise FileNotFoundError(f"task {task.name}: hub dataset {' '.join(filter(None, task.hub))} is not "
                                    f"available; looked at {looked}")
        return hub
    if not task.files:
        raise ValueError(f"task {task.name}: no data: set train-file (and dev-file) to your files, or hub-dataset")
    # each split's files are found when it is read (the server evaluating on a dev file has no train file)
    return DataSource("files", ", ".join(f"{split}-file {spec}" for split, spec in task.files),
                      Path(data_dir) if data_dir else None)


def resolve_data_source(task: str | TaskSpec, data_dir: str | os.PathLike | None = None) -> DataSource:
    """Where a task's data comes from. A user's task: its files or hub dataset. A preset: first found of
    ``data_dir``, ``$FEDTT_DATA_DIR``, ``../shared/data`` next to the checkout, the Hugging Face hub's local cache,
    the hub itself (when reachable and offline mode is not forced). Checked before anything starts, so that a run
    without data fails in seconds, not after launch.

    A named folder (``data_dir`` or the variable) without the task is an error, not a fallback. With no source,
    one ``FileNotFoundError`` whose one-line message says where it looked and how to fix it.
    """
    task = get_task(task)
    if not task.folder:
        return _user_source(task, data_dir)
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


def _hub_records(task: TaskSpec, split: str, cached: bool) -> Records:
    """A hub split as records with the task's (file) column names; class ids become the label values as files
    write them (a preset's own label order, else the dataset's class names)."""
    from datasets import ClassLabel, load_dataset

    with _datasets_offline(cached):
        ds = load_dataset(task.hub[0], task.hub[1] or None, split=task.hub_split(split),
                          cache_dir=str(_datasets_cache()))
    rename = {hub: col for col, hub in task.hub_columns}
    label_hub = next((hub for col, hub in task.hub_columns if col == task.label), task.label)
    feature = ds.features.get(label_hub)
    names = None
    if task.kind == "classification" and isinstance(feature, ClassLabel):
        # a preset's labels are the hub's classes in the hub's order; your own task's ids become the hub's class
        # names, which are then mapped by name onto your labels (an order you chose is kept)
        names = list(task.labels) if task.folder else feature.names

    def rows() -> Iterator[tuple[str, dict]]:
        for n, record in enumerate(ds, 1):
            out = {rename.get(k, k): v for k, v in record.items()}
            if names is not None and isinstance(out.get(task.label), int) and 0 <= out[task.label] < len(names):
                out[task.label] = names[out[task.label]]
            yield f"row {n}", out

    where = f"{' '.join(filter(None, task.hub))} [{task.hub_split(split)}]"
    return Records(Path(where), [rename.get(c, c) for c in ds.column_names], rows(), [])


def _class_names(task: TaskSpec, cached: bool) -> tuple[str, ...] | None:
    """A hub dataset's class names, when its label column is a ClassLabel (the label set, in the hub's order)."""
    from datasets import ClassLabel, load_dataset_builder

    with _datasets_offline(cached):
        builder = load_dataset_builder(task.hub[0], task.hub[1] or None, cache_dir=str(_datasets_cache()))
    feature = (builder.info.features or {}).get(task.label)
    return tuple(feature.names) if isinstance(feature, ClassLabel) else None


def _split_files(task: TaskSpec, split: str, source: DataSource) -> list[Path]:
    if source.kind == "local":
        path = _split_path(task, source.folder, split)
        if not path.is_file():
            raise FileNotFoundError(f"task {task.name}: no {split} file at {path} ({source.description})")
        return [path]
    spec = task.file(split)
    if spec is None:
        raise FileNotFoundError(f"task {task.name}: no {split}-file given")
    try:
        return expand(spec, source.folder, any_file=task.fmt.kind is not None)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"task {task.name}: {split}-file {e}") from None


_SAID: set[tuple[str, str, str]] = set()


def read_examples(task: TaskSpec, split: str, source: DataSource) -> Examples:
    """Every row of one split, checked; what was skipped (blank lines, ``bad-rows = skip``) is printed once."""
    examples = Examples()
    if source.kind == "hub":
        examples.read(task, _hub_records(task, split, source.cached))
    else:
        for path in _split_files(task, split, source):
            examples.read(task, read_records(path, task.fmt))
    for note in examples.notes(split):
        said = (task.name, source.description, note)
        if said not in _SAID:  # the same file is read again by the pre-start check and the apps: say it once
            _SAID.add(said)
            print(f"[fedtt] task {task.name} {note}", flush=True)
    if not examples.label:
        raise ValueError(f"task {task.name}: the {split} split has no rows ({source.description})")
    return examples


def with_labels(task: TaskSpec, data_dir: str | os.PathLike | None = None) -> TaskSpec:
    """The task with its label set: as given, else a hub dataset's class names, else the sorted label values of
    the training split (so every node and the server agree, the caller fixes them in the run config)."""
    if task.kind != "classification" or task.labels is not None:
        return task
    source = resolve_data_source(task, data_dir)
    names = _class_names(task, source.cached) if source.kind == "hub" else None
    if names is None:
        names = infer_labels(read_examples(task, "train", source).label)
    if len(names) < 2:
        raise ValueError(f"task {task.name}: the training split has only the label(s) {list(names)}; a "
                         "classification needs at least 2 (set labels = 'a,b' if the other one is just absent here)")
    return replace(task, labels=names)


def _to_dataset(task: TaskSpec, examples: Examples, split: str) -> Dataset:
    columns = {"text_a": examples.text_a, "text_b": examples.text_b, "label": label_ids(task, examples, split)}
    if task.kind == "multiple-choice":
        columns["choices"] = examples.choices
    if task.group:
        columns["group"] = examples.group
    return Dataset.from_dict(columns)


def _load(task: TaskSpec, split: str, source: DataSource) -> Dataset:
    if task.kind == "classification" and task.labels is None:
        raise ValueError(f"task {task.name}: its labels are not known; set labels = 'a,b,...' in the run config "
                         "(`fedtt-flwr simulate` and `finetune` infer them from the training file)")
    return _to_dataset(task, read_examples(task, split, source), split)


def load_split(task: str | TaskSpec, split: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """One split (``train`` or ``dev``) of a task, from the source :func:`resolve_data_source` finds.

    A local folder that lacks the split's file is an error naming the file (no silent hub fallback); a
    malformed file is a ``ValueError`` naming the file, row and column.
    """
    task = get_task(task)
    if split not in task.splits:
        raise ValueError(f"split must be one of {list(task.splits)}, got {split!r}")
    return _load(task, split, resolve_data_source(task, data_dir))


def compute_metrics(task: str | TaskSpec, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's metrics by name (:func:`fedtt_flwr.tasks.compute_metrics`)."""
    return _task_metrics(get_task(task), predictions, labels)


#: Tasks shipped here without a train split get one carved from their dev/val file with this fixed
#: seed (independent of a run's seed, so every run is scored on the same held-out part).
DEV_SPLIT_SEED = 1234
DEV_SPLIT_TRAIN_FRACTION = 0.8


def _carved(task: TaskSpec, source: DataSource) -> bool:
    """A local preset folder with the dev file but no train file (QNLI and BoolQ in shared/data)."""
    return source.kind == "local" and not _split_path(task, source.folder, "train").is_file()


def _carve(task: TaskSpec, dev: Dataset) -> tuple[Dataset, Dataset, str]:
    parts = dev.train_test_split(train_size=DEV_SPLIT_TRAIN_FRACTION, seed=DEV_SPLIT_SEED, shuffle=True)
    note = (f"task {task.name}: no local train file, so its dev file ({len(dev)} rows) was split "
            f"{DEV_SPLIT_TRAIN_FRACTION:.0%}/{1 - DEV_SPLIT_TRAIN_FRACTION:.0%} (seed {DEV_SPLIT_SEED}) into "
            f"train ({len(parts['train'])}) and test ({len(parts['test'])}); the test part is reported as dev")
    return parts["train"], parts["test"], note


def load_task(task: str | TaskSpec, data_dir: str | os.PathLike | None = None) -> tuple[Dataset, Dataset, str | None]:
    """``(train, dev, note)``. When a local folder has the dev file but no train file (QNLI and BoolQ in
    shared/data), the dev file is split 80/20 deterministically and ``note`` says so."""
    task = get_task(task)
    source = resolve_data_source(task, data_dir)
    dev = _load(task, "dev", source)
    if not _carved(task, source):
        return _load(task, "train", source), dev, None
    return _carve(task, dev)


def load_dev(task: str | TaskSpec, data_dir: str | os.PathLike | None = None) -> tuple[Dataset, str | None]:
    """``(dev, note)`` as :func:`load_task` gives them, without reading a training file (the server's evaluation)."""
    task = get_task(task)
    source = resolve_data_source(task, data_dir)
    dev = _load(task, "dev", source)
    return (_carve(task, dev)[1:] if _carved(task, source) else (dev, None))


@dataclass(frozen=True)
class PartitionSpec:
    kind: str  # iid | dirichlet | pathological | column
    num_partitions: int
    alpha: float = 0.5
    classes_per_client: int = 1
    seed: int = 0
    by: str = "label"  # what label skew is over: "label", or "label_bin" (a regression's score bins)


#: a regression's scores are cut into this many equal-count bins for label-skewed partitions
SCORE_BINS = 5


def partition_view(dataset: Dataset, task: TaskSpec, spec: PartitionSpec) -> tuple[Dataset, PartitionSpec]:
    """The dataset and spec a partitioner reads: skew over the partition column when there is one (Dirichlet over
    instruction families), a regression's over score bins (quantiles), else over the labels."""
    if spec.kind not in ("dirichlet", "pathological"):
        return dataset, spec
    if task.group:
        return dataset, replace(spec, by="group")
    if task.kind == "generation":
        raise ValueError(f"partition = '{spec.kind}' needs a partition-column for instruction tuning (its responses "
                         "are free text, not labels): e.g. a task or category column, or partition = 'iid'")
    if task.kind != "regression":
        return dataset, spec
    scores = np.asarray(dataset["label"], dtype=np.float64)
    edges = np.quantile(scores, np.linspace(0, 1, SCORE_BINS + 1)[1:-1]) if len(scores) else []
    bins = np.searchsorted(edges, scores, side="right").tolist()
    return dataset.add_column("label_bin", bins), replace(spec, by="label_bin")


def make_partitioner(spec: PartitionSpec):
    """A flwr-datasets partitioner for the spec (deterministic by seed). ``column``: one partition per value of
    the dataset's ``group`` column (``partition-column``), a natural split."""
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

    if spec.num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {spec.num_partitions}")
    if spec.kind == "iid":
        return _ShuffledIid(IidPartitioner(num_partitions=spec.num_partitions), spec.seed)
    if spec.kind == "dirichlet":
        return DirichletPartitioner(num_partitions=spec.num_partitions, partition_by=spec.by, alpha=spec.alpha,
                                    min_partition_size=2, self_balancing=False, seed=spec.seed)
    if spec.kind == "pathological":
        return PathologicalPartitioner(num_partitions=spec.num_partitions, partition_by=spec.by,
                                       num_classes_per_partition=spec.classes_per_client,
                                       class_assignment_mode="deterministic", seed=spec.seed)
    if spec.kind == "column":
        return _ColumnPartitioner(spec.num_partitions)
    raise ValueError(f"unknown partition {spec.kind!r}: use iid, dirichlet, pathological or column")


class _ShuffledIid:
    """flwr-datasets' IidPartitioner cuts contiguous blocks in file order: a file sorted by label would give each
    client one label. The rows are shuffled first (by ``seed``), so IID means IID whatever the file's order."""

    def __init__(self, inner, seed: int) -> None:
        self._inner, self._seed = inner, seed
        self.num_partitions = inner.num_partitions

    @property
    def dataset(self) -> Dataset:
        return self._inner.dataset

    @dataset.setter
    def dataset(self, value: Dataset) -> None:
        self._inner.dataset = value.shuffle(seed=self._seed).flatten_indices()

    def load_partition(self, partition_id: int) -> Dataset:
        return self._inner.load_partition(partition_id)


class _ColumnPartitioner:
    """One partition per value of ``group``, in sorted order (the same on every node), checked: as many clients
    as the column has values."""

    def __init__(self, num_partitions: int) -> None:
        self.num_partitions = num_partitions
        self._dataset: Dataset | None = None
        self._values: list[str] = []

    @property
    def dataset(self) -> Dataset:
        return self._dataset

    @dataset.setter
    def dataset(self, value: Dataset) -> None:
        self._values = sorted(set(value["group"]))
        if len(self._values) != self.num_partitions:
            raise ValueError(f"partition = 'column': the partition column has {len(self._values)} values "
                             f"({', '.join(self._values[:8])}{', ...' if len(self._values) > 8 else ''}) but the run "
                             f"has {self.num_partitions} clients; run with {len(self._values)} clients")
        self._dataset = value

    def load_partition(self, partition_id: int) -> Dataset:
        value = self._values[partition_id]
        return self._dataset.filter(lambda g: g == value, input_columns="group")


def load_partition(partitioner, spec: PartitionSpec, partition_id: int) -> Dataset:
    """One client's share; a split flwr-datasets cannot make (too few rows or classes for the clients) is an error
    naming the settings that decide it."""
    try:
        return partitioner.load_partition(partition_id)
    except ValueError as exc:
        setting = {"dirichlet": f", alpha {spec.alpha}", "pathological": f", classes-per-client "
                   f"{spec.classes_per_client}"}.get(spec.kind, "")
        fix = {"dirichlet": ", a larger alpha", "pathological": ", fewer classes-per-client"}.get(spec.kind, "")
        rows = len(partitioner.dataset) if partitioner.dataset is not None else "its"
        raise ValueError(f"partition = '{spec.kind}'{setting}: {rows} training rows cannot be split between "
                         f"{spec.num_partitions} clients ({exc}); use more data, fewer clients{fix} or partition = "
                         "'iid'") from None


def check_partition_id(spec: PartitionSpec, partition_id: int) -> None:
    if not 0 <= partition_id < spec.num_partitions:
        raise ValueError(f"partition-id {partition_id} is outside 0..{spec.num_partitions - 1}")


def partitioner_for(dataset: Dataset, spec: PartitionSpec, task: TaskSpec | None = None):
    """The spec's partitioner over ``dataset``, skewed the way the task is (:func:`partition_view`)."""
    if task is not None:
        dataset, spec = partition_view(dataset, task, spec)
    p = make_partitioner(spec)
    p.dataset = dataset
    return p


def partition(dataset: Dataset, spec: PartitionSpec, partition_id: int, task: TaskSpec | None = None) -> Dataset:
    """One client's share of ``dataset``."""
    check_partition_id(spec, partition_id)
    return load_partition(partitioner_for(dataset, spec, task), spec, partition_id)


def _write_tsv(path: Path, task: TaskSpec, records: list[dict]) -> None:
    columns = list(task.fmt.columns or task.columns)
    with open(path, "w", encoding="utf-8", newline="") as f:
        if task.fmt.columns is None:
            f.write("\t".join(columns) + "\n")
        for i, record in enumerate(records):
            fields = [str(record.get(c, "")) for c in columns]
            if any("\t" in v or "\n" in v or "\r" in v for v in fields):
                raise ValueError(f"{path}: row {i} has a tab or line break in its text, which a GLUE .tsv "
                                 "(no quoting) cannot hold")
            f.write("\t".join(fields) + "\n")


def _write_jsonl(path: Path, task: TaskSpec, records: list[dict]) -> None:
    bools = task.labels == ("False", "True")  # SuperGLUE writes these labels as JSON booleans
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for i, record in enumerate(records):
            out = {c: record[c] for c in task.columns if c in record}
            if bools and out.get(task.label) in task.labels:
                out[task.label] = out[task.label] == "True"
            f.write(json.dumps({**out, "idx": i}, ensure_ascii=False) + "\n")


def write_split(task_name: str, split: str, records: list[dict], out_dir: str | os.PathLike) -> Path:
    """Write one split's records (the task's columns, labels as files write them) under ``out_dir`` in the
    preset's GLUE/SuperGLUE layout, which the readers then load offline; returns the file written. Written under a
    temporary name first, so an interrupted download never leaves a half file that looks complete."""
    task = get_task(task_name)
    if split not in task.splits:
        raise ValueError(f"split must be one of {list(task.splits)}, got {split!r}")
    if task.labels is not None:
        wrong = next((i for i, r in enumerate(records) if label_text(r.get(task.label)) not in task.labels), None)
        if wrong is not None:
            raise ValueError(f"task {task.name} {split}: row {wrong} has label {records[wrong].get(task.label)!r}, "
                             f"not one of {list(task.labels)}")
    path = _split_path(task, Path(out_dir), split)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    (_write_tsv if task.fmt.kind == "tsv" else _write_jsonl)(part, task, records)
    part.replace(path)
    return path


def download(task_names: Sequence[str], out_dir: str | os.PathLike) -> list[Path]:
    """Fetch presets' train and dev splits from the hub (or its cache) into ``out_dir`` in the local layout:
    fetch once on a machine with network access, then run anywhere with ``FEDTT_DATA_DIR=out_dir``."""
    written = []
    for name in task_names:
        task = get_task(name)
        source, looked = _hub_source(task)
        if source is None:
            raise FileNotFoundError(f"task {name}: cannot download; looked at {looked}")
        for split in task.splits:
            records = [r for _, r in _hub_records(task, split, source.cached).rows]
            written.append(write_split(name, split, records, out_dir))
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
