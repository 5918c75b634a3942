"""Configuration objects, validated with pydantic so bad values fail at start with the key named."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

Activation = Literal["relu", "gelu", "silu", "tanh", "identity"]
Placement = Literal["auto", "encoder", "decoder"]
TaskKind = Literal["classification", "regression", "multiple-choice", "causal-lm"]  # what load_model builds


class TTAdapterConfig(BaseModel):
    """Everything that decides the shape of the tensorized adapters (one object per method, as in peft).

    Defaults follow LoRETTA's scripts where the FedTT paper does not say (docs/tensorized-adapters.md).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    rank: int = Field(5, ge=1, description="TT rank r of every core boundary")
    bottleneck: int = Field(64, ge=1, description="adapter bottleneck width")
    activation: Activation = "relu"
    scaling: float = Field(1.0, description="adapter output multiplier")
    placement: Placement = Field(
        "auto", description="encoder: 2 output adapters per block; decoder: 3 on the MLP; auto: detect"
    )
    bias: bool = Field(False, description="TT layers carry a bias (it trains and travels); off by default "
                                          "(ours): it costs 23-65% more bytes for little accuracy")
    train_layernorm: bool | Literal["weight"] = Field(
        False, description="also train (and send) every LayerNorm/RMSNorm: True its gain and bias, 'weight' its gain "
                           "only (on MiniLM/SST-2 the gains give all of the gain, docs/convergence.md)")
    train_head: bool = Field(True, description="train (and send) the newly initialised task head")
    tensorized_classifier: bool | Literal["auto"] = Field(
        "auto", description="replace a RoBERTa-style classifier.dense (h x h) by a TT layer (LoRETTA); auto: "
                            "where the head has one (RoBERTa, XLM-R, ELECTRA, DeBERTa), never for dense=True")
    shape: tuple[int, ...] | None = Field(
        None, description="TT shape for both projections; None picks a preset or factors automatically"
    )
    forward_mode: Literal["auto", "rebuild", "contract"] = "auto"
    init: Literal["loretta", "near-identity"] = Field(
        "loretta", description="loretta: both projections std sqrt(1/(in+out)); near-identity: the up projection "
                               "starts at std `init_up_std`, so the adapted model starts close to the pretrained one")
    init_up_std: float = Field(1e-3, gt=0, description="near-identity: std of the rebuilt up-projection weight")
    dense: bool = Field(False, description="baseline: a dense (Houlsby) adapter at the same placement and "
                                           "bottleneck instead of TT layers")

    @field_validator("shape")
    @classmethod
    def _check_shape(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is not None and (len(v) < 2 or any(n < 1 for n in v)):
            raise ValueError(f"shape must list at least 2 positive mode sizes, got {list(v)}")
        return v

    def shape_for(self, in_features: int, out_features: int) -> tuple[int, ...] | None:
        """The configured shape if it fits this projection, else None (automatic)."""
        if self.shape is None:
            return None
        if math.prod(self.shape) != in_features * out_features:
            raise ValueError(
                f"TTAdapterConfig.shape {list(self.shape)} has product {math.prod(self.shape)}, but a "
                f"{in_features}x{out_features} projection needs {in_features * out_features}"
            )
        return self.shape


Partition = Literal["iid", "dirichlet", "pathological", "column"]
#: ``lr = "auto"`` per local optimizer: AdamW's default of the measured runs; SGD's under DP (benchmarks/dp_probe.py)
AUTO_LR = {"adamw": 3e-3, "sgd": 0.5}
ServerOpt = Literal["fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedprox", "fedmedian", "fedtrimmedavg"]


#: keys renamed since a release; the unknown-key error names the new one
RENAMED = {"dp-physical-batch": "physical-batch"}


def current_keys(run_config: dict) -> dict:
    """A saved run config with its renamed keys under their names of today (a run folder from an earlier version)."""
    return {RENAMED.get(k, k): v for k, v in run_config.items()}


class RunConfig(BaseModel):
    """Every tunable of a federated run: ``[tool.flwr.app.config]`` in pyproject.toml, with the same
    kebab-case keys (``--run-config "rank=8 alpha=0.1"`` overrides them). Validated when the ServerApp
    and the ClientApps start: a bad value stops the run with one message naming the key."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True,
                              alias_generator=lambda name: name.replace("_", "-"))

    # what to train
    model: str = "minilm"
    task: str = Field("sst2", description="a preset (GLUE: cola sst2 mrpc stsb qqp mnli mnli-mm qnli rte wnli; "
                                          "SuperGLUE: boolq cb copa superglue-rte wic) or 'custom': your own data "
                                          "(train-file/dev-file or hub-dataset, and the column keys; docs/data.md)")
    data_dir: str = Field("", description="absolute folder laid out like shared/data; empty: auto / hub")
    # your own data (task = "custom"; docs/data.md)
    task_name: str = Field("", description="custom: a name for the task in logs and run folders")
    task_kind: Literal["auto", "classification", "regression", "multiple-choice", "generation"] = Field(
        "auto", description="custom: what the label is (auto: multiple choice with choice-columns, else "
                            "classification); generation: instruction tuning of a decoder (docs/instruction-tuning.md)")
    train_file: str = Field("", description="custom: a CSV/TSV/JSON/JSONL/Parquet file, a folder or a glob")
    dev_file: str = Field("", description="custom: the evaluation rows, the same way")
    data_format: Literal["auto", "csv", "tsv", "json", "jsonl", "parquet"] = Field(
        "auto", description="custom: the files' format (auto: from the extension)")
    hub_dataset: str = Field("", description="custom: a Hugging Face hub dataset instead of files")
    hub_config: str = ""
    hub_train_split: str = "train"
    hub_dev_split: str = "validation"
    text_columns: str = Field("text", description="custom: the text column, or two (a pair) comma-separated; "
                                                  "multiple choice: the context")
    label_column: str = "label"
    choice_columns: str = Field("", description="custom multiple choice: the candidates' columns, comma-separated")
    labels: str = Field("", description="classification: the label values in id order, comma-separated (empty: "
                                        "the sorted values of the training file, fixed at start)")
    metrics: str = Field("", description="comma-separated (empty: the kind's default)")
    partition_column: str = Field("", description="partition = 'column': one client per value of this column")
    bad_rows: Literal["auto", "error", "skip"] = Field(
        "auto", description="a bad row stops the run with its file, row and column (error), or is skipped and counted "
                            "(skip); auto: error, but skip for QQP (its GLUE release has rows with missing fields)")
    method: str = Field("fedtt", description="a registered method (fedtt_flwr.methods): fedtt, fedtt+, adapter, "
                                             "lora, ffa-lora, rolora, ...")
    rank: int = Field(5, ge=1)
    bottleneck: int = Field(64, ge=1)
    adapter_bias: bool = False
    adapter_init: Literal["auto", "loretta", "near-identity"] = Field(
        "auto", description="how the TT cores start: loretta (LoRETTA's init); near-identity (the adapter starts "
                            "next to the backbone); auto: near-identity for fedtt/fedtt+ with a classification "
                            "head (docs/convergence.md), else loretta")
    train_layernorm: bool | Literal["weight", "auto"] = Field(
        "auto", description="also train and send the LayerNorm (RMSNorm) gains ('weight') or gains and biases (true); "
                            "auto: the gains for fedtt/fedtt+ (docs/convergence.md), none for the baselines")
    tensorized_classifier: bool | Literal["auto"] = Field(
        "auto", description="a RoBERTa-style head's classifier.dense as a TT layer (auto: where there is one)")
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward: less memory for "
                                                            "large models, ~30% more compute")
    pooling: Literal["auto", "cls", "mean"] = Field(
        "auto", description="what a classification head reads: cls: the model's [CLS] pooler; mean: the masked "
                            "mean of the token states (BERT family); auto: what a sentence-transformers folder "
                            "says it was trained with, else cls")
    task_format: Literal["auto", "classifier", "prompt"] = Field(
        "auto", description="classifier: a classification head; prompt: score each label's answer after a prompt "
                            "(decoder LMs); auto: prompt for decoder-only models, else classifier")
    schedule: str = Field("cyclic", description="FedTT+: cyclic | random | all | fixed:I,J,...")
    schedule_middle: int = Field(1, ge=1, description="FedTT+: intermediate cores trained per round")
    sync: Literal["delta", "full"] = "delta"
    tt_average: Literal["cores", "matrices"] = Field(
        "cores", description="fedtt: cores: average core by core (the paper); matrices: average the rebuilt "
                             "matrices and truncate back to TT by TT-SVD (docs/convergence.md)")
    node_ranks: str = Field("", description="fedtt, flora: clients with their own adapter ranks (TT; FLoRA: LoRA) "
                                            "(strategies.hetero). '': every "
                                            "node at `rank`; 'nodes': each SuperNode declares rank=N in its node "
                                            "config; '2,5,8': the simulated node with partition-id i takes the "
                                            "i-th value, cyclically. The global adapter stays at the run's rank "
                                            "(rank; flora: lora-rank), the largest; each node gets it at its own "
                                            "rank (TT: the TT-SVD truncation; FLoRA: the first rows of the fresh A)")
    pack_arrays: bool = Field(True, description="send each message's tensors as one flat array (no per-tensor "
                                                 "header): same numbers, fewer bytes")
    wire_precision: Literal["float32", "float16", "bfloat16", "int8"] = Field(
        "float32", description="how packed tensors travel, both ways (strategies.precision): float32; float16 or "
                               "bfloat16 (half the bytes); int8 with one float32 scale per wire-block values (about "
                               "a quarter). The server keeps float32; lossy replies carry the node's update")
    wire_block: int = Field(128, ge=1, le=1 << 20, description="int8 wire precision: values per scale")
    wire_feedback: bool = Field(True, description="lossy wire precision: each node keeps what rounding dropped from "
                                                  "its update (its Context state) and sends it with its next one "
                                                  "(error feedback); false: dropped every round")
    lora_rank: int = Field(8, ge=1, description="lora, ffa-lora, rolora: LoRA rank on query/value")
    lora_alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator (scale = alpha / rank)")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on LoRA's input (FlowerTune LLM's setting: "
                                                             "lora-rank 32, lora-alpha 64, lora-dropout 0.075)")
    # federation
    num_server_rounds: int = Field(3, ge=1)
    fraction_train: float = Field(1.0, gt=0, le=1)
    fraction_evaluate: float = Field(0.0, ge=0, le=1)
    min_clients: int = Field(2, ge=1, description="fewest clients a round waits for")
    virtual_clients: int = Field(0, ge=0, description="simulation at cross-device scale (10^4 clients and more): N > 0 "
                                                      "clients (partitions of the data) served by the federation's "
                                                      "few SuperNodes; each round the server samples "
                                                      "max(fraction-train x N, min-clients) of them and each sampled "
                                                      "SuperNode trains the one it is named (strategies.virtual). "
                                                      "Clients keep no state: not with dp, a personalised method or "
                                                      "node-ranks; wire error feedback off. 0: one client per "
                                                      "SuperNode")
    min_replies: int = Field(1, ge=1, description="fewer usable replies than this: the round is skipped")
    allow_node_errors: bool = Field(False, description="a run in which some node failed in every round ends "
                                                      "failed (non-zero exit) unless this is true")
    max_examples: int = Field(1_000_000, ge=1, description="the most examples (FedAvg weight) a reply may claim; "
                                                           "a reply claiming more is rejected")
    round_timeout: float = Field(3600.0, gt=0, description="seconds a round waits for replies; late ones are dropped")
    server_opt: ServerOpt = "fedavg"
    server_lr: float = Field(1.0, gt=0, description="server learning rate (FedAdam/FedYogi/FedAdagrad/FedAvgM)")
    server_momentum: float = Field(0.9, ge=0, lt=1, description="FedAvgM momentum")
    proximal_mu: float = Field(0.0, ge=0, description="FedProx proximal term")
    trim_beta: float = Field(0.2, ge=0, lt=0.5, description="FedTrimmedAvg: fraction cut from each end, per value")
    # data
    partition: Partition = "dirichlet"
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration (label skew)")
    classes_per_client: int = Field(1, ge=1, description="pathological partition")
    num_partitions: int = Field(0, ge=0, description="0: take it from the node config (simulation)")
    max_length: int = Field(64, ge=8)
    # local training
    local_steps: int = Field(10, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: Annotated[float, Field(gt=0)] | Literal["auto"] = Field(
        "auto", description="the clients' learning rate (before lr-schedule); auto: 3e-3 for adamw, 0.5 for sgd "
                            "under dp (benchmarks/dp_probe.py); sgd without dp needs a value")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="the clients' lr over the rounds: constant; cosine: from lr in round 1 down to "
                                "lr * lr-final in the last round (quiets late rounds' client drift)")
    lr_final: float = Field(0.1, ge=0, le=1, description="lr-schedule=cosine: last round's lr as a fraction of lr")
    optimizer: Literal["auto", "adamw", "sgd"] = Field(
        "auto", description="the clients' local optimizer; auto: sgd (with momentum) under dp, where AdamW's "
                            "per-coordinate normalisation turns the noise into full-size steps; adamw otherwise")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (optimizer = sgd)")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, ge=0)
    logit_adjust: Annotated[float, Field(ge=0)] | Literal["auto"] = Field(
        "auto", description="label-skew loss: add tau * log(local label frequency) to the logits while training "
                            "(Menon et al. 2021, FedLC); 0: plain cross-entropy; auto: 1 without dp, 0 with dp")
    device: str = "auto"
    amp: Literal["none", "bf16", "fp16"] = "none"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # evaluation and output
    central_eval: bool = True
    eval_every: int = Field(1, ge=1)
    eval_batch_size: int = Field(128, ge=1)
    eval_examples: int = Field(0, ge=0, description="evaluate on at most this many dev rows: the server its first "
                                                    "N, each node ceil(N / nodes) of its own shard; 0: all")
    physical_batch: int = Field(0, ge=0, description="the most examples one forward/backward pass takes: a larger "
                                "batch (with dp: a Poisson batch of expected size batch-size) runs in pieces sorted by "
                                "length whose gradients add up before its one step: flat memory, less padding; 0: "
                                "no limit")
    # local differential privacy (fedtt_flwr.privacy)
    dp: Literal["off", "sigma", "epsilon"] = Field(
        "off", description="DP-SGD on the clients: off; sigma: dp-noise-multiplier as given; epsilon: the noise "
                           "that spends dp-epsilon over the whole run")
    dp_noise_multiplier: float = Field(1.0, ge=0, description="dp=sigma: Gaussian noise std / clipping norm")
    dp_max_grad_norm: float = Field(1.0, gt=0, description="per-example gradient clipping norm C")
    dp_epsilon: float = Field(0.0, ge=0, description="dp=epsilon: the target; dp=sigma: a budget (0: none)")
    dp_delta: float = Field(1e-5, gt=0, lt=1)
    seed: int = 0
    output_dir: str = Field("runs", description="absolute path recommended: flwr runs from the SuperLink's cwd")
    run_name: str = ""
    resume: str = Field("", description="a run folder: continue that run after its last finished round")
    tracker: str = Field("", description="where every round's metrics and the config also go: none, tensorboard, "
                                         "mlflow, wandb, or several comma-separated (fedtt_flwr.tracking; optional "
                                         "extras: pip install -e '.[tracking]')")
    tracker_dir: str = Field("", description="the trackers' local files (TensorBoard events, MLflow's SQLite store, "
                                             "W&B's offline run); '': <run folder>/tracking")
    tracker_uri: str = Field("", description="mlflow: a tracking URI (a server, a database; '': SQLite in "
                                             "tracker-dir); wandb: the project ('': fedtt-flwr)")

    @field_validator("tracker")
    @classmethod
    def _known_trackers(cls, v: str) -> str:
        from .tracking import parse_trackers

        parse_trackers(v)
        return v

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        from .tasks import CUSTOM, PRESETS

        if v not in PRESETS and v != CUSTOM:
            raise ValueError(f"unknown task {v!r}; presets: {', '.join(PRESETS)}, or {CUSTOM!r} for your own data")
        return v

    @model_validator(mode="after")
    def _task_keys(self) -> RunConfig:
        from .tasks import CUSTOM, task_of

        custom = ("task_name", "task_kind", "train_file", "dev_file", "data_format", "hub_dataset", "hub_config",
                  "text_columns", "label_column", "choice_columns", "labels", "metrics")
        if self.task != CUSTOM:
            given = [k.replace("_", "-") for k in custom if getattr(self, k) != type(self).model_fields[k].default]
            if given:
                raise ValueError(f"{', '.join(given)} {'describe' if len(given) > 1 else 'describes'} your own data: "
                                 f"set task = 'custom' (task "
                                 f"{self.task!r} is a preset with its own files and columns)")
        if self.partition == "column" and not self.partition_column:
            raise ValueError("partition = 'column' needs partition-column (the column whose values are the clients)")
        task_of(self)  # the spec's own checks: kind, columns, metrics
        return self

    @field_validator("labels", "task_name", "text_columns", "label_column", "choice_columns", "partition_column",
                     mode="before")
    @classmethod
    def _text(cls, v: object) -> object:
        """``--set labels=1`` parses as a number: these keys are text whatever they look like."""
        return str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        from .methods.registry import method_names

        if v not in method_names():
            raise ValueError(f"unknown method {v!r}; known: {', '.join(method_names())}")
        return v

    @field_validator("schedule")
    @classmethod
    def _known_schedule(cls, v: str) -> str:
        from strategies.schedules import make_schedule

        make_schedule(v)
        return v

    @field_validator("dp_epsilon")
    @classmethod
    def _positive_target(cls, v: float, info: ValidationInfo) -> float:
        if info.data.get("dp") == "epsilon" and v <= 0:
            raise ValueError("dp=epsilon needs a target epsilon > 0")
        return v

    @model_validator(mode="after")
    def _matrices_with_fedavg(self) -> RunConfig:
        if self.tt_average == "matrices" and (self.method != "fedtt" or self.server_opt not in ("fedavg", "fedprox")):
            raise ValueError("tt-average=matrices needs method fedtt and server-opt fedavg or fedprox (got method "
                             f"{self.method!r}, server-opt {self.server_opt!r})")
        return self

    @model_validator(mode="after")
    def _node_ranks(self) -> RunConfig:
        if not self.node_ranks:
            return self
        if self.method not in ("fedtt", "flora") or self.server_opt not in ("fedavg", "fedprox"):
            raise ValueError("node-ranks needs method fedtt (TT ranks; every core trains every round) or flora (LoRA "
                             "ranks) and server-opt fedavg or fedprox (got method "
                             f"{self.method!r}, server-opt {self.server_opt!r})")
        if self.node_ranks != "nodes":
            top, key = (self.rank, "rank") if self.method == "fedtt" else (self.lora_rank, "lora-rank")
            for value in self.node_ranks.split(","):
                if not value.strip().isdigit() or not 1 <= int(value) <= top:
                    raise ValueError(f"node-ranks {self.node_ranks!r}: each value must be a rank from 1 to {key} = "
                                     f"{top} (the global adapter's, the largest), or 'nodes'")
        return self

    @model_validator(mode="after")
    def _virtual_clients_are_stateless(self) -> RunConfig:
        if not self.virtual_clients:
            return self
        from .methods.registry import get_method

        why = ("dp (each client's privacy accountant lives on its node)" if self.dp != "off" else
               f"method {self.method} (each client's personal tensors live on its node)"
               if get_method(self.method).personal else
               "node-ranks (a rank per node, not per client)" if self.node_ranks else "")
        if why:
            raise ValueError(f"virtual-clients = {self.virtual_clients}: a SuperNode serves another client each round, "
                             f"so clients keep no state; not with {why}")
        if self.clients_per_round > self.virtual_clients:
            raise ValueError(f"virtual-clients = {self.virtual_clients} is fewer than min-clients = {self.min_clients}")
        return self

    @property
    def clients_per_round(self) -> int:
        """Under virtual clients, the clients sampled each round (as FedAvg counts fraction-train of the nodes)."""
        return max(int(self.fraction_train * self.virtual_clients), self.min_clients)

    @model_validator(mode="after")
    def _lossy_wire_is_packed(self) -> RunConfig:
        if self.wire_precision != "float32" and not self.pack_arrays:
            raise ValueError(f"wire-precision {self.wire_precision} applies to packed messages: set pack-arrays = true")
        return self

    @model_validator(mode="after")
    def _exact_lora_with_averaging(self) -> RunConfig:
        if self.method in ("fedex-lora", "flora") and self.server_opt not in ("fedavg", "fedprox"):
            raise ValueError(f"method {self.method} makes the global model the clients' weighted mean; it needs "
                             f"server-opt fedavg or fedprox (got {self.server_opt!r})")
        return self

    @model_validator(mode="after")
    def _no_prior_under_dp(self) -> RunConfig:
        if self.logit_adjust != "auto" and self.logit_adjust > 0 and self.dp != "off":
            raise ValueError("logit-adjust uses the client's label frequencies, which DP-SGD does not account for: "
                             "set logit-adjust = 0 with dp")
        return self

    @field_validator("data_dir")
    @classmethod
    def _existing_dir(cls, v: str) -> str:
        from pathlib import Path

        if v and not Path(v).is_dir():
            raise ValueError(f"folder {v!r} does not exist")
        return v

    def logit_tau(self) -> float:
        """The logit-adjustment strength ``tau`` (``auto`` resolved: 1 without DP, 0 with it)."""
        if self.logit_adjust == "auto":
            return 0.0 if self.dp != "off" else 1.0
        return float(self.logit_adjust)

    @property
    def local_optimizer(self) -> str:
        """``optimizer`` with ``auto`` resolved: SGD under DP, AdamW otherwise."""
        if self.optimizer != "auto":
            return self.optimizer
        return "sgd" if self.dp != "off" else "adamw"

    @property
    def base_lr(self) -> float:
        """``lr`` with ``auto`` resolved for the local optimizer (see :data:`AUTO_LR`)."""
        return self.lr if self.lr != "auto" else AUTO_LR[self.local_optimizer]

    @model_validator(mode="after")
    def _auto_lr_is_known(self) -> RunConfig:
        if self.lr == "auto" and self.local_optimizer == "sgd" and self.dp == "off":
            raise ValueError("lr = 'auto' knows AdamW's 3e-3 and DP-SGD's 0.5, not plain SGD's: set lr for optimizer "
                             "= 'sgd' without dp")
        return self

    def round_lr(self, server_round: int) -> float:
        """The clients' learning rate in ``server_round`` (1-based) under ``lr-schedule``."""
        if self.lr_schedule == "constant" or self.num_server_rounds <= 1:
            return self.base_lr
        progress = min(max(server_round - 1, 0) / (self.num_server_rounds - 1), 1.0)
        return self.base_lr * (self.lr_final + (1 - self.lr_final) * 0.5 * (1 + math.cos(math.pi * progress)))

    @classmethod
    def from_flower(cls, run_config: dict) -> RunConfig:
        """Validate Flower's flattened run config; raise one ValueError naming every bad key."""
        from pydantic import ValidationError

        try:
            return cls.model_validate(dict(run_config))
        except ValidationError as exc:
            raise ValueError(format_validation_error(exc, "run config")) from None


#: run-config keys that never change how the model is built: everything else does (a new key rebuilds the
#: client's cached model until it is listed here, never the other way round)
TRAINING_KEYS = frozenset({
    "data_dir", "task_name", "train_file", "dev_file", "data_format", "hub_dataset", "hub_config", "hub_train_split",
    "hub_dev_split", "text_columns", "label_column", "metrics", "partition_column", "bad_rows",
    "schedule", "schedule_middle", "sync", "tt_average", "node_ranks", "pack_arrays", "wire_precision",
    "wire_block", "wire_feedback", "num_server_rounds",
    "fraction_train", "fraction_evaluate", "min_clients", "virtual_clients", "min_replies", "allow_node_errors",
    "max_examples",
    "round_timeout",
    "server_opt", "server_lr", "server_momentum", "proximal_mu", "trim_beta", "partition", "alpha",
    "classes_per_client", "num_partitions", "max_length", "local_steps", "batch_size", "lr", "lr_schedule",
    "lr_final", "optimizer", "momentum", "weight_decay", "max_grad_norm", "logit_adjust", "amp", "central_eval",
    "eval_every", "eval_batch_size", "eval_examples", "dp", "dp_noise_multiplier", "dp_max_grad_norm", "dp_epsilon",
    "dp_delta", "physical_batch", "output_dir", "run_name", "resume",
    "tracker", "tracker_dir", "tracker_uri"})


def node_rank(node_config: dict, cfg: RunConfig) -> int:
    """This node's adapter rank (the TT rank; FLoRA: the LoRA rank): its node config's ``rank`` (node-ranks =
    'nodes'), its partition's entry of the run's node-ranks list, or the run's rank."""
    top = cfg.lora_rank if cfg.method == "flora" else cfg.rank
    if not cfg.node_ranks:
        if "rank" in node_config:
            raise ValueError("node config 'rank': this run gives every node the same rank (set node-ranks = 'nodes' "
                             "in the run config to let nodes declare their own)")
        return top
    if cfg.node_ranks == "nodes":
        value = node_config.get("rank", top)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
            raise ValueError(f"node config 'rank': {value!r} is not an adapter rank from 1 to the run's {top}")
        return value
    ranks = [int(v) for v in cfg.node_ranks.split(",")]
    return ranks[int(node_config.get("partition-id", 0)) % len(ranks)]


def model_key(cfg: RunConfig) -> tuple:
    """What decides the model a config builds: every field but :data:`TRAINING_KEYS`, as a hashable tuple."""
    return tuple((k, getattr(cfg, k)) for k in RunConfig.model_fields if k not in TRAINING_KEYS)


def format_validation_error(exc, what: str) -> str:
    """One line naming every bad key, its problem and the value given. A key that accepts several types
    (``true``/``false``/``"auto"``) gets one entry listing what each would need."""
    problems: dict[str, list[str]] = {}
    given: dict[str, object] = {}
    for e in exc.errors():
        key = str(e["loc"][0]) if e["loc"] else what
        if not e["loc"]:  # a check across keys: its input is the whole config, which says nothing
            problems.setdefault(key, []).append(e["msg"].removeprefix("Value error, "))
            continue
        if e["type"] == "extra_forbidden":
            problems.setdefault(key, []).append("unknown key" + (f" (now {RENAMED[key]!r})" if key in RENAMED else ""))
            continue
        problems.setdefault(key, []).append(e["msg"].removeprefix("Value error, "))
        given[key] = e.get("input")
    parts = [f"'{k}': " + " or ".join(dict.fromkeys(msgs)) + (f" (got {given[k]!r})" if k in given else "")
             for k, msgs in problems.items()]
    return f"invalid {what}: " + "; ".join(parts)
