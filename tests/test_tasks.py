"""Your own data and the task kinds: a user's CSV/JSONL/JSON/Parquet files, label inference, regression, multiple
choice (encoders and decoders), column partitions, and one clear error for each kind of bad data."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from fedtt_flwr.config import RunConfig
from fedtt_flwr.data import PartitionSpec, load_split, load_task, partition, with_labels
from fedtt_flwr.tasks import PRESETS, compute_metrics, task_of


def custom(**keys) -> RunConfig:
    return RunConfig(task="custom", **keys)


def _csv(path, rows, header="text,label"):
    path.write_text(header + "\n" + "".join(r + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def tickets(tmp_path):
    """A newcomer's support tickets: text,label with string labels, quoted commas and an embedded newline."""
    train = _csv(tmp_path / "train.csv", ['"refund please, now",billing', "app crashes on start,bug",
                                          '"charged twice\nfor one order",billing', "button does nothing,bug",
                                          "how do I export,question"])
    dev = _csv(tmp_path / "dev.csv", ["wrong invoice,billing", "crash after update,bug"])
    return train, dev


def test_a_csv_with_string_labels_gets_its_labels_from_the_training_split(tickets):
    train, dev = tickets
    task = with_labels(task_of(custom(train_file=str(train), dev_file=str(dev))))
    assert task.labels == ("billing", "bug", "question") and task.metrics == ("accuracy", "f1")
    tr, dv, note = load_task(task)
    assert tr["text_a"][2] == "charged twice\nfor one order" and tr["label"] == [0, 1, 0, 1, 2]
    assert dv["label"] == [0, 1] and note is None
    # labels given: their order is the ids' order, and a value outside them is an error naming file, line, column
    fixed = task_of(custom(train_file=str(train), dev_file=str(dev), labels="question,bug"))
    with pytest.raises(ValueError, match=re.escape(f"{train} line 2, column 'label': unknown label 'billing'")):
        load_split(fixed, "train")


def test_integer_labels_sort_as_numbers_and_a_single_label_is_refused(tmp_path):
    train = _csv(tmp_path / "t.csv", [f"row {i},{y}" for i, y in enumerate([10, 2, 2, 10, 1])])
    assert with_labels(task_of(custom(train_file=str(train)))).labels == ("1", "2", "10")
    one = _csv(tmp_path / "one.csv", ["a,x", "b,x"])
    with pytest.raises(ValueError, match="only the label"):
        with_labels(task_of(custom(train_file=str(one))))


def test_jsonl_pairs_json_arrays_folders_and_globs(tmp_path):
    rows = [{"premise": f"p{i}", "hypothesis": f"h{i}", "gold": ["yes", "no"][i % 2]} for i in range(4)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = dict(text_columns="premise,hypothesis", label_column="gold", labels="no,yes")
    ds = load_split(task_of(custom(train_file=str(tmp_path / "pairs.jsonl"), **cfg)), "train")
    assert ds["text_b"] == ["h0", "h1", "h2", "h3"] and ds["label"] == [1, 0, 1, 0]
    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "a.json").write_text(json.dumps(rows[:2]))
    (folder / "b.json").write_text(json.dumps({"data": rows[2:]}))
    (folder / "notes.md").write_text("not data")
    for spec in (str(folder), str(folder / "*.json")):
        assert load_split(task_of(custom(train_file=spec, **cfg)), "train")["text_a"] == ["p0", "p1", "p2", "p3"]
    with pytest.raises(FileNotFoundError, match="no file matches"):
        load_split(task_of(custom(train_file=str(tmp_path / "*.parquet"), **cfg)), "train")


def test_a_parquet_regression_file_and_its_metrics(tmp_path):
    path = tmp_path / "scores.parquet"
    pq.write_table(pa.table({"s1": ["a b", "c d", "e f", "g h"], "s2": ["a c", "x y", "e f", "h g"],
                             "score": [2.5, 0.0, 5.0, 4]}), path)
    task = task_of(custom(train_file=str(path), task_kind="regression", text_columns="s1,s2", label_column="score"))
    ds = load_split(task, "train")
    assert ds["label"] == [2.5, 0.0, 5.0, 4.0] and task.metrics == ("pearson", "spearman", "mse")
    m = compute_metrics(task, np.array([2.0, 1.0, 4.0, 5.0]), np.array(ds["label"]))
    assert m["pearson"] == pytest.approx(np.corrcoef([2, 1, 4, 5], [2.5, 0, 5, 4])[0, 1])
    assert m["spearman"] == pytest.approx(0.8) and m["mse"] == pytest.approx(np.mean([0.25, 1, 1, 1]))
    assert compute_metrics(task, np.full(4, 2.0), np.array(ds["label"]))["pearson"] == 0.0  # constant: no NaN


def test_copa_and_a_custom_multiple_choice_file(tmp_path):
    rows = [{"premise": "The man broke his toe.", "choice1": "He dropped a hammer on his foot.",
             "choice2": "He got a hole in his sock.", "question": "cause", "label": 0},
            {"premise": "I tipped the bottle.", "choice1": "The liquid in the bottle froze.",
             "choice2": "The liquid in the bottle poured out.", "question": "effect", "label": 1}]
    (tmp_path / "superglue/COPA").mkdir(parents=True)
    (tmp_path / "superglue/COPA/val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = load_split("copa", "dev", tmp_path)
    assert ds["text_a"] == ["The man broke his toe because", "I tipped the bottle so"]
    assert ds["choices"][0] == ["he dropped a hammer on his foot.", "he got a hole in his sock."]
    assert ds["label"] == [0, 1]
    mc = _csv(tmp_path / "mc.csv", ["What is red?,a sky,a rose,a leaf,1"], "question,a,b,c,answer")
    task = task_of(custom(train_file=str(mc), task_kind="multiple-choice", text_columns="question",
                          choice_columns="a,b,c", label_column="answer"))
    assert load_split(task, "train")["choices"] == [["a sky", "a rose", "a leaf"]]
    bad = _csv(tmp_path / "bad.csv", ["What is red?,a sky,a rose,a leaf,3"], "question,a,b,c,answer")
    with pytest.raises(ValueError, match=re.escape(f"{bad} line 2, column 'answer': expected the index of the right "
                                                   "choice, 0..2, got '3'")):
        load_split(task_of(custom(train_file=str(bad), task_kind="multiple-choice", text_columns="question",
                                  choice_columns="a,b,c", label_column="answer")), "train")


# --- bad data: one error naming the file, the row and the column ------------------------------------------------

@pytest.mark.parametrize("name,content,keys,message", [
    ("t.csv", "text,y\nhello,a\n", {}, r"{path}: no column 'label' \(columns: text, y\)"),
    ("t.jsonl", '{"text": "a", "label": "x"}\n{"text": "b"}\n', {}, r"{path} line 2: no column 'label'"),
    ("t.csv", "text,label\nhello,a\n   ,b\n", {}, r"{path} line 3, column 'text': empty text"),
    ("t.csv", "text,label\nhello,a\nbye,\n", {}, r"{path} line 3, column 'label': expected a label, got ''"),
    ("t.csv", "text,label\nhello,1.5\nbye,high\n", {"task_kind": "regression"},
     r"{path} line 3, column 'label': expected a number, got 'high'"),
    ("t.csv", "text,label\nhello,nan\n", {"task_kind": "regression"},
     r"{path} line 2, column 'label': expected a finite number, got 'nan'"),
    ("t.csv", "text,label\nhello,a\nbye,b,extra\n", {}, r"{path} line 3: expected 2 comma-separated fields"),
    ("t.csv", 'text,label\nhello,a\n"never closed,b\nmore,a\n', {}, r"{path} line 3: unexpected end of data"),
    ("t.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "lab', {}, r"{path} line 2: invalid JSON"),
    ("t.jsonl", '{"text": 7, "label": "x"}\n', {}, r"{path} line 1, column 'text': expected text, got int 7"),
    ("t.json", '[{"text": "a", "label": "x"}, "oops"]', {}, r"{path} record 2: expected a JSON object, got str"),
    ("t.json", '[{"text": "a",\n "label": }]', {}, r"{path} line 2, column 11: invalid JSON"),
    ("t.csv", b"text,label\nna\xefve,a\n", {}, r"{path} line 2, column 3 \(byte 0xef\): not valid UTF-8"),
    ("t.txt", "text,label\n", {}, r"{path}: unknown file type '.txt'"),
    ("t.parquet", "not parquet", {}, r"{path}: not a readable Parquet file"),
], ids=["missing-column", "jsonl-missing-field", "empty-text", "empty-label", "score-not-a-number", "score-nan",
        "extra-field", "unterminated-quote", "truncated-jsonl", "text-not-a-string", "json-not-an-object",
        "bad-json", "not-utf8", "unknown-extension", "bad-parquet"])
def test_bad_data_names_the_file_row_and_column(tmp_path, name, content, keys, message):
    path = tmp_path / name
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    labels = {} if keys.get("task_kind") == "regression" else {"labels": "a,b,x"}
    task = task_of(custom(train_file=str(path), **labels, **keys))
    with pytest.raises(ValueError, match="^" + message.format(path=re.escape(str(path)))):
        load_split(task, "train")


def test_a_dev_or_node_label_outside_the_label_set_is_named(tickets, tmp_path):
    train, _ = tickets
    dev = _csv(tmp_path / "node-dev.csv", ["fine,billing", "slow page,performance"])
    task = with_labels(task_of(custom(train_file=str(train), dev_file=str(dev))))
    with pytest.raises(ValueError, match=re.escape(f"{dev} line 3, column 'label': unknown label 'performance' for "
                                                   "task custom (labels: ['billing', 'bug', 'question']")):
        load_task(task)


def test_blank_lines_and_skipped_rows_are_counted_never_silent(tmp_path, capsys):
    path = _csv(tmp_path / "t.csv", ["good,a", "", "   ,b", "fine,b", "bad,row,here", ""])
    with pytest.raises(ValueError, match="line 4, column 'text': empty text"):
        load_split(task_of(custom(train_file=str(path), labels="a,b")), "train")
    ds = load_split(task_of(custom(train_file=str(path), labels="a,b", bad_rows="skip")), "train")
    assert ds["text_a"] == ["good", "fine"]
    out = capsys.readouterr().out
    assert "train: skipped 2 blank line(s)" in out
    assert f"train: skipped 2 bad row(s) (bad-rows = skip); first: {path} line 4, column 'text': empty text" in out


# --- configuration --------------------------------------------------------------------------------------------

def test_config_keys_for_own_data_are_checked_at_start(tmp_path):
    with pytest.raises(ValueError, match="train-file describes your own data: set task = 'custom'"):
        RunConfig(task="sst2", train_file="/x.csv")
    with pytest.raises(ValueError, match="partition = 'column' needs partition-column"):
        RunConfig(partition="column")
    with pytest.raises(ValueError, match="at least 2 different choice-columns"):
        custom(train_file="/x.csv", task_kind="multiple-choice", choice_columns="a")
    with pytest.raises(ValueError, match="at least 2 different choice-columns"):
        custom(train_file="/x.csv", choice_columns="a,a")
    with pytest.raises(ValueError, match="multiple choice needs a context"):
        custom(train_file="/x.csv", choice_columns="a,b", text_columns="")
    with pytest.raises(ValueError, match="choice-columns are for multiple choice; this task is a regression"):
        custom(train_file="/x.csv", choice_columns="a,b", task_kind="regression")
    with pytest.raises(ValueError, match="labels are for a classification; this task is a regression"):
        custom(train_file="/x.csv", labels="a,b", task_kind="regression")
    with pytest.raises(ValueError, match=r"at least 2 labels, got \['1.5'\]"):  # --set labels=1.5: a number, read
        custom(train_file="/x.csv", labels=1.5)                                # as the text it was
    with pytest.raises(ValueError, match=r"metric\(s\) \['pearson'\] do not apply to classification"):
        custom(train_file="/x.csv", metrics="pearson")
    with pytest.raises(ValueError, match="text-columns must name 1 column or 2"):
        custom(train_file="/x.csv", text_columns="a,b,c")
    with pytest.raises(ValueError, match="unknown task 'sts-b'; presets: cola, sst2"):
        RunConfig(task="sts-b")


def test_deploy_run_needs_the_labels_of_a_custom_classification():
    from fedtt_flwr.preflight import preflight

    with pytest.raises(ValueError, match="set labels = 'a,b,...'"):
        preflight(custom(train_file="/on/the/nodes.csv"), on_this_machine=False)
    preflight(custom(train_file="/on/the/nodes.csv", dev_file="/on/the/server.csv", labels="a,b"),
              on_this_machine=False)
    preflight(custom(train_file="/on/the/nodes.csv", task_kind="regression", central_eval=False),
              on_this_machine=False)


def test_the_command_line_fixes_paths_and_labels_for_the_apps(tickets, monkeypatch, capsys):
    from fedtt_flwr.cli import app_overrides

    train, dev = tickets
    monkeypatch.chdir(train.parent)
    overrides = app_overrides(["task=custom", "train-file=train.csv", "dev-file=dev.csv", "model=minilm"], 2)
    assert overrides["train-file"] == str(train) and overrides["dev-file"] == str(dev)
    assert overrides["labels"] == "billing,bug,question"
    assert "labels ['billing', 'bug', 'question'] (from the training split" in capsys.readouterr().out


# --- partitions -------------------------------------------------------------------------------------------------

def test_regression_label_skew_is_over_score_bins_and_a_column_gives_natural_clients(tmp_path):
    rows = [f"text {i},{i % 5 + 0.5 * (i % 2)},{['north', 'south', 'west'][i % 3]}" for i in range(90)]
    path = _csv(tmp_path / "t.csv", rows, "text,score,region")
    scores = task_of(custom(train_file=str(path), task_kind="regression", label_column="score"))
    parts = [partition(load_split(scores, "train"), PartitionSpec("dirichlet", 3, alpha=0.3, seed=0), i, scores)
             for i in range(3)]
    assert sum(len(p) for p in parts) == 90 and all(len(p) for p in parts)
    means = [np.mean(p["label"]) for p in parts]
    assert max(means) - min(means) > 0.3  # skewed over the scores
    task = task_of(custom(train_file=str(path), task_kind="regression", label_column="score",
                          partition_column="region"))
    ds = load_split(task, "train")
    skewed = [partition(ds, PartitionSpec("dirichlet", 3, alpha=0.1, seed=0), i, task) for i in range(3)]
    shares = [max(np.unique(p["group"], return_counts=True)[1]) / len(p) for p in skewed]
    assert sum(len(p) for p in skewed) == 90 and np.mean(shares) > 0.6  # with a column: skew over its values
    by_region = [partition(ds, PartitionSpec("column", 3), i, task) for i in range(3)]
    assert [sorted(set(p["group"])) for p in by_region] == [["north"], ["south"], ["west"]]
    with pytest.raises(ValueError, match=r"the partition column has 3 values \(north, south, west\) but the run has "
                                         "4 clients"):
        partition(ds, PartitionSpec("column", 4), 0, task)


# --- models: regression and multiple choice train and evaluate --------------------------------------------------

def _one_step(model, loader):
    from fedtt_flwr.train import cycle, make_optimizer, train_steps

    params = [p for p in model.parameters() if p.requires_grad]
    return train_steps(model, cycle(loader), make_optimizer(params, "adamw", 1e-2), 2, torch.device("cpu"))


@pytest.mark.parametrize("kind", ["regression", "multiple-choice"])
def test_encoder_heads_for_regression_and_multiple_choice(tmp_path, tiny_model_dir, kind):
    from fedtt_flwr.methods.build import build_model
    from fedtt_flwr.train import evaluate, make_loader, tokenize

    if kind == "regression":
        path = _csv(tmp_path / "t.csv", [f"good movie {i},{i % 5}" for i in range(12)])
        cfg = custom(model=str(tiny_model_dir), train_file=str(path), task_kind="regression")
    else:
        path = _csv(tmp_path / "t.csv", [f"the plot,great film,boring actor,{i % 2}" for i in range(12)],
                    "text,a,b,label")
        cfg = custom(model=str(tiny_model_dir), train_file=str(path), task_kind="multiple-choice", choice_columns="a,b")
    model, tokenizer = build_model(cfg)
    head = model.classifier.out_features
    assert head == 1  # one score; or one score per candidate, the same head for each
    data = tokenize(load_split(task_of(cfg), "train"), tokenizer, 16)
    loader = make_loader(data, tokenizer, 4, shuffle=False)
    batch = next(iter(loader))
    assert batch["labels"].dtype == (torch.float32 if kind == "regression" else torch.long)
    if kind == "multiple-choice":
        assert batch["input_ids"].shape[:2] == (4, 2)
    assert np.isfinite(_one_step(model, loader)["train_loss"])
    metrics = evaluate(model, loader, task_of(cfg), torch.device("cpu"))
    assert set(metrics) >= ({"pearson", "spearman", "mse"} if kind == "regression" else {"accuracy"})


def test_a_decoder_scores_each_examples_own_candidates(tmp_path, tiny_llama_dir):
    """ChoiceScorer's logits are each candidate's mean token log-probability after the context, as a direct
    computation with the plain LM gives."""
    from fedtt_flwr.methods.build import build_model
    from fedtt_flwr.train import make_loader, tokenize

    path = _csv(tmp_path / "t.csv", ["It was,terrible,great yes,1", "Does this,mean,No Maybe true,0"],
                "text,a,b,label")
    cfg = custom(model=str(tiny_llama_dir), train_file=str(path), task_kind="multiple-choice", choice_columns="a,b",
                 method="lora")
    model, tokenizer = build_model(cfg)
    data = tokenize(load_split(task_of(cfg), "train"), tokenizer, 32, prompt_task="custom")
    batch = next(iter(make_loader(data, tokenizer, 2, shuffle=False, prompt_task="custom")))
    model.eval()
    with torch.no_grad():
        logits = model(**batch).logits
        assert logits.shape == (2, 2)
        for b in range(2):
            for c in range(2):
                ctx, cand = data[b]["input_ids"], data[b]["choice_ids"][c]
                out = model.lm(input_ids=torch.tensor([ctx + cand])).logits[0].log_softmax(-1)
                expected = np.mean([out[len(ctx) - 1 + j, t].item() for j, t in enumerate(cand)])
                assert logits[b, c].item() == pytest.approx(expected, abs=1e-4)
    assert np.isfinite(_one_step(model, make_loader(data, tokenizer, 2, shuffle=True, prompt_task="custom"))[
        "train_loss"])


def test_every_preset_has_a_layout_and_a_hub_source():
    for name, spec in PRESETS.items():
        assert spec.folder and set(spec.splits) == {"train", "dev"} and spec.hub, name
        assert spec.metrics[0] in {"accuracy", "f1", "mcc", "pearson"}, name


# --- through the Flower apps (in-process grid): every kind federates ------------------------------------------

def _words(i: int) -> str:
    from conftest import WORDS

    return " ".join(WORDS[(i * k) % len(WORDS)] for k in (1, 3, 7))


@pytest.mark.parametrize("kind", ["regression", "multiple-choice", "column"])
def test_each_kind_runs_federated_with_its_metrics(tmp_path, tiny_model_dir, kind):
    from test_app_inprocess import run_app

    from fedtt_flwr import client as client_module

    client_module._session.cache_clear()
    keys = {"task": "custom", "central-eval": True, "fraction-evaluate": 1.0}
    if kind == "regression":
        path = _csv(tmp_path / "scores.csv", [f"{_words(i)},{_words(i + 1)},{i % 6}" for i in range(60)], "a,b,score")
        keys.update({"task-kind": "regression", "text-columns": "a,b", "label-column": "score"})
        metric = "pearson"
    elif kind == "multiple-choice":
        path = _csv(tmp_path / "mc.csv", [f"{_words(i)},{_words(i + 1)},{_words(i + 2)},{i % 2}" for i in range(60)],
                    "text,a,b,label")
        keys.update({"task-kind": "multiple-choice", "choice-columns": "a,b"})
        metric = "accuracy"
    else:  # natural clients: one per region
        path = _csv(tmp_path / "regions.csv", [f"{_words(i)},{['neg', 'pos'][i % 2]},{['n', 's', 'w'][i % 3]}"
                                               for i in range(60)], "text,label,region")
        keys.update({"labels": "neg,pos", "partition": "column", "partition-column": "region"})
        metric = "accuracy"
    keys.update({"train-file": str(path), "dev-file": str(path)})
    _, folder, lines = run_app(tmp_path, tiny_model_dir, tmp_path, **keys)
    assert [x["round"] for x in lines] == [0, 1, 2]
    for x in lines[1:]:
        assert x["replies"] == 3 and x["errors"] == 0 and np.isfinite(x[metric]) and np.isfinite(x[f"fed_{metric}"])
    summary = json.loads((folder / "summary.json").read_text())
    assert not summary["problems"] and metric in summary["final"]


@pytest.mark.parametrize("kind", ["regression", "multiple-choice"])
def test_every_method_builds_and_trains_every_kind(tmp_path, tiny_model_dir, tiny_llama_dir, kind):
    from fedtt_flwr.methods.build import build_model, prompt_task
    from fedtt_flwr.methods.registry import method_names
    from fedtt_flwr.train import make_loader, tokenize

    rows = [f"{_words(i)},{_words(i + 1)},{_words(i + 2)},{i % 2}" for i in range(8)]
    path = _csv(tmp_path / "t.csv", rows, "text,a,b,label")
    keys = ({"task_kind": "regression", "text_columns": "a,b"} if kind == "regression"
            else {"task_kind": "multiple-choice", "choice_columns": "a,b"})
    for model_dir in (tiny_model_dir, tiny_llama_dir):  # an encoder and a decoder
        for method in method_names():
            cfg = custom(model=str(model_dir), train_file=str(path), method=method, **keys)
            model, tokenizer = build_model(cfg)
            data = tokenize(load_split(task_of(cfg), "train"), tokenizer, 24, prompt_task(cfg))
            loader = make_loader(data, tokenizer, 4, shuffle=False, prompt_task=prompt_task(cfg))
            assert np.isfinite(_one_step(model, loader)["train_loss"]), (model_dir.name, method)
            assert any(p.requires_grad for p in model.parameters())


# --- presets read their ORIGINAL distribution files (a few rows written here in that format) ---------------------

_MNLI_PARSES = "( ( The cat ) sat )\t( A ( cat sat ) )\t(ROOT (S (NP (DT The) (NN cat)) (VP (VBD sat))))\t(ROOT (S))"
_ORIGINAL = {
    "stsb": ("glue/STS-B/dev.tsv",
             "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
             "0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man with a hard hat is dancing.\t"
             "A man wearing a hard hat is dancing.\t5.000\n"
             "1\tmain-news\theadlines\t2013\t0001\tnone\tnone\tA young child is riding a horse.\t"
             "A child is riding a horse.\t4.750\n"),
    "qqp": ("glue/QQP/dev.tsv", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
            "201359\t303345\t303346\tWhy are African-Americans so beautiful?\tWhy are hispanics so beautiful?\t0\n"
            "263843\t69383\t380476\tI want to pursue PhD in Computer Science?\n"  # a row with missing fields
            "172974\t266948\t175089\tIs there a reason why we should travel alone?\tWhat are some reasons to travel "
            "alone?\t1\n"),
    "mnli": ("glue/MNLI/dev_matched.tsv", "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\t"
             "sentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\t"
             "label4\tlabel5\tgold_label\n"
             f"0\t63735\t63735n\tslate\t{_MNLI_PARSES}\tThe new rights are nice enough\t"
             "Everyone really likes the newest benefits \tneutral\tentailment\tneutral\tneutral\tneutral\tneutral\n"
             f"1\t91383\t91383c\tgovernment\t{_MNLI_PARSES}\tThis site includes a list of all award winners.\tThe "
             "Government Executive articles housed on the website are not able to be searched.\tcontradiction\t"
             "contradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction\n"),
    "mnli-mm": ("glue/MNLI/dev_mismatched.tsv", "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\t"
                "sentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\t"
                "label3\tlabel4\tlabel5\tgold_label\n"
                f"0\t75290\t75290c\tletters\t{_MNLI_PARSES}\tYour contribution helped make it possible.\tYour "
                "contributions were of no help.\tcontradiction\tcontradiction\tcontradiction\tcontradiction\t"
                "contradiction\tcontradiction\n"),
    "mnli-train": ("glue/MNLI/train.tsv", "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\t"
                   "sentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n"
                   f"0\t31193\t31193n\tgovernment\t{_MNLI_PARSES}\tConceptually cream skimming has two basic "
                   "dimensions.\tProduct and geography are what make cream skimming work. \tneutral\tneutral\n"),
    "wnli": ("glue/WNLI/dev.tsv", "index\tsentence1\tsentence2\tlabel\n"
             "0\tThe drain is clogged with hair. It has to be cleaned.\tThe hair has to be cleaned.\t0\n"),
    "wic": ("superglue/WiC/val.jsonl", json.dumps(
        {"word": "board", "sentence1": "Room and board.", "sentence2": "He nailed boards across the windows.",
         "idx": 0, "label": False, "start1": 9, "start2": 10, "end1": 14, "end2": 16, "version": 1.1}) + "\n"),
    "boolq": ("superglue/BoolQ/val.jsonl", json.dumps(
        {"question": "does ethanol take more energy make that produces", "passage": "Ethanol fuel -- All biomass "
         "goes through at least some of these steps.", "idx": 0, "label": False}) + "\n"),
}


@pytest.mark.parametrize("task,expected", [
    ("stsb", (["A man with a hard hat is dancing.", "A young child is riding a horse."], [5.0, 4.75])),
    ("qqp", (["Why are African-Americans so beautiful?", "Is there a reason why we should travel alone?"], [0, 1])),
    ("mnli", (["The new rights are nice enough", "This site includes a list of all award winners."], [1, 2])),
    ("mnli-mm", (["Your contribution helped make it possible."], [2])),
    ("wnli", (["The drain is clogged with hair. It has to be cleaned."], [0])),
    ("wic", (["board: Room and board."], [0])),
    ("boolq", (["Ethanol fuel -- All biomass goes through at least some of these steps."], [0])),
])
def test_presets_read_their_original_files(tmp_path, capsys, task, expected):
    for key in (task, "mnli-train"):
        if key in _ORIGINAL and (key == task or task.startswith("mnli")):
            path, text = _ORIGINAL[key]
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path).write_text(text, encoding="utf-8")
    ds = load_split(task, "dev", tmp_path)
    assert (ds["text_a"], ds["label"]) == expected
    if task == "qqp":  # the GLUE release's rows with missing fields: skipped and counted, as documented
        assert "skipped 1 bad row(s)" in capsys.readouterr().out
    if task.startswith("mnli"):  # one train file for both; the dev files differ
        assert load_split(task, "train", tmp_path)["label"] == [1]


# --- review findings: each one a test --------------------------------------------------------------------------

def test_iid_shuffles_a_sorted_file_by_seed(tmp_path):
    path = _csv(tmp_path / "sorted.csv", [f"row {i},{'a' if i < 30 else 'b'}" for i in range(60)])
    ds = load_split(task_of(custom(train_file=str(path), labels="a,b")), "train")
    parts = [partition(ds, PartitionSpec("iid", 2, seed=s), 0) for s in (0, 1)]
    assert all(set(p["label"]) == {0, 1} for p in parts)  # contiguous blocks would be all 'a'
    assert parts[0]["text_a"] != parts[1]["text_a"]  # the seed decides


def test_choice_columns_make_a_multiple_choice_task_and_qqp_skips_can_be_refused(tmp_path):
    assert task_of(custom(train_file="/x.csv", choice_columns="a,b")).kind == "multiple-choice"
    assert task_of(RunConfig(task="qqp")).bad_rows == "skip"
    assert task_of(RunConfig(task="qqp", bad_rows="error")).bad_rows == "error"
    assert task_of(custom(train_file="/x.csv")).bad_rows == "error"


def test_mcc_for_several_classes_is_matthews_general_form():
    spec = task_of(custom(train_file="/x.csv", labels="a,b,c", metrics="mcc"))
    y, p = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 1, 1, 2, 0])
    c = np.zeros((3, 3))
    for t, q in zip(y, p, strict=True):
        c[t, q] += 1
    s, k = c.sum(), np.trace(c)
    t_k, p_k = c.sum(1), c.sum(0)
    expected = (k * s - t_k @ p_k) / np.sqrt((s ** 2 - p_k @ p_k) * (s ** 2 - t_k @ t_k))
    assert compute_metrics(spec, p, y)["mcc"] == pytest.approx(expected)
    binary = PRESETS["cola"]  # the usual two-class formula
    assert compute_metrics(binary, np.array([1, 1, 0, 0, 1, 0, 1, 1]), np.array([1, 1, 1, 0, 0, 0, 1, 0]))[
        "mcc"] == pytest.approx((3 * 2 - 2 * 1) / np.sqrt(5 * 4 * 4 * 3))


def test_the_server_evaluates_with_only_a_dev_file_and_deploy_run_says_when_it_has_none(tmp_path):
    from fedtt_flwr.data import load_dev
    from fedtt_flwr.preflight import preflight

    dev = _csv(tmp_path / "dev.csv", ["fine,a", "bad,b"])
    task = task_of(custom(train_file="/only/on/the/nodes.csv", dev_file=str(dev), labels="a,b"))
    assert load_dev(task)[0]["label"] == [0, 1]
    with pytest.raises(ValueError, match="central-eval = true evaluates on the server, which needs dev-file"):
        preflight(custom(train_file="/n.csv", labels="a,b"), on_this_machine=False)
    preflight(custom(train_file="/n.csv", labels="a,b", central_eval=False), on_this_machine=False)


def test_a_column_partition_with_the_wrong_client_count_stops_before_start(tmp_path):
    from fedtt_flwr.preflight import check_clients

    path = _csv(tmp_path / "r.csv", [f"t {i},a,{'xyz'[i % 3]}" for i in range(9)], "text,label,site")
    cfg = custom(train_file=str(path), labels="a,b", partition="column", partition_column="site")
    check_clients(cfg, 3)
    with pytest.raises(ValueError, match=r"'site' has 3 values \(x, y, z\); run with 3 clients"):
        check_clients(cfg, 5)


def test_csv_errors_say_what_to_fix_and_folders_take_data_format(tmp_path):
    bad = tmp_path / "q.csv"
    bad.write_text('text,label\n"Hi" he said,a\n')
    with pytest.raises(ValueError, match=r"line 2: ',' expected after '\"' \(a quoted field must end at its quote"):
        load_split(task_of(custom(train_file=str(bad), labels="a,b")), "train")
    folder = tmp_path / "exports"
    folder.mkdir()
    (folder / "part-0.txt").write_text("text\tlabel\nok\ta\n")
    task = task_of(custom(train_file=str(folder), data_format="tsv", labels="a,b"))
    assert load_split(task, "train")["text_a"] == ["ok"]


def test_a_nodes_own_file_may_be_a_glob(tmp_path):
    from fedtt_flwr.client import node_partition

    (tmp_path / "site" / "2026").mkdir(parents=True)
    _csv(tmp_path / "site" / "2026" / "train.csv", ["ok,a"])

    class Ctx:
        node_config = {"train-file": str(tmp_path / "site" / "*" / "train.csv")}
        run_config = {"task": "custom", "labels": "a,b"}

    cfg, pid, num = node_partition(Ctx())
    assert cfg.train_file == Ctx.node_config["train-file"] and (pid, num) == (0, 1)
    Ctx.node_config = {"train-file": str(tmp_path / "nowhere" / "*.csv")}
    with pytest.raises(ValueError, match="node config 'train-file': .* no file matches on this node"):
        node_partition(Ctx())


def test_adversarial_inputs_get_clear_errors_or_the_right_result(tmp_path, monkeypatch):
    from fedtt_flwr.processes import format_overrides

    # duplicate columns: an error, not the last one silently
    dup = _csv(tmp_path / "dup.csv", ["hello,pos,world"], "text,label,text")
    with pytest.raises(ValueError, match=r"dup.csv line 1: the column 'text' appears twice"):
        load_split(task_of(custom(train_file=str(dup), labels="pos,neg")), "train")
    (tmp_path / "dup.jsonl").write_text('{"text": "first", "text": "second", "label": "pos"}\n')
    with pytest.raises(ValueError, match=r"dup.jsonl line 1: the field 'text' appears twice"):
        load_split(task_of(custom(train_file=str(tmp_path / "dup.jsonl"), labels="pos,neg")), "train")
    # a huge integer score, digit-like labels
    (tmp_path / "big.jsonl").write_text('{"text": "q", "label": ' + "9" * 400 + "}\n")
    with pytest.raises(ValueError, match="line 1, column 'label': expected a number"):
        load_split(task_of(custom(train_file=str(tmp_path / "big.jsonl"), task_kind="regression")), "train")
    odd = _csv(tmp_path / "odd.csv", ["a,--1", "b,1", "c,\u00b2"])
    assert with_labels(task_of(custom(train_file=str(odd)))).labels == ("--1", "1", "\u00b2")  # text, not numbers
    # a real file whose name looks like a glob is that file
    weird = _csv(tmp_path / "we[ird].csv", ["ok,a"])
    assert load_split(task_of(custom(train_file=str(weird), labels="a,b")), "train")["text_a"] == ["ok"]
    # values flwr run cannot carry are refused before the start; a double quote travels in single quotes
    assert format_overrides({"labels": 'he said "yes",no', "x": "caf\u00e9 \U0001F600"}) == \
        """labels='he said "yes",no' x="caf\u00e9 \U0001F600\""""
    with pytest.raises(ValueError, match="flwr run cannot pass"):
        format_overrides({"labels": "it's \"x\""})


def test_your_own_label_order_on_a_hub_dataset_maps_by_class_name(tmp_path, monkeypatch):
    import datasets

    from fedtt_flwr import data

    features = datasets.Features(sentence=datasets.Value("string"),
                                 label=datasets.ClassLabel(names=["negative", "positive"]))
    ds = datasets.Dataset.from_dict({"sentence": ["bad film", "great film"], "label": [0, 1]}, features=features)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: ds)
    task = task_of(custom(hub_dataset="someone/reviews", text_columns="sentence", labels="positive,negative"))
    records = data._hub_records(task, "train", cached=True)
    from fedtt_flwr.tasks import Examples

    examples = Examples()
    examples.read(task, records)
    assert examples.label == ["negative", "positive"]  # names, then mapped onto the order you chose


def test_partitions_that_cannot_be_made_are_named_before_start(tmp_path):
    from fedtt_flwr.preflight import check_clients

    path = _csv(tmp_path / "small.csv", [f"row {i},{'ab'[i % 2]}" for i in range(12)])
    with pytest.raises(ValueError, match=r"partition = 'pathological', classes-per-client 3: 12 training rows cannot "
                                         r"be split between 2 clients .*fewer classes-per-client"):
        check_clients(custom(train_file=str(path), labels="a,b", partition="pathological", classes_per_client=3), 2)
    check_clients(custom(train_file=str(path), labels="a,b", partition="iid"), 4)
