"""``fedtt-flwr`` command line: ``params`` (communication report) and ``finetune`` (centralized run)."""

from __future__ import annotations

import argparse
import json
import sys

from pydantic import ValidationError


def _params(args: argparse.Namespace) -> int:
    from .config import TTAdapterConfig
    from .report import param_report

    cfg = TTAdapterConfig(rank=args.rank, bottleneck=args.bottleneck, bias=not args.no_bias,
                          tensorized_classifier=args.tensorized_classifier)
    report = param_report(args.model, lora_rank=args.lora_rank, task_kind=args.task_kind,
                          num_labels=args.num_labels, adapter_config=cfg)
    print(json.dumps(report, indent=2 if args.pretty else None))
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from .centralized import FinetuneConfig, finetune

    cfg = FinetuneConfig(**{k: v for k, v in vars(args).items() if k in FinetuneConfig.model_fields and v is not None})
    result = finetune(cfg)
    print(json.dumps(result, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedtt-flwr", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("params", help="trainable parameters and bytes per round: TT adapters vs LoRA")
    p.add_argument("--model", default="minilm",
                   help="minilm, smollm2-135m, roberta-base, roberta-large, llama-2-7b, llama-2-13b, or a HF name/path")
    p.add_argument("--rank", type=int, default=5, help="TT rank")
    p.add_argument("--bottleneck", type=int, default=64)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--no-bias", action="store_true", help="TT layers without biases")
    p.add_argument("--tensorized-classifier", action="store_true")
    p.add_argument("--task-kind", choices=["classification", "causal-lm"], default=None,
                   help="default: causal-lm for decoder models, classification otherwise")
    p.add_argument("--num-labels", type=int, default=2)
    p.add_argument("--pretty", action="store_true", help="indent the JSON")
    p.set_defaults(func=_params)

    f = sub.add_parser("finetune", help="centralized fine-tune with TT adapters (a reference run)")
    f.add_argument("--model")
    f.add_argument("--task")
    f.add_argument("--data-dir")
    f.add_argument("--train-size", type=int)
    f.add_argument("--epochs", type=float)
    f.add_argument("--max-length", type=int)
    f.add_argument("--batch-size", type=int)
    f.add_argument("--lr", type=float)
    f.add_argument("--rank", type=int)
    f.add_argument("--warmup", type=float)
    f.add_argument("--max-grad-norm", type=float)
    f.add_argument("--seed", type=int)
    f.add_argument("--device")
    f.add_argument("--output-dir")
    f.set_defaults(func=_finetune)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "task_kind", "x") is None:
        from .models import model_config

        is_decoder = model_config(args.model).model_type in {"llama", "mistral", "qwen2", "qwen3", "gemma"}
        args.task_kind = "causal-lm" if is_decoder else "classification"
    try:
        return args.func(args)
    except ValidationError as exc:
        errors = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
        print(f"fedtt-flwr {args.command}: invalid setting: {errors}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, OSError, KeyError) as exc:
        print(f"fedtt-flwr {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
