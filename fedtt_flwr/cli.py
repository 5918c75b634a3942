"""``fedtt-flwr`` command line: ``params`` (communication report) and ``finetune`` (centralized run)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import ValidationError


def _params(args: argparse.Namespace) -> int:
    from .config import TTAdapterConfig
    from .report import client_memory, param_report

    cfg = TTAdapterConfig(rank=args.rank, bottleneck=args.bottleneck, bias=args.bias,
                          tensorized_classifier={"on": True, "off": False}.get(args.tensorized_classifier, "auto"))
    report = param_report(args.model, lora_rank=args.lora_rank, task_kind=args.task_kind,
                          num_labels=args.num_labels, adapter_config=cfg)
    if args.memory:
        report["client_memory_gb"] = [client_memory(report, args.batch_size, args.seq_len, args.dtype, ckpt)
                                      for ckpt in (False, True)]
    print(json.dumps(report, indent=2 if args.pretty else None))
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from .centralized import FinetuneConfig, finetune

    cfg = FinetuneConfig(**{k: v for k, v in vars(args).items() if k in FinetuneConfig.model_fields and v is not None})
    result = finetune(cfg)
    print(json.dumps(result, indent=2))
    return 0


def _parse_value(text: str):
    import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare string


def parse_overrides(items: list[str]) -> dict:
    """``["key=value", ...]`` (values as TOML, else plain strings) into a run-config dict."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects key=value, got {item!r}")
        overrides[key.strip()] = _parse_value(value.strip())
    return overrides


def _simulate(args: argparse.Namespace) -> int:
    from .config import RunConfig
    from .data import default_data_dir
    from .launch import simulate

    overrides = parse_overrides(args.set or [])
    # flwr runs the apps from the SuperLink's folder: hand them absolute paths
    out = Path(overrides.get("output-dir", "runs")).expanduser().resolve()
    overrides["output-dir"] = str(out)
    if not overrides.get("data-dir") and default_data_dir() is not None:
        overrides["data-dir"] = str(default_data_dir().resolve())
    RunConfig.from_flower(overrides)  # fail here, before starting anything, on a bad key or value
    code = simulate(num_supernodes=args.num_clients, run_config=overrides, cpus_per_client=args.cpus_per_client,
                    gpus_per_client=args.gpus_per_client, flwr_home=args.flwr_home)
    print(f"[fedtt] results: {out}/<run-name>/ (metrics.jsonl, config.json, summary.json, adapter.safetensors)")
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedtt-flwr", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("params", help="trainable parameters and bytes per round: TT adapters vs LoRA")
    p.add_argument("--model", default="minilm",
                   help="minilm, smollm2-135m, roberta-base, roberta-large, llama-2-7b, llama-2-13b, or a HF name/path")
    p.add_argument("--rank", type=int, default=5, help="TT rank")
    p.add_argument("--bottleneck", type=int, default=64)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--bias", action="store_true", help="TT layers with biases (they train and travel)")
    p.add_argument("--tensorized-classifier", choices=("auto", "on", "off"), default="auto",
                   help="a RoBERTa-style classifier.dense as a TT layer (auto: where the head has one)")
    p.add_argument("--task-kind", choices=["classification", "causal-lm"], default=None,
                   help="default: causal-lm for decoder models, classification otherwise")
    p.add_argument("--num-labels", type=int, default=2)
    p.add_argument("--pretty", action="store_true", help="indent the JSON")
    p.add_argument("--memory", action="store_true", help="add an estimate of a training client's memory "
                                                         "(without and with gradient checkpointing)")
    p.add_argument("--batch-size", type=int, default=4, help="with --memory")
    p.add_argument("--seq-len", type=int, default=512, help="with --memory")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="bfloat16",
                   help="with --memory: the backbone's and the activations' dtype")
    p.set_defaults(func=_params)

    f = sub.add_parser("finetune", help="centralized fine-tune with TT adapters or a baseline (a reference run)")
    f.add_argument("--model")
    f.add_argument("--task")
    f.add_argument("--method", help="fedtt (default), adapter, lora, ffa-lora")
    f.add_argument("--data-dir")
    f.add_argument("--train-size", type=int)
    f.add_argument("--epochs", type=float)
    f.add_argument("--max-length", type=int)
    f.add_argument("--batch-size", type=int)
    f.add_argument("--lr", type=float)
    f.add_argument("--rank", type=int)
    f.add_argument("--lora-rank", type=int)
    f.add_argument("--warmup", type=float)
    f.add_argument("--bias", dest="adapter_bias", action="store_const", const=True, help="TT layers with biases")
    f.add_argument("--adapter-init", choices=["loretta", "near-identity"])
    f.add_argument("--max-grad-norm", type=float)
    f.add_argument("--seed", type=int)
    f.add_argument("--device")
    f.add_argument("--output-dir")
    f.set_defaults(func=_finetune)

    s = sub.add_parser("simulate", help="federated run: Flower's Ray simulation engine through `flwr run`")
    s.add_argument("--num-clients", type=int, default=10, help="simulated SuperNodes (one data partition each)")
    s.add_argument("--cpus-per-client", type=int, default=1)
    s.add_argument("--gpus-per-client", type=float, default=0.0, help="fractional GPUs per ClientApp, e.g. 0.25")
    s.add_argument("--flwr-home", help="FLWR_HOME to use (default: a temporary folder)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="run-config override (repeatable), e.g. --set method=fedtt+ --set num-server-rounds=20")
    s.set_defaults(func=_simulate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "task_kind", "x") is None:
        from .models import model_config
        from .prompts import is_decoder_only

        args.task_kind = "causal-lm" if is_decoder_only(model_config(args.model).model_type) else "classification"
    try:
        return args.func(args)
    except ValidationError as exc:
        from .config import format_validation_error

        print(f"fedtt-flwr {args.command}: {format_validation_error(exc, 'setting')}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, OSError, KeyError) as exc:
        print(f"fedtt-flwr {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
