"""Every round's metrics and the run's resolved config in the experiment tracker a user already has: TensorBoard,
MLflow (both offline, to a local folder, by default) or Weights & Biases (offline with ``WANDB_MODE=offline``).

The trackers are optional extras (``pip install -e ".[tracking]"``), imported only when the run config's
``tracker`` names them. Tracking never stops training: a tracker that cannot start or that raises is logged once as
a warning and dropped for the rest of the run; metrics.jsonl stays the record of the run.
"""

from __future__ import annotations

import json
import math
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
    def __init__(self, folder: Path, run_name: str, uri: str) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.folder = folder / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.folder))

    def log_config(self, config: dict) -> None:
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```", 0)

    def log_round(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MLflow:
    """One MLflow run per federated run, in experiment ``fedtt-flwr``; by default an SQLite store in the tracking
    folder (MLflow's own file store is deprecated), else ``uri`` (``tracker-uri``: a server or database)."""

    def __init__(self, folder: Path, run_name: str, uri: str) -> None:
        from mlflow.tracking import MlflowClient

        folder.mkdir(parents=True, exist_ok=True)
        self.uri = uri or f"sqlite:///{(folder / 'mlflow.db').resolve()}"
        self.client = MlflowClient(tracking_uri=self.uri)
        found = self.client.get_experiment_by_name(EXPERIMENT)
        experiment = found.experiment_id if found else self.client.create_experiment(EXPERIMENT)
        self.run_id = self.client.create_run(experiment, run_name=run_name).info.run_id

    def log_config(self, config: dict) -> None:
        from mlflow.entities import Param

        params = [Param(k[:250], str(v)[:6000]) for k, v in flat_params(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log_round(self, step: int, metrics: dict[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class WandB:
    """A W&B run in project ``fedtt-flwr`` (or ``tracker-uri``), files in the tracking folder; W&B's own settings
    (``WANDB_MODE=offline``, ``WANDB_API_KEY``) decide where it goes."""

    def __init__(self, folder: Path, run_name: str, uri: str) -> None:
        import wandb

        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=uri or EXPERIMENT, name=run_name, dir=str(folder), reinit=True)

    def log_config(self, config: dict) -> None:
        self.run.config.update(config, allow_val_change=True)

    def log_round(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


BACKENDS = {"tensorboard": TensorBoard, "mlflow": MLflow, "wandb": WandB}


class Tracking:
    """The run's trackers; each call goes to every tracker still working. A failure drops that tracker, with one
    warning naming it and the error; the run goes on."""

    def __init__(self, names: list[str], folder: Path, run_name: str, uri: str = "") -> None:
        self.live: dict[str, object] = {}
        for name in names:
            self._call(name, lambda n=name: self.live.__setitem__(n, BACKENDS[n](folder, run_name, uri)), "start")

    def _call(self, name: str, fn, what: str) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - a tracker never stops training
            self.live.pop(name, None)
            hint = " (pip install -e '.[tracking]')" if isinstance(exc, ImportError) else ""
            log(WARNING, "[fedtt] tracker %s could not %s and is off for this run: %s: %s%s", name, what,
                type(exc).__name__, str(exc)[:300], hint)

    def _each(self, what: str, method: str, *args) -> None:
        for name, tracker in list(self.live.items()):
            self._call(name, lambda t=tracker: getattr(t, method)(*args), what)

    def log_config(self, config: dict) -> None:
        self._each("log the config", "log_config", config)

    def log_round(self, record: dict) -> None:
        self._each(f"log round {record.get('round')}", "log_round", int(record.get("round", 0)), numbers(record))

    def close(self) -> None:
        self._each("close", "close")
        self.live = {}
