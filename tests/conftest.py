"""Shared fixtures: offline hub, tiny model configs of every supported family."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny models gain nothing from intra-op threads, and on a busy machine an oversubscribed thread pool
# made a tiny TT fine-tune 100x slower (1.6 s -> 176 s, measured): one thread keeps the suite steady.
torch.set_num_threads(1)
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BertConfig,
    DebertaV2Config,
    DistilBertConfig,
    ElectraConfig,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    RobertaConfig,
    XLMRobertaConfig,
)

_ENC = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=99,
            max_position_embeddings=64)
_DEC = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=48, vocab_size=99, max_position_embeddings=64)

ENCODER_CONFIGS = {
    "bert": lambda: BertConfig(**_ENC),
    "roberta": lambda: RobertaConfig(**_ENC, pad_token_id=1),
    "xlm-roberta": lambda: XLMRobertaConfig(**_ENC, pad_token_id=1),
    "electra": lambda: ElectraConfig(**_ENC, embedding_size=32),
    "deberta-v2": lambda: DebertaV2Config(**_ENC, pooler_hidden_size=32),
    "distilbert": lambda: DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, vocab_size=99,
                                           max_position_embeddings=64),
}
DECODER_CONFIGS = {
    "llama": lambda: LlamaConfig(**_DEC),
    "mistral": lambda: MistralConfig(**_DEC),
    "qwen2": lambda: Qwen2Config(**_DEC),
}
DATA_DIR = ROOT.parent / "shared" / "data"


def tiny_model(family: str, task_kind: str = "auto", num_labels: int = 2, seed: int = 0):
    """A randomly initialised tiny model of a family: a classifier for encoders, a causal LM for decoders."""
    torch.manual_seed(seed)
    if family in ENCODER_CONFIGS:
        cfg = ENCODER_CONFIGS[family]()
        kind = "classification" if task_kind == "auto" else task_kind
    else:
        cfg = DECODER_CONFIGS[family]()
        kind = "causal-lm" if task_kind == "auto" else task_kind
    if kind == "classification":
        cfg.num_labels = num_labels
        if cfg.pad_token_id is None:
            cfg.pad_token_id = 0
        return AutoModelForSequenceClassification.from_config(cfg).eval()
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.fixture
def shared_data() -> Path:
    if not DATA_DIR.is_dir():
        pytest.skip(f"needs the benchmark data folder {DATA_DIR} (absent on this machine)")
    return DATA_DIR


@pytest.fixture(autouse=True)
def flower_task_identity():
    """Creating instruction Messages outside a Flower runtime needs a task identity (internal API)."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id = TaskIdentity.task_id = TaskIdentity.node_id = 1
    yield


WORDS = [
    "good", "great", "fine", "fun", "lovely", "superb",  # positive
    "bad", "awful", "dull", "boring", "poor", "weak",  # negative
    "movie", "film", "plot", "actor", "the", "a", "is", "was", "and", "but", "not", "very", "really", "quite",
    "story", "scene",
]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def save_tiny_bert(folder: Path) -> Path:
    """A tiny random BERT with a real (word-level) tokenizer, saved like a hub folder."""
    from transformers import BertForSequenceClassification, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})
    torch.manual_seed(0)
    cfg = BertConfig(**{**_ENC, "vocab_size": len(vocab)}, num_labels=2)
    BertForSequenceClassification(cfg).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_sst2_dir(tmp_path_factory) -> Path:
    return save_tiny_sst2(tmp_path_factory.mktemp("data"))


def save_tiny_sst2(root: Path) -> Path:
    """A small SST-2-style data folder whose labels are readable from the words."""
    import random

    (root / "glue" / "SST-2").mkdir(parents=True)
    rng = random.Random(0)
    pos, neg, filler = WORDS[:6], WORDS[6:12], WORDS[12:]

    def rows(n):
        out = ["sentence\tlabel"]
        for i in range(n):
            label = i % 2
            words = rng.sample(pos if label else neg, 3) + rng.sample(filler, 2)
            rng.shuffle(words)
            out.append(f"{' '.join(words)}\t{label}")
        return "\n".join(out) + "\n"

    (root / "glue" / "SST-2" / "train.tsv").write_text(rows(240))
    (root / "glue" / "SST-2" / "dev.tsv").write_text(rows(60))
    return root


PROMPT_WORDS = ["It", "was", "terrible", "Yes", "No", "Maybe", "Does", "this", "mean", "that", "true", "or", "?", '"',
                "Suppose", "Can", "we", "infer", ","]


def save_tiny_decoder(folder: Path, family: str = "llama") -> Path:
    """A tiny random decoder LM of ``family`` with a word-level tokenizer (BOS/EOS, no pad), saved like a
    hub folder; the words of the tiny SST-2 data and of the prompt templates are in the vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = ["<unk>", "<s>", "</s>", *dict.fromkeys(WORDS + PROMPT_WORDS)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    cfg = DECODER_CONFIGS[family]()
    cfg.vocab_size, cfg.bos_token_id, cfg.eos_token_id = len(vocab), 1, 2
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return save_tiny_decoder(tmp_path_factory.mktemp("tiny-llama"), "llama")
