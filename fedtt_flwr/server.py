"""The ServerApp's work: initialise the adapters once, run FedTT/FedTT+, evaluate, write the run folder.

Run folder (``<output-dir>/<run-name>/``): ``config.json``, ``metrics.jsonl`` (one line per round,
round 0 = the initial adapters), ``adapter.safetensors`` (final global adapters) and ``summary.json``.
"""

from __future__ import annotations

import itertools
import json
import os
import pickle
import random
import time
from collections.abc import Callable
from datetime import datetime, timezone
from logging import INFO, WARNING
from pathlib import Path

import numpy as np
import torch
from datasets.utils.logging import disable_progress_bar
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    FedAdagrad,
    FedAdam,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Strategy,
)
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from strategies import FastFedAvg, FedAlternating, FedTT, FedTTPlus, make_schedule
from strategies.hetero import FedTTHetero
from strategies.precision import WireFormat
from strategies.residual import FedLoRAResidual
from strategies.virtual import VirtualClients

from .adapters import adapters_off, get_adapter_state, set_adapter_state
from .checkpoint import save_adapter
from .config import RunConfig, current_keys
from .data import load_dev
from .methods.build import Resolved, build_model, resolve
from .models import pick_device
from .tasks import task_of
from .tracking import Tracking, parse_trackers
from .train import evaluate, make_loader, tokenize

disable_progress_bar()


def inner_strategy(cfg: RunConfig, fraction_evaluate: float | None = None) -> Strategy:
    """The Flower strategy that averages the adapter tensors (``fraction_evaluate``: the resolved one)."""
    evaluate = cfg.fraction_evaluate if fraction_evaluate is None else fraction_evaluate
    # virtual clients: every SuperNode is sampled and FedTT keeps as many as the round's clients
    train, least = (1.0, cfg.clients_per_round) if cfg.virtual_clients else (cfg.fraction_train, cfg.min_clients)
    common = dict(fraction_train=train, fraction_evaluate=evaluate,
                  min_train_nodes=least, min_evaluate_nodes=cfg.min_clients if evaluate else 0,
                  min_available_nodes=least)
    opt = cfg.server_opt
    if opt == "fedavg":
        return FastFedAvg(**common)  # FedAvg's arithmetic, bit for bit, without np.load per array
    if opt == "fedavgm":
        return FedAvgM(**common, server_learning_rate=cfg.server_lr, server_momentum=cfg.server_momentum)
    if opt == "fedprox":
        return FedProx(**common, proximal_mu=cfg.proximal_mu)
    if opt == "fedmedian":
        return FedMedian(**common)
    if opt == "fedtrimmedavg":
        return FedTrimmedAvg(**common, beta=cfg.trim_beta)
    fedopt = {"fedadam": FedAdam, "fedyogi": FedYogi, "fedadagrad": FedAdagrad}[opt]
    return fedopt(**common, eta=cfg.server_lr)


def build_strategy(cfg: RunConfig, travelling: list[str], resolved: Resolved | None = None) -> FedTT:
    """The strategy the method's rounds call for (its registry entry): FedTT+ for a core schedule, the
    alternation of its groups, or plain FedTT (every travelling tensor, every round)."""
    resolved = resolved or resolve(cfg)
    method = resolved.method
    inner = inner_strategy(cfg, resolved.fraction_evaluate)
    if method.rounds == "schedule":
        schedule = make_schedule(cfg.schedule, seed=cfg.seed, num_middle=cfg.schedule_middle)
        strategy = FedTTPlus(inner, include=travelling, schedule=schedule, sync=cfg.sync, pack=cfg.pack_arrays)
    elif method.rounds == "alternate":
        strategy = FedAlternating(inner, include=travelling, groups=method.groups, sync=cfg.sync,
                                  pack=cfg.pack_arrays)
    elif method.rounds == "residual":
        strategy = FedLoRAResidual(inner, include=travelling, pack=cfg.pack_arrays, mode=method.extra["residual"],
                                   scaling=cfg.lora_alpha / cfg.lora_rank, seed=cfg.seed, sync=cfg.sync,
                                   node_ranks=bool(cfg.node_ranks), query_timeout=cfg.round_timeout)
    elif cfg.node_ranks:
        strategy = FedTTHetero(inner, include=travelling, pack=cfg.pack_arrays, query_timeout=cfg.round_timeout)
    else:
        strategy = FedTT(inner, include=travelling, pack=cfg.pack_arrays, average=cfg.tt_average)
    strategy.wire = WireFormat(cfg.wire_precision, cfg.wire_block)
    if cfg.virtual_clients:
        strategy.virtual = VirtualClients(cfg.virtual_clients, cfg.clients_per_round, cfg.seed)
    strategy.min_replies = cfg.min_replies
    strategy.max_examples = cfg.max_examples
    return strategy


def run_folder(cfg: RunConfig) -> Path:
    """The run's folder: the one ``resume`` names, else a new one under ``output-dir``; never one that already
    holds a run (two runs in one folder would interleave their metrics and overwrite each other's files)."""
    if cfg.resume:
        return _resume_folder(cfg)
    root = Path(cfg.output_dir).expanduser().resolve()
    if cfg.run_name:
        path = root / cfg.run_name
        check_new_folder(path)
        path.mkdir(parents=True, exist_ok=True)
        return path
    task = task_of(cfg).name
    name = (f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{cfg.method.replace('+', 'plus')}-{cfg.model}-{task}"
            f"-{cfg.partition}{cfg.alpha if cfg.partition == 'dirichlet' else ''}-r{cfg.rank}-s{cfg.seed}")
    for attempt in itertools.count(1):  # two runs started in the same second get -2, -3, ...
        path = root / (name if attempt == 1 else f"{name}-{attempt}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def check_new_folder(path: Path) -> None:
    """A run-name whose folder already holds files belongs to another run."""
    if path.is_dir() and any(path.iterdir()):
        raise FileExistsError(f"run folder {path} already holds a run: choose another run-name, or set "
                              f'resume = "{path}" to continue that run')


def finished_rounds(folder: Path) -> int:
    """The last round the run in ``folder`` completed (its checkpoint), 0 if none did."""
    path = folder / CHECKPOINT
    if not path.exists():
        return 0
    with open(path, "rb") as f:
        return int(pickle.load(f)["round"])


#: below this expected batch, DP-SGD's noise swamped the signal in every measured run (docs/privacy.md)
DP_BATCH_HINT = 256
#: settings a resumed run may change (resume names the folder; where metrics are also sent never changes training)
RESUMABLE_CHANGES = ("resume", "num-server-rounds", "run-name", "output-dir", "tracker", "tracker-dir", "tracker-uri")


def _resume_folder(cfg: RunConfig) -> Path:
    """The folder of the run to resume, checked: same settings (but ``RESUMABLE_CHANGES``), no DP."""
    folder = Path(cfg.resume).expanduser().resolve()
    saved = folder / "config.json"
    if not saved.exists():
        raise FileNotFoundError(f"resume: {saved} does not exist (resume= takes the folder of an earlier run)")
    if cfg.dp != "off":
        raise ValueError("resume: not with dp: each client's privacy accountant lives in the interrupted run's "
                         "node contexts and would restart at zero")
    if resolve(cfg).method.personal:
        raise ValueError(f"resume: not with {cfg.method}: each node's own tensors live in the interrupted run's "
                         "node contexts and would restart from their initial values")
    # a key added since that run was written counts as its default
    before = {**RunConfig().model_dump(by_alias=True),
              **current_keys(json.loads(saved.read_text())["run_config"])}
    now = cfg.model_dump(by_alias=True)
    for values in (before, now):  # "auto" and the value it stands for are the same setting
        resolved = RunConfig.from_flower(values)
        values.update(lr=resolved.base_lr, optimizer=resolved.local_optimizer)
    changed = sorted(k for k in set(before) | set(now) if k not in RESUMABLE_CHANGES and before.get(k) != now.get(k))
    if changed:
        raise ValueError(f"resume: settings differ from the run in {folder}: "
                         + ", ".join(f"{k}={before.get(k)!r} -> {now.get(k)!r}" for k in changed[:5]))
    return folder


class MetricsLog:
    """Appends one JSON line per round and prints a progress line."""

    def __init__(self, path: Path, cfg: RunConfig, main_metric: str, tracking: Tracking | None = None) -> None:
        self.path, self.cfg, self.main, self.tracking = path, cfg, main_metric, tracking
        self.total_up = self.total_down = 0
        self.t0 = time.perf_counter()

    def write(self, record: dict) -> None:
        self.total_up += record.get("bytes_up", 0)
        self.total_down += record.get("bytes_down", 0)
        record.update(total_bytes_up=self.total_up, total_bytes_down=self.total_down,
                      elapsed_s=round(time.perf_counter() - self.t0, 2))
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tracking is not None:
            self.tracking.log_round(record)
        metric = record.get(self.main)
        shown = f"{self.main} {metric:.4f}" if isinstance(metric, float) else f"{self.main} -"
        log(INFO, "[fedtt] round %d/%d  %s  train-loss %s  up %.2f MB  down %.2f MB  (total %.2f MB)  %.0fs",
            record["round"], self.cfg.num_server_rounds, shown,
            f"{record['train_loss']:.4f}" if record.get("train_loss") is not None else "-",
            record.get("bytes_up", 0) / 1e6, record.get("bytes_down", 0) / 1e6,
            (self.total_up + self.total_down) / 1e6, record["elapsed_s"])


def wire_bytes(message: Message) -> int:
    """Bytes of a message as Flower transmits it: the serialized objects it is split into for transport
    (message, records, arrays, array chunks; identical objects within a message travel once)."""
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())


def exchange(grid: Grid, messages: list[Message], timeout: float, max_wait: float = 1.0) -> list[Message]:
    """Push ``messages`` and pull their replies until all are in or ``timeout`` passes: Flower's
    ``send_and_receive``, polling every 0.1 s growing to ``max_wait`` instead of every 3 s (over a real
    SuperLink that fixed wait was seconds of every round; a pull is one small request)."""
    pending = set(grid.push_messages(messages))
    replies: list[Message] = []
    deadline, wait = time.monotonic() + timeout, 0.1
    while pending:
        got = list(grid.pull_messages(pending))
        replies += got
        pending -= {m.metadata.reply_to_message_id for m in got}
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(wait)
        wait = min(wait * 1.5, max_wait)
    return replies


def run_rounds(strategy: FedTT, grid: Grid, arrays: ArrayRecord, start: int, num_rounds: int,
               train_config: ConfigRecord, after_round: Callable[[int, ArrayRecord], None],
               timeout: float = 3600) -> ArrayRecord:
    """Rounds ``start..num_rounds`` of train (and federated evaluation, when configured), then
    ``after_round``: what Flower's ``Strategy.start`` does, from any round, so a run can resume."""
    for server_round in range(start, num_rounds + 1):
        log(INFO, "[ROUND %d/%d]", server_round, num_rounds)
        round_started = time.perf_counter()
        sent = list(strategy.configure_train(server_round, arrays, ConfigRecord(dict(train_config)), grid))
        replies = exchange(grid, sent, timeout)
        # what Flower itself puts on the wire for these messages, next to the strategy's count of tensor bytes
        strategy.rounds.setdefault(server_round, {}).update(
            wire_bytes_down=sum(map(wire_bytes, sent)), wire_bytes_up=sum(map(wire_bytes, replies)))
        started = time.perf_counter()
        aggregated, _ = strategy.aggregate_train(server_round, replies)
        strategy.rounds[server_round]["aggregate_s"] = time.perf_counter() - started
        if aggregated is not None:
            arrays = aggregated
        messages = list(strategy.configure_evaluate(server_round, arrays, ConfigRecord(), grid))
        if messages:
            evaluated = exchange(grid, messages, timeout)
            # counted like the strategy's bytes_down: with delta sync an update may travel here, not in train
            strategy.rounds[server_round]["wire_bytes_down"] += sum(map(wire_bytes, messages))
            strategy.rounds[server_round]["wire_bytes_up"] += sum(map(wire_bytes, evaluated))
            strategy.aggregate_evaluate(server_round, evaluated)
        strategy.rounds[server_round]["round_s"] = time.perf_counter() - round_started  # without after_round
        after_round(server_round, arrays)
    return arrays


CHECKPOINT = "checkpoint.pkl"


def save_round(out: Path, server_round: int, arrays: ArrayRecord, strategy: FedTT, metrics_log: MetricsLog) -> None:
    """After every round, atomically: the global adapters, the strategy's state, the RNG states and the
    byte totals, so ``resume`` continues exactly where this round ended."""
    state = {"round": server_round, "arrays": {n: a.numpy() for n, a in arrays.items()},
             "strategy": strategy.get_state(), "random": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state(), "total_up": metrics_log.total_up,
             "total_down": metrics_log.total_down, "elapsed": time.perf_counter() - metrics_log.t0}
    tmp = out / (CHECKPOINT + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(state, f)
    os.replace(tmp, out / CHECKPOINT)


def resume_run(out: Path, strategy: FedTT, metrics_log: MetricsLog) -> tuple[int, ArrayRecord]:
    """``(first round to run, global adapters)`` from the run folder's last checkpoint; metrics.jsonl is
    cut back to the rounds the checkpoint holds. The file is this server's own pickle: load only yours."""
    path = out / CHECKPOINT
    if not path.exists():
        raise FileNotFoundError(f"resume: {path} does not exist (no round of that run finished)")
    with open(path, "rb") as f:
        state = pickle.load(f)
    strategy.set_state(state["strategy"])
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    metrics_log.total_up, metrics_log.total_down = state["total_up"], state["total_down"]
    metrics_log.t0 -= state["elapsed"]
    lines = metrics_log.path.read_text().splitlines() if metrics_log.path.exists() else []
    kept = [x for x in lines if json.loads(x)["round"] <= state["round"]]
    metrics_log.path.write_text("".join(x + "\n" for x in kept))
    return state["round"] + 1, ArrayRecord({n: Array(a) for n, a in state["arrays"].items()})


def round_record(cfg: RunConfig, strategy: FedTT, server_round: int) -> dict:
    """A round's line of metrics.jsonl from the strategy's statistics (central metrics are added by
    :class:`CentralEval`; totals and time by :class:`MetricsLog`)."""
    stats = strategy.rounds.get(server_round, {})
    record = {"round": server_round, "method": cfg.method, "schedule": stats.get("plan"),
              "clients": stats.get("clients", 0), "replies": stats.get("replies", 0),
              "rejected": stats.get("rejected", 0), "bytes_up": stats.get("bytes_up", 0),
              "bytes_down": stats.get("bytes_down", 0),
              "train_loss": stats.get("train_metrics", {}).get("train-loss"), "errors": stats.get("errors", 0),
              "skipped": stats.get("skipped", False), "lr": cfg.round_lr(server_round) if server_round else None,
              "wire_bytes_up": stats.get("wire_bytes_up", 0), "wire_bytes_down": stats.get("wire_bytes_down", 0)}
    record.update({k: stats[k] for k in ("dp_epsilon_max", "dp_epsilon_mean", "round_s", "aggregate_s",
                                         "client_train_s_sum", "client_train_s_max") if k in stats})
    record.update({f"fed_{k.replace('-', '_')}": v for k, v in stats.get("evaluate_metrics", {}).items()
                   if k != "num-examples"})
    return record


class CentralEval:
    """The server's own dev evaluation of the global adapters (every ``eval-every`` rounds and the last), and a
    prompt-scored decoder's zero-shot baseline in round 0. Off without ``central-eval`` and for a personalised
    method, whose model lives on the nodes (it needs no data on the server then)."""

    def __init__(self, cfg: RunConfig, resolved: Resolved, model, tokenizer, device) -> None:
        self.cfg, self.model, self.device, self.prompts = cfg, model, device, resolved.prompt_task
        self.task = task_of(cfg)
        self.on = cfg.central_eval and not resolved.method.personal
        dev, self.note = load_dev(self.task, cfg.data_dir or None) if self.on else (None, None)
        if dev is not None and cfg.eval_examples:
            dev = dev.select(range(min(cfg.eval_examples, len(dev))))
        self.loader = None if dev is None else make_loader(
            tokenize(dev, tokenizer, cfg.max_length, self.prompts), tokenizer, cfg.eval_batch_size, False,
            prompt_task=self.prompts)

    def __call__(self, server_round: int, arrays: ArrayRecord) -> tuple[dict, MetricRecord | None]:
        """``(what to add to the round's record, the central MetricRecord or None)``."""
        cfg = self.cfg
        if not self.on or (server_round % cfg.eval_every and server_round != cfg.num_server_rounds):
            return {}, None
        set_adapter_state(self.model, {n: a.numpy() for n, a in arrays.items()})
        res = evaluate(self.model, self.loader, self.task, self.device)
        added = {k: v for k, v in res.items() if k != "num_examples"}
        if server_round == 0 and self.prompts is not None:  # a decoder's baseline: the backbone, no adapters
            with adapters_off(self.model):
                zero = evaluate(self.model, self.loader, self.task, self.device)
            added.update({f"zero_shot_{k}": v for k, v in zero.items() if k != "num_examples"})
            log(INFO, "[fedtt] zero-shot (no adapters): %s", {k: round(v, 4) for k, v in zero.items()})
        return added, MetricRecord({k: float(v) for k, v in res.items()})


def write_config(out: Path, cfg: RunConfig, resolved: Resolved, state: dict, strategy: FedTT,
                 note: str | None) -> None:
    """config.json: the run config, the resolved ``auto`` values and what travels."""
    (out / "config.json").write_text(json.dumps({
        "run_config": cfg.model_dump(by_alias=True), "resolved": resolved.as_dict(), "method": cfg.method,
        "adapter_config": resolved.adapter_config(cfg).model_dump() if resolved.method.tt_config else None,
        "travelling_tensors": len(state), "travelling_params": int(sum(t.numel() for t in state.values())),
        "data_note": note, "strategy": type(strategy).__name__, "schedule": repr(strategy.schedule),
        "inner": type(strategy.inner).__name__,
    }, indent=2))


def finish(out: Path, cfg: RunConfig, resolved: Resolved, strategy: FedTT, metrics_log: MetricsLog,
           final: MetricRecord | None, start: int) -> dict:
    """summary.json and the run's last log lines; a run that never trained fails (not a silent "completed")."""
    if final is None and resolved.method.personal:  # evaluated on the nodes, each with its own local tensors
        final = {f"fed_{k}": v for k, v in strategy.rounds.get(cfg.num_server_rounds, {}).get(
            "evaluate_metrics", {}).items() if k != "num-examples"} or None
    summary = {
        "run_folder": str(out), "rounds": cfg.num_server_rounds,
        "final": dict(final) if final is not None else None,
        "total_bytes_up": metrics_log.total_up, "total_bytes_down": metrics_log.total_down,
        "wall_s": round(time.perf_counter() - metrics_log.t0, 1),
        **round_health(strategy, range(start, cfg.num_server_rounds + 1)),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    log(INFO, "[fedtt] done: %s", json.dumps(summary))
    if summary["problems"]:
        log(WARNING, "[fedtt] WARNING: %s (metrics.jsonl has them per round)", summary["problems"])
    if summary["untrained"]:
        raise RuntimeError(f"{summary['problems']}; the run folder {out} keeps what there is")
    if summary["errors_every_round"] and not cfg.allow_node_errors:
        raise RuntimeError(f"{summary['problems']}: the federation ran without some of its nodes (their errors are "
                           f"in the log); set allow-node-errors = true to accept that. Run folder: {out}")
    return summary


def main(grid: Grid, context: Context) -> dict:
    """Run a whole federated fine-tune; returns the summary that is also written to summary.json."""
    cfg = RunConfig.from_flower(context.run_config)
    random.seed(cfg.seed)  # Flower samples clients with the `random` module
    np.random.seed(cfg.seed)
    resolved = resolve(cfg)
    model, tokenizer = build_model(cfg, resolved)  # seeded: the one initialisation every client starts from
    device = pick_device(cfg.device)
    model.to(device)
    state = get_adapter_state(model)
    strategy = build_strategy(cfg, list(state), resolved)

    out = run_folder(cfg)
    if cfg.resume and (done := finished_rounds(out)) >= cfg.num_server_rounds:
        log(INFO, "[fedtt] the run in %s already finished %d round(s) (num-server-rounds = %d): nothing to do; "
            "raise num-server-rounds to continue it", out, done, cfg.num_server_rounds)
        summary_file = out / "summary.json"
        return json.loads(summary_file.read_text()) if summary_file.exists() else {"run_folder": str(out)}
    central = CentralEval(cfg, resolved, model, tokenizer, device)
    if central.note:
        log(INFO, "[fedtt] %s", central.note)
    write_config(out, cfg, resolved, state, strategy, central.note)
    tracking = Tracking(parse_trackers(cfg.tracker), Path(cfg.tracker_dir or out / "tracking").expanduser(), out.name,
                        cfg.tracker_uri, ids=out / "tracking-ids.json")
    tracking.log_config(json.loads((out / "config.json").read_text()))
    # a personalised method's main metric is the nodes' own (federated evaluation)
    main_metric = ("fed_" if resolved.method.personal else "") + task_of(cfg).metrics[0]
    metrics_log = MetricsLog(out / "metrics.jsonl", cfg, main_metric, tracking)
    log(INFO, "[fedtt] %s on %s/%s: %d travelling tensors (%d values); %s; run folder %s", cfg.method, cfg.model,
        cfg.task, len(state), sum(t.numel() for t in state.values()),
        ", ".join(f"{k} {v}" for k, v in resolved.as_dict().items()), out)
    if cfg.dp != "off" and cfg.batch_size < DP_BATCH_HINT:
        log(WARNING, "[fedtt] dp with batch-size %d: DP-SGD's noise on the averaged gradient shrinks with the "
            "expected batch, and below a few hundred it usually swamps the clipped signal (one-class predictions); "
            "docs/privacy.md's recipe: batch-size 512, physical-batch 64, optimizer sgd, lr 2.0", cfg.batch_size)
    if resolved.method.personal and cfg.central_eval:
        log(INFO, "[fedtt] central evaluation does not apply to %s: part of its model stays on each node; it is "
            "evaluated there, on every node's dev share, every round (fed_* in metrics.jsonl)", cfg.method)

    results: dict[int, MetricRecord | None] = {}

    def after_round(server_round: int, arrays: ArrayRecord) -> None:
        added, results[server_round] = central(server_round, arrays)
        metrics_log.write({**round_record(cfg, strategy, server_round), **added})
        if server_round:
            save_round(out, server_round, arrays, strategy, metrics_log)

    start, arrays = 1, ArrayRecord({n: Array(np.ascontiguousarray(t.numpy())) for n, t in state.items()})
    failed = True
    try:
        if cfg.resume:
            start, arrays = resume_run(out, strategy, metrics_log)
            log(INFO, "[fedtt] resuming %s after round %d", out, start - 1)
        else:
            after_round(0, arrays)
        arrays = run_rounds(strategy, grid, arrays, start, cfg.num_server_rounds,
                            ConfigRecord({"proximal-mu": cfg.proximal_mu}), after_round, timeout=cfg.round_timeout)
        set_adapter_state(model, {n: a.numpy() for n, a in arrays.items()})
        save_adapter(model.cpu(), out / "adapter.safetensors", task=cfg.task, method=cfg.method)
        summary = finish(out, cfg, resolved, strategy, metrics_log, results.get(cfg.num_server_rounds), start)
        failed = False
        return summary
    finally:
        tracking.close(failed)


def round_health(strategy: FedTT, rounds: range) -> dict:
    """What went wrong in ``rounds``: skipped rounds, rejected replies and client errors, as a summary line; and
    whether the run trained at all (every round after the first skipped, or the only one, counts as not)."""
    stats = [strategy.rounds.get(r, {}) for r in rounds]
    skipped = [r for r, s in zip(rounds, stats, strict=True) if s.get("skipped")]
    rejected, errors = sum(s.get("rejected", 0) for s in stats), sum(s.get("errors", 0) for s in stats)
    problems = []
    if skipped:
        problems.append(f"{len(skipped)} of {len(rounds)} rounds skipped (rounds {skipped[:10]}; "
                        f"{stats[rounds.index(skipped[0])].get('skip_reason', 'no usable replies')})")
    if rejected:
        problems.append(f"{rejected} replies rejected")
    failing = bool(rounds) and all(s.get("errors", 0) for s in stats)
    if errors:
        problems.append(f"{errors} client errors" + (" (some node failed in every round)" if failing else ""))
    later = [r for r in rounds if r > 1] or list(rounds)
    untrained = bool(later) and set(later) <= set(skipped)
    if untrained:  # what the FedAdam bug looked like: round 1 trained, every later reply was rejected
        problems.insert(0, "no round trained" if set(rounds) <= set(skipped) else
                        f"training stopped after round {min(set(rounds) - set(skipped))}")
    return {"rounds_skipped": skipped, "replies_rejected": rejected, "client_errors": errors,
            "problems": "; ".join(problems), "untrained": untrained, "errors_every_round": failing}
