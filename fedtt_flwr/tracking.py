"""Every round's metrics and the run's resolved config in the experiment tracker a user already has: TensorBoard,
MLflow (both offline, to a local folder, by default) or Weights & Biases (offline with ``WANDB_MODE=offline``).

The trackers are optional extras (``pip install -e ".[tracking]"``), imported only when the run config's
``tracker`` names them. Tracking never stops training: a tracker that cannot start or that raises is logged once as
a warning and dropped for the rest of the run; metrics.jsonl stays the record of the run.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator
from logging import WARNING
from pathlib import Path

from flwr.common.logger import log

TRACKERS = ("tensorboard", "mlflow", "wandb")
EXPERIMENT = "fedtt-flwr"


def parse_trackers(value: str) -> list[str]:
    """``"tensorboard,mlflow"`` -> the names; ``""``/``"none"`` -> none; ValueError naming an unknown one."""
    names = [v.strip() for v in value.split(",") if v.strip() and v.strip() != "none"]
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ValueError(f"unknown tracker {unknown[0]!r}: choose from none, {', '.join(TRACKERS)} (comma-separated)")
    return list(dict.fromkeys(names))


def numbers(record: dict) -> dict[str, float]:
    """The round's numeric values (booleans as 0/1); text, lists and None are not metrics."""
    return {k: float(v) for k, v in record.items() if isinstance(v, int | float) and math.isfinite(v)}


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """A nested config as ``a.b = value`` strings (trackers' parameters are flat)."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_params(value, name + "."))
        else:
            out[name] = value if isinstance(value, str) else json.dumps(value)
    return out


class TensorBoard:
    """Event files in ``<tracker-dir>/tensorboard`` (a resumed run adds a file beside the earlier ones)."""

    run_id = None

    def __init__(self, folder: Path, run_name: str, uri: str, previous: str | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.writer = SummaryWriter(log_dir=str(folder / "tensorboard"))

    def log_config(self, config: dict) -> None:
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```", 0)

    def log_round(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self, failed: bool = False) -> None:
        self.writer.close()


@contextlib.contextmanager
def _file_lock(path: Path | None) -> Iterator[None]:
    """An exclusive lock on ``path`` between processes for the duration (none for ``None``, or without fcntl)."""
    try:
        import fcntl
    except ImportError:  # Windows: unlocked
        fcntl = None
    if path is None or fcntl is None:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class MLflow:
    """One MLflow run per federated run, in experiment ``fedtt-flwr``; by default an SQLite store in the tracking
    folder (MLflow's own file store is deprecated), else ``uri`` (``tracker-uri``: a server or database). A resumed
    run goes on in its MLflow run (``previous``); a failed one ends FAILED."""

    def __init__(self, folder: Path, run_name: str, uri: str, previous: str | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.uri = uri or f"sqlite:///{(folder / 'mlflow.db').resolve()}"
        # two runs creating one new SQLite store at once both run its schema migration and can leave it unusable
        # for both: the store's first use is serialised between processes (a server or database needs no lock)
        with _file_lock(None if uri else folder / "mlflow.lock"):
            self._start(run_name, previous)

    def _start(self, run_name: str, previous: str | None) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri)
        if previous and self._reopen(previous):
            return
        found = self.client.get_experiment_by_name(EXPERIMENT)
        if found is None:
            try:
                experiment = self.client.create_experiment(EXPERIMENT)
            except Exception:  # another run created it in the meantime
                found = self.client.get_experiment_by_name(EXPERIMENT)
                if found is None:
                    raise
                experiment = found.experiment_id
        else:
            experiment = found.experiment_id
        self.run_id = self.client.create_run(experiment, run_name=run_name).info.run_id

    def _reopen(self, run_id: str) -> bool:
        try:
            self.client.update_run(run_id, status="RUNNING")
        except Exception:  # noqa: BLE001 - not in this store (another tracker-uri now): a new run
            return False
        self.run_id = run_id
        return True

    def log_config(self, config: dict) -> None:
        from mlflow.entities import Param

        have = self.client.get_run(self.run_id).data.params  # a resumed run has them (MLflow refuses to change one)
        params = [Param(k[:250], str(v)[:6000]) for k, v in flat_params(config).items() if k[:250] not in have]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log_round(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def close(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


class WandB:
    """A W&B run in project ``fedtt-flwr`` (or ``tracker-uri``), files in the tracking folder; W&B's own settings
    (``WANDB_MODE=offline``, ``WANDB_API_KEY``) decide where it goes. A resumed run goes on in its W&B run."""

    def __init__(self, folder: Path, run_name: str, uri: str, previous: str | None = None) -> None:
        import wandb

        folder.mkdir(parents=True, exist_ok=True)
        resume = {"id": previous, "resume": "allow"} if previous else {}
        self.run = wandb.init(project=uri or EXPERIMENT, name=run_name, dir=str(folder), reinit=True, **resume)
        self.run_id = self.run.id

    def log_config(self, config: dict) -> None:
        self.run.config.update(config, allow_val_change=True)

    def log_round(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


BACKENDS = {"tensorboard": TensorBoard, "mlflow": MLflow, "wandb": WandB}


class Tracking:
    """The run's trackers; each call goes to every tracker still working. A failure drops that tracker, with one
    warning naming it and the error; the run goes on. ``ids``: a file (in the run folder) keeping each tracker's run
    id, so a resumed run continues its tracker runs. Starting is tried ``attempts`` times (two runs starting at once
    on one MLflow store race to create its tables)."""

    def __init__(self, names: list[str], folder: Path, run_name: str, uri: str = "", ids: Path | None = None,
                 attempts: int = 4) -> None:
        self.live: dict[str, object] = {}
        previous = _read_ids(ids)
        for name in names:
            for attempt in range(attempts):
                try:
                    self.live[name] = BACKENDS[name](folder, run_name, uri, previous.get(name))
                    break
                except Exception as exc:  # noqa: BLE001 - a tracker never stops training
                    if isinstance(exc, ImportError) or attempt == attempts - 1:
                        self._drop(name, "start", exc)
                        break
                    time.sleep(attempt + 1.0)  # 6 s in all
        started = {n: getattr(t, "run_id", None) for n, t in self.live.items()}
        if ids is not None and any(started.values()):
            ids.write_text(json.dumps({**previous, **{n: i for n, i in started.items() if i}}))

    def _drop(self, name: str, what: str, exc: Exception) -> None:
        self.live.pop(name, None)
        hint = " (pip install -e '.[tracking]')" if isinstance(exc, ImportError) else ""
        log(WARNING, "[fedtt] tracker %s could not %s and is off for this run: %s: %s%s", name, what,
            type(exc).__name__, str(exc)[:300], hint)

    def _each(self, what: str, call) -> None:
        for name, tracker in list(self.live.items()):
            try:
                call(tracker)
            except Exception as exc:  # noqa: BLE001 - a tracker never stops training
                self._drop(name, what, exc)

    def log_config(self, config: dict) -> None:
        self._each("log the config", lambda t: t.log_config(config))

    def log_round(self, record: dict) -> None:
        self._each(f"log round {record.get('round')}", lambda t: t.log_round(int(record["round"]), numbers(record)))

    def close(self, failed: bool = False) -> None:
        self._each("close", lambda t: t.close(failed))
        self.live = {}


def _read_ids(path: Path | None) -> dict[str, str]:
    """The tracker run ids a run folder kept (none: a new run, or an unreadable file)."""
    if path is None or not path.exists():
        return {}
    try:
        ids = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return {k: v for k, v in ids.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(ids, dict) \
        else {}
