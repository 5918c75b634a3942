"""The run's model, built the same way on the server and on every client, and the ``auto`` settings resolved.

:func:`resolve` is the one place that turns a :class:`~fedtt_flwr.config.RunConfig`'s ``auto`` values into what
the run does (it reads the model's config file, which validation never does); :func:`build_model` loads the
model, sets its head and lets the method (:mod:`.registry`) inject its modules.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ..config import RunConfig, TTAdapterConfig
from ..models import MEAN_POOLING_TYPES, load_model, model_config, set_mean_pooling, trained_pooling
from ..prompts import PROMPTS, CandidateScorer, ChoiceScorer, choice_ids, get_prompt, is_decoder_only
from ..tasks import task_of
from .registry import Method, get_method


@functools.lru_cache(maxsize=16)
def _model_type(model: str) -> str:
    return model_config(model).model_type


def prompt_task(cfg: RunConfig) -> str | None:
    """The task name when the run scores answers with a causal LM (``task-format``; ``auto``: decoder-only
    architectures, for multiple choice and for the presets with a prompt template), else None (a head: a
    classifier, a regression output, or an encoder's multiple-choice scorer)."""
    decoder = is_decoder_only(_model_type(cfg.model))
    if task_of(cfg).kind == "generation":
        if not decoder:
            raise ValueError(f"task-kind = 'generation' trains a decoder LM to answer; {cfg.model} is not one (use a "
                             "LLaMA-family model, e.g. smollm2-135m)")
        return cfg.task
    if cfg.task_format == "classifier" or (cfg.task_format == "auto" and not decoder):
        return None
    spec = task_of(cfg)
    if spec.kind == "regression":
        if cfg.task_format == "prompt":
            raise ValueError(f"task {spec.name} is a regression: its score comes from a head, not a prompt (use "
                             "task-format = 'auto' or 'classifier')")
        return None
    if spec.kind == "classification" and cfg.task not in PROMPTS:
        if cfg.task_format == "prompt":
            get_prompt(cfg.task)  # the error that names the templates there are
        return None  # auto: a decoder classifies your own task with a head (LlamaForSequenceClassification)
    return cfg.task


def head_pooling(cfg: RunConfig) -> Literal["cls", "mean"]:
    """What a classification head reads (``pooling`` resolved): ``auto`` is the masked token mean for a BERT
    checkpoint whose sentence-transformers folder says it was trained that way, else the [CLS] pooler."""
    if cfg.pooling != "auto":
        return cfg.pooling
    if trained_pooling(cfg.model) == "mean" and model_config(cfg.model).model_type in MEAN_POOLING_TYPES:
        return "mean"
    return "cls"


@dataclass(frozen=True)
class Resolved:
    """A run's settings as it runs them: the method, and every ``auto`` value decided."""

    method: Method
    prompt_task: str | None  # the task when a decoder scores prompt answers, else None (a classification head)
    pooling: Literal["cls", "mean", "prompt"]
    adapter_init: Literal["loretta", "near-identity"]
    train_layernorm: bool | Literal["weight"]
    logit_adjust: float
    fraction_evaluate: float
    optimizer: str  # the clients' local optimizer
    lr: float  # the clients' learning rate before lr-schedule

    def adapter_config(self, cfg: RunConfig) -> TTAdapterConfig:
        return TTAdapterConfig(rank=cfg.rank, bottleneck=cfg.bottleneck, bias=cfg.adapter_bias,
                               dense=self.method.family == "dense", tensorized_classifier=cfg.tensorized_classifier,
                               init=self.adapter_init, train_layernorm=self.train_layernorm)

    def as_dict(self) -> dict:
        """For the log and config.json."""
        return {"adapter-init": self.adapter_init, "train-layernorm": self.train_layernorm,
                "logit-adjust": self.logit_adjust, "pooling": self.pooling,
                "fraction-evaluate": self.fraction_evaluate, "optimizer": self.optimizer, "lr": self.lr}


def resolve(cfg: RunConfig) -> Resolved:
    """Every ``auto`` setting of ``cfg`` decided, once. TT adapters under a classification head are the setting
    the ``auto`` values of ``adapter-init`` and ``train-layernorm`` were measured in (MiniLM, label skew,
    docs/convergence.md): near-identity cores and the LayerNorm gains; baselines and prompt-scored decoders keep
    LoRETTA's init and no norms (for decoders the RMSNorm gains would double LLaMA-2-7B's TT bytes, unmeasured).
    A personalised method is evaluated on the nodes: ``fraction-evaluate`` 0 becomes 1."""
    method = get_method(cfg.method)
    task = prompt_task(cfg)
    tt_head = method.family == "tt" and task is None
    return Resolved(
        method=method, prompt_task=task, pooling="prompt" if task else head_pooling(cfg),
        adapter_init=cfg.adapter_init if cfg.adapter_init != "auto" else ("near-identity" if tt_head else "loretta"),
        train_layernorm=cfg.train_layernorm if cfg.train_layernorm != "auto" else ("weight" if tt_head else False),
        logit_adjust=cfg.logit_tau() if task_of(cfg).kind == "classification" else 0.0,
        fraction_evaluate=cfg.fraction_evaluate or (1.0 if method.personal else 0.0), optimizer=cfg.local_optimizer,
        lr=cfg.base_lr)


def build_model(cfg: RunConfig, resolved: Resolved | None = None) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """The run's model with the method's trainable modules. Seeded, and the same code on the server and
    on every client, so tensors that never travel (FFA-LoRA's A) are identical everywhere. A decoder
    becomes a :class:`CandidateScorer` (its LM head frozen, no new head). ``resolved``: ``resolve(cfg)``, when
    the caller has it already (it reads the model's config files)."""
    torch.manual_seed(cfg.seed)
    resolved = resolved or resolve(cfg)
    spec = task_of(cfg)
    labels = spec.num_outputs
    if resolved.prompt_task is not None:
        if cfg.pooling == "mean":
            raise ValueError(f"pooling = 'mean' is for a classification head; {cfg.model} scores prompt answers "
                             f"with its LM head (task-format = '{cfg.task_format}'): use pooling = 'auto', or "
                             f"task-format = 'classifier' for a head")
        prompt = None if spec.kind in ("multiple-choice", "generation") else get_prompt(cfg.task)  # no template: stop
        hf, tokenizer = load_model(cfg.model, "causal-lm", dtype=cfg.dtype)
        if spec.kind == "generation":
            model = hf  # instruction tuning: the LM itself, its head frozen; loss on the responses
        elif prompt is None:
            model = ChoiceScorer(hf, len(spec.choices))
        else:
            model = CandidateScorer(hf, choice_ids(tokenizer, prompt))
        model.fedtt_source = {**hf.fedtt_source, "num_labels": labels, "num_choices": len(spec.choices),
                              **({"generation": True} if spec.kind == "generation" else {"prompt_task": cfg.task})}
    else:
        if spec.kind == "multiple-choice" and is_decoder_only(_model_type(cfg.model)):
            raise ValueError(f"multiple choice on the decoder {cfg.model} scores each candidate with its LM head: use "
                             "task-format = 'auto' or 'prompt'")
        hf, tokenizer = load_model(cfg.model, spec.kind, num_labels=labels, dtype=cfg.dtype)
        if resolved.pooling == "mean":
            set_mean_pooling(hf)
        model = hf
    if cfg.gradient_checkpointing:  # non-reentrant: works although the frozen inputs need no gradient
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = resolved.method.inject(model, cfg, resolved)
    if not hasattr(model, "fedtt_local_names"):
        model.fedtt_local_names = ()
    return model, tokenizer
