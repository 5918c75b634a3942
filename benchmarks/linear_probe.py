"""What a frozen MiniLM offers a classification head: [CLS] pooler against the masked token mean.

A logistic regression (LBFGS, standardised features, L2 1e-3) on frozen all-MiniLM-L6-v2 features of SST-2:
the first ``--train`` sentences of the shuffled training set (seed 0), dev accuracy on all 872 sentences.
The pooler is the model's [CLS] dense + tanh (what Hugging Face's BERT head reads); the mean is what the
sentence-transformers checkpoint was trained to produce (``pooling = auto`` picks it). Results:
benchmarks/results/linear_probe.json.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.linear_probe
"""

from __future__ import annotations

import argparse
import json

import torch

from benchmarks._common import RESULTS
from fedtt_flwr.data import default_data_dir, load_split
from fedtt_flwr.models import MaskedMeanPooler, load_model


def features(model, tokenizer, sentences: list[str]) -> dict[str, torch.Tensor]:
    out: dict[str, list[torch.Tensor]] = {"cls-pooler": [], "mean": []}
    mean = MaskedMeanPooler()  # the head `pooling = mean` gives, applied to the same forward pass
    for i in range(0, len(sentences), 64):
        enc = tokenizer(sentences[i:i + 64], truncation=True, max_length=64, padding=True, return_tensors="pt")
        with torch.no_grad():
            h = model.bert(**enc)
        mean.mask = enc["attention_mask"]
        out["cls-pooler"].append(h.pooler_output)
        out["mean"].append(mean(h.last_hidden_state))
    return {k: torch.cat(v) for k, v in out.items()}


def probe_accuracy(x: torch.Tensor, y: torch.Tensor, x_dev: torch.Tensor, y_dev: torch.Tensor) -> float:
    mu, sd = x.mean(0), x.std(0) + 1e-6
    x, x_dev = (x - mu) / sd, (x_dev - mu) / sd
    head = torch.nn.Linear(x.shape[1], int(y.max()) + 1)
    opt = torch.optim.LBFGS(head.parameters(), max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(x), y) + 1e-3 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float((head(x_dev).argmax(1) == y_dev).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=3000, help="training sentences for the probe")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer = load_model("minilm", "classification", num_labels=2)
    model.eval()
    data_dir = args.data_dir or str(default_data_dir())
    train = load_split("sst2", "train", data_dir).shuffle(seed=0).select(range(args.train))
    dev = load_split("sst2", "dev", data_dir)
    x, x_dev = features(model, tokenizer, train["text_a"]), features(model, tokenizer, dev["text_a"])
    y, y_dev = torch.tensor(train["label"]), torch.tensor(dev["label"])
    result = {k: round(100 * probe_accuracy(x[k], y, x_dev[k], y_dev), 1) for k in x}
    result["train_sentences"] = args.train
    print(json.dumps(result))
    (RESULTS / "linear_probe.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
