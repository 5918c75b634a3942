"""The ClientApp's work: load the round's adapter tensors into a cached model, train, reply.

One backbone per process: the model is built once (per model/adapter config) and only the small
adapter state is swapped in for every message, whichever client (partition) the message is for.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from datasets.utils.logging import disable_progress_bar
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from torch import nn
from transformers import PreTrainedTokenizerBase

from strategies.protocol import receive_global, reply_content, round_trainable
from strategies.virtual import PARTITION_KEY

from .adapters import get_adapter_state, set_adapter_state
from .config import RunConfig, model_key, node_rank
from .data import (
    PartitionSpec,
    check_partition_id,
    load_partition,
    load_split,
    load_task,
    partitioner_for,
)
from .methods.build import build_model, prompt_task
from .methods.registry import get_method
from .models import pick_device
from .privacy import check_budget, dp_train_steps, settings_for
from .readers import expand
from .tasks import TaskSpec, task_of
from .train import cycle, label_prior_shift, make_loader, make_optimizer, tokenize, tokenize_cached, train_steps
from .train import evaluate as evaluate_model

disable_progress_bar()  # one bar per client and round drowns the run log
AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: Context.state keys: the node's privacy accounting, and a personalised method's local tensors
DP_KEY, LOCAL_KEY = "fedtt-dp", "fedtt-local"
#: node-config keys with which a SuperNode brings its own files of a custom task
NODE_FILE_KEYS = ("train-file", "dev-file")


@dataclass
class Session:
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    local_init: dict[str, torch.Tensor]  # a personalised method's local tensors as built (a node's first round)


@functools.lru_cache(maxsize=2)
def _session(key: tuple) -> Session:
    cfg = RunConfig(**dict(key))
    model, tokenizer = build_model(cfg)
    dev = pick_device(cfg.device)
    params = dict(model.named_parameters())
    return Session(model.to(dev), tokenizer, dev, {n: params[n].detach().clone() for n in model.fedtt_local_names})


def session(cfg: RunConfig) -> Session:
    """The process-wide model for this run config (built on first use, then reused)."""
    return _session(model_key(cfg))


def load_history(state: RecordDict) -> list[tuple[float, float, int]]:
    """The node's DP-SGD rounds so far: ``(sigma, q, steps)`` each (its privacy accountant's input)."""
    if DP_KEY not in state:
        return []
    rec = state[DP_KEY]
    return list(zip(rec["sigma"], rec["q"], rec["steps"], strict=True))


def save_history(state: RecordDict, history: list[tuple[float, float, int]]) -> None:
    state[DP_KEY] = ConfigRecord({"sigma": [float(h[0]) for h in history], "q": [float(h[1]) for h in history],
                                  "steps": [int(h[2]) for h in history]})


@functools.lru_cache(maxsize=4)
def _task_data(task: TaskSpec, data_dir: str, split: str) -> Dataset:
    """One split of the node's task. A node that only trains needs only a train file (its own folder may hold
    nothing else); a task shipped without one gets the dev file's split (``load_task``)."""
    if split == "train":
        try:
            return load_split(task, "train", data_dir or None)
        except FileNotFoundError:
            pass
    train, dev, _ = load_task(task, data_dir or None)
    return train if split == "train" else dev


@functools.lru_cache(maxsize=4)
def _partitioner(task: TaskSpec, data_dir: str, split: str, spec: PartitionSpec):
    """One partitioner per dataset and spec, so the split of the whole dataset is computed once per
    process rather than once per client."""
    return partitioner_for(_task_data(task, data_dir, split), spec, task)


def client_data(cfg: RunConfig, partition_id: int, num_partitions: int, split: str) -> Dataset:
    """This client's tokenized share: its partition of train (by the run's partitioning) or its IID shard of dev
    (for federated evaluation). Cached per process, except a virtual client's training partition: another client
    each call, rarely seen again, so neither the memory nor the on-disk token cache would be read back."""
    if split == "train" and cfg.virtual_clients:
        return _share(cfg, partition_id, num_partitions, split, tokenize)
    return _cached_share(cfg, partition_id, num_partitions, split)


@functools.lru_cache(maxsize=64)
def _cached_share(cfg: RunConfig, partition_id: int, num_partitions: int, split: str) -> Dataset:
    return _share(cfg, partition_id, num_partitions, split, tokenize_cached)


def _share(cfg: RunConfig, partition_id: int, num_partitions: int, split: str, tokenizing) -> Dataset:
    if split == "train" and num_partitions > 1:
        spec = PartitionSpec(cfg.partition, num_partitions, cfg.alpha, cfg.classes_per_client, cfg.seed)
    else:
        spec = PartitionSpec("iid", num_partitions, seed=cfg.seed)
    check_partition_id(spec, partition_id)
    part = load_partition(_partitioner(task_of(cfg), cfg.data_dir, split, spec), spec, partition_id)
    if split == "dev" and cfg.eval_examples:  # this node's share of the evaluated rows
        part = part.select(range(min(len(part), -(-cfg.eval_examples // num_partitions))))
    return tokenizing(part, session(cfg).tokenizer, cfg.max_length, prompt_task(cfg))


def node_partition(context: Context) -> tuple[RunConfig, int, int]:
    """This node's run config and data: ``(config, partition-id, num-partitions)``.

    The node config decides (simulation sets ``partition-id``/``num-partitions``; a deployed SuperNode gets
    ``--node-config``): ``data-dir`` points at the node's own task folder (it replaces the run config's,
    so private data never needs to be known to the server), and without a ``partition-id`` the whole of
    that folder is this node's data; with one, the node trains on that partition of it."""
    nc, run_config = context.node_config, dict(context.run_config)
    if "data-dir" in nc:
        if not Path(str(nc["data-dir"])).is_dir():
            raise ValueError(f"node config 'data-dir': folder {nc['data-dir']!r} does not exist on this node")
        run_config["data-dir"] = str(nc["data-dir"])
    own = [key for key in NODE_FILE_KEYS if key in nc]
    for key in own:  # a node's own files of a custom task (its CSV, ...): they replace the run config's
        try:
            expand(str(nc[key]))
        except FileNotFoundError as e:
            raise ValueError(f"node config '{key}': {e} on this node") from None
        run_config[key] = str(nc[key])
    cfg = RunConfig.from_flower(run_config)
    rank, key = node_rank(nc, cfg), "lora_rank" if cfg.method == "flora" else "rank"
    if rank != getattr(cfg, key):  # this node's own adapter rank: its model is built at it (the server tailors)
        cfg = cfg.model_copy(update={key: rank, "node_ranks": ""})
    if "partition-id" not in nc:
        if "data-dir" in nc or own:
            return cfg, 0, 1
        raise ValueError("this node has no data: give the SuperNode --node-config 'data-dir=\"/its/task/folder\"' or "
                         "'train-file=\"/its/file.csv\"' (its own data) or 'partition-id=0 num-partitions=N' (a "
                         "partition of a shared folder)")
    num = int(nc.get("num-partitions", cfg.num_partitions))
    if num < 1:
        raise ValueError("the number of partitions is unknown: set 'num-partitions' in the node config "
                         "or the run config")
    return cfg, int(nc["partition-id"]), num


def message_partition(msg: Message, context: Context, cfg: RunConfig, pid: int, num: int) -> tuple[int, int]:
    """The partition a training message is for: this node's own, or under ``virtual-clients`` the one the server
    names (checked: it crossed the network)."""
    if not cfg.virtual_clients:
        return pid, num
    if "partition-id" not in context.node_config:
        raise ValueError(f"virtual-clients = {cfg.virtual_clients} partitions a shared data folder in a simulation; "
                         "this node trains its own data (its node config has no partition-id): set "
                         "virtual-clients = 0")
    named = msg.content["config"].get(PARTITION_KEY) if "config" in msg.content else None
    if isinstance(named, bool) or not isinstance(named, int) or not 0 <= named < cfg.virtual_clients:
        raise ValueError(f"virtual-clients = {cfg.virtual_clients}: the server's message names partition {named!r} "
                         f"({PARTITION_KEY}), not one of 0..{cfg.virtual_clients - 1}")
    return named, cfg.virtual_clients


def _load_round_state(msg: Message, context: Context, cfg: RunConfig, sess: Session) -> None:
    """The global tensors of this message (and the node's copy of the frozen ones), and a personalised method's
    local tensors: this node's own from its Context state, or as built in its first round."""
    method = get_method(cfg.method)
    cache = context.state if method.rounds != "all" and cfg.sync == "delta" else None
    received = receive_global(msg.content, cache)
    set_adapter_state(sess.model, {n: a.numpy() for n, a in received.items()})
    if sess.local_init:
        stored = context.state.array_records.get(LOCAL_KEY)
        values = {n: torch.from_numpy(stored[n].numpy()) for n in stored} if stored is not None else sess.local_init
        params = dict(sess.model.named_parameters())
        with torch.no_grad():
            for n in sess.local_init:
                params[n].copy_(values[n])


def _save_local(context: Context, sess: Session) -> None:
    """A personalised method's local tensors after training: they stay on this node, for its next round."""
    if sess.local_init:
        params = dict(sess.model.named_parameters())
        context.state[LOCAL_KEY] = ArrayRecord(
            {n: Array(np.ascontiguousarray(params[n].detach().cpu().numpy())) for n in sess.local_init})


def train(msg: Message, context: Context) -> Message:
    """Train the round's tensors for ``local-steps`` optimizer steps; reply with exactly those tensors."""
    cfg, pid, num = node_partition(context)
    pid, num = message_partition(msg, context, cfg, pid, num)
    sess = session(cfg)
    data = client_data(cfg, pid, num, "train")
    if len(data) == 0:
        raise ValueError(f"partition {pid} of {num} has no training examples")
    _load_round_state(msg, context, cfg, sess)
    names = round_trainable(msg.content)
    params = dict(sess.model.named_parameters())
    for n in sess.model.fedtt_state_names:
        params[n].requires_grad_(n in names)
    trainable = [params[n] for n in [*names, *sess.local_init]]
    server_round = int(msg.content["config"].get("server-round", 0))
    seed = cfg.seed * 1_000_003 + server_round * max(1_009, num) + pid  # distinct per (round, client)
    torch.manual_seed(seed)
    loader = make_loader(data, sess.tokenizer, cfg.batch_size, shuffle=True, seed=seed, prompt_task=prompt_task(cfg))
    optimizer = make_optimizer(trainable, cfg.local_optimizer, cfg.round_lr(server_round), cfg.weight_decay,
                               cfg.momentum)
    extra = {}
    started = time.perf_counter()
    dp = settings_for(cfg, len(data))
    if dp is None:
        mu = float(msg.content["config"].get("proximal-mu", 0.0))
        spec = task_of(cfg)
        shift = (label_prior_shift(data["label"], len(spec.labels), cfg.logit_tau())
                 if spec.kind == "classification" else None)
        stats = train_steps(sess.model, cycle(loader), optimizer, cfg.local_steps, sess.device, AMP[cfg.amp],
                            max_grad_norm=cfg.max_grad_norm or None, proximal_mu=mu, logit_shift=shift,
                            physical_batch=cfg.physical_batch)
    else:
        settings, q = dp
        history = load_history(context.state)
        step = (settings.noise_multiplier, q, cfg.local_steps)
        epsilon = check_budget(history, step, settings, f"client (partition {pid})")
        stats = dp_train_steps(sess.model, loader, optimizer, cfg.local_steps, sess.device, settings, seed)
        save_history(context.state, [*history, step])
        extra = {"dp-epsilon": epsilon, "dp-noise-multiplier": settings.noise_multiplier}
    extra["train-seconds"] = time.perf_counter() - started
    _save_local(context, sess)
    state = get_adapter_state(sess.model)
    trained = ArrayRecord({n: Array(np.ascontiguousarray(state[n].numpy())) for n in names})
    metrics = MetricRecord({"train-loss": stats["train_loss"], "num-examples": len(data),
                            "steps": cfg.local_steps, **extra})
    feedback = context.state if cfg.wire_feedback else None
    return Message(reply_content(msg.content, trained, metrics, state=feedback), reply_to=msg)


def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global adapters on this client's shard of the dev set."""
    cfg, pid, num = node_partition(context)
    sess = session(cfg)
    _load_round_state(msg, context, cfg, sess)
    data = client_data(cfg, pid, num, "dev")
    if len(data) == 0:
        raise ValueError(f"dev shard {pid} of {num} is empty: fewer dev examples than clients")
    loader = make_loader(data, sess.tokenizer, cfg.eval_batch_size, shuffle=False, prompt_task=prompt_task(cfg))
    result = evaluate_model(sess.model, loader, task_of(cfg), sess.device, AMP[cfg.amp])
    result["num-examples"] = result.pop("num_examples")
    return Message(RecordDict({"metrics": MetricRecord(result)}), reply_to=msg)
