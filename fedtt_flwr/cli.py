"""``fedtt-flwr`` command line: ``params`` (communication report), ``finetune`` (centralized run), ``simulate``
(Ray simulation), ``deploy``/``loopback`` (a real federation with TLS and SuperNode authentication)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from .worker import WorkerError


def _params(args: argparse.Namespace) -> int:
    from .config import TTAdapterConfig
    from .report import client_memory, param_report

    norms = {"off": False, "on": True, "weight": "weight"}.get(args.train_layernorm)
    dense_norms = None
    if norms is None:  # auto: what a run trains and sends (fedtt/fedtt+ with a classification head: the gains;
        norms = "weight" if args.task_kind != "causal-lm" else False  # the baselines, the dense adapter too: none)
        dense_norms = False
    cfg = TTAdapterConfig(rank=args.rank, bottleneck=args.bottleneck, bias=args.bias, train_layernorm=norms,
                          tensorized_classifier={"on": True, "off": False}.get(args.tensorized_classifier, "auto"))
    report = param_report(args.model, lora_rank=args.lora_rank, task_kind=args.task_kind,
                          num_labels=args.num_labels, adapter_config=cfg, dense_layernorm=dense_norms,
                          wire=args.wire_precision, block=args.wire_block)
    if args.memory:
        report["client_memory_gb"] = [client_memory(report, args.batch_size, args.seq_len, args.dtype, ckpt)
                                      for ckpt in (False, True)]
    print(json.dumps(report, indent=2 if args.pretty else None))
    return 0


def _generate(args: argparse.Namespace) -> int:
    """Answers from an instruction-tuned run's model (or, with ``--base``, its base model), greedy, one per prompt."""
    import torch

    from .checkpoint import load_run
    from .models import load_model, pick_device
    from .sft import generate_answers, prompt_ids
    from .tasks import task_of

    model, tokenizer, cfg = load_run(args.run, device=str(pick_device(args.device)))
    if task_of(cfg).kind != "generation":
        raise ValueError(f"{args.run} is a {task_of(cfg).kind} run; generate answers prompts with an instruction-tuned "
                         "run (task-kind = generation)")
    if args.base:
        model, tokenizer = load_model(cfg.model, "causal-lm", dtype=cfg.dtype, device=model.device)
        model.eval()
    prompts = args.prompt or [line.strip() for line in sys.stdin if line.strip()]
    for text in prompts:
        ids = torch.tensor([prompt_ids([{"role": "user", "content": text}], tokenizer)], device=model.device)
        answer = generate_answers(model, tokenizer, ids, torch.ones_like(ids), args.max_new_tokens)[0]
        print(json.dumps({"prompt": text, "answer": answer.strip()}, ensure_ascii=False), flush=True)
    return 0


def _instructions(args: argparse.Namespace) -> int:
    from .instructions import write

    for path in write(args.out, args.data_dir, args.per_family, args.dev_per_family, args.seed):
        print(path)
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from .centralized import FinetuneConfig, finetune

    cfg = FinetuneConfig(**{k: v for k, v in vars(args).items() if k in FinetuneConfig.model_fields and v is not None})
    result = finetune(cfg)
    print(json.dumps(result, indent=2))
    return 0


def _config_options(parser: argparse.ArgumentParser) -> None:
    """``--<key>`` for every key of :class:`~fedtt_flwr.centralized.FinetuneConfig`, from the config itself (one
    place for names, types, defaults and help); ``--bias`` is short for ``--adapter-bias true``."""
    from .centralized import FinetuneConfig
    from .config import TRAINING_KEYS

    for name, field in FinetuneConfig.model_fields.items():
        if name in TRAINING_KEYS and name not in FinetuneConfig.USED:
            continue  # a federation's key: no meaning for one centralized run
        flag = "--" + name.replace("_", "-")
        default = field.default if field.default is not None else "none"
        parser.add_argument(flag, dest=name, type=_parse_value, metavar="VALUE",
                            help=f"{field.description or ''} (default: {default})".strip().replace("%", "%%"))
    parser.add_argument("--bias", dest="adapter_bias", action="store_const", const=True,
                        help="TT layers with biases (= --adapter-bias true)")


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


def app_overrides(items: list[str] | None, num_clients: int | None = None, local_data: bool = True) -> dict:
    """``--set`` overrides for a ``flwr run``, checked before anything starts (:mod:`fedtt_flwr.preflight`). With
    ``local_data`` (a simulation, loopback: the apps run on this machine) also with absolute paths (flwr runs the
    apps from the SuperLink's folder), the data source resolved and everything about this machine checked;
    without (``deploy run`` from a laptop) only what does not depend on the machine."""
    from .config import RunConfig
    from .preflight import preflight
    from .tasks import CUSTOM

    overrides = parse_overrides(items or [])
    if not local_data:  # `deploy run`: the apps run on the SuperLink's machine: its paths, model and data
        preflight(RunConfig.from_flower(overrides), num_clients, on_this_machine=False)
        return overrides
    overrides["output-dir"] = str(Path(overrides.get("output-dir", "runs")).expanduser().resolve())
    cfg = RunConfig.from_flower(overrides)  # a bad key or value: fail here
    if cfg.task == CUSTOM:
        overrides.update(own_data(cfg))
    else:
        overrides["data-dir"] = str(local_data_dir(cfg.task, cfg.data_dir or None))
    note = preflight(RunConfig.from_flower(overrides), num_clients)
    if note:
        print(f"[fedtt] {note}", flush=True)
    return overrides


def own_data(cfg) -> dict:
    """A custom task's overrides for the apps: its files as absolute paths (flwr runs the apps from the SuperLink's
    folder) and, for a classification without ``labels``, the label set of the training split, fixed here so that
    every node and the server agree (it is in the run's config.json)."""
    from .data import with_labels
    from .tasks import task_of

    out = {}
    for key, value in (("train-file", cfg.train_file), ("dev-file", cfg.dev_file)):
        path = Path(value).expanduser()
        if value and not path.is_absolute():
            out[key] = str((Path(cfg.data_dir) if cfg.data_dir else Path.cwd()).joinpath(path).resolve())
    task = task_of(cfg.model_copy(update={k.replace("-", "_"): v for k, v in out.items()}))
    if task.kind == "classification" and task.labels is None:
        labels = with_labels(task, cfg.data_dir or None).labels
        if any("," in label for label in labels):
            raise ValueError(f"task {task.name}: a label holds a comma ({[x for x in labels if ',' in x][0]!r}), which "
                             "the labels key cannot list; rename it in the file")
        out["labels"] = ",".join(labels)
        print(f"[fedtt] data: labels {list(labels)} (from the training split; set labels = '...' to fix an order)",
              flush=True)
    sources = [f"{s}-file {out.get(f'{s}-file', v)}" for s, v in task.files]
    sources += [f"hub {' '.join(filter(None, task.hub))}"] if task.hub else []
    print(f"[fedtt] data: task {task.name} ({task.kind}), {', '.join(sources)}", flush=True)
    return out


def local_data_dir(task: str, data_dir: str | None) -> Path:
    """The folder the apps read ``task`` from: ``data-dir``, ``$FEDTT_DATA_DIR``, ``../shared/data``, else the
    Hugging Face hub (or its cache) written once into the local layout under ``$FEDTT_CACHE_DIR/data``, so the
    apps themselves never need the network. No source: one line saying where it looked and how to fix it."""
    from .data import download, resolve_data_source
    from .models import cache_dir

    source = resolve_data_source(task, data_dir)
    if source.kind == "hub":
        folder = cache_dir() / "data"
        try:
            resolve_data_source(task, folder)
        except FileNotFoundError:
            print(f"[fedtt] data: fetching {task} from {source.description} into {folder}", flush=True)
            download([task], folder)
        source = resolve_data_source(task, folder)
    print(f"[fedtt] data: {source.description}", flush=True)
    return source.folder


def _run_folders(overrides: dict) -> set[str]:
    """The folders under a local output-dir now (taken before a run, so its own new folder can be told apart)."""
    output = Path(str(overrides.get("output-dir", "runs"))).expanduser()
    return {p.name for p in output.iterdir() if p.is_dir()} if output.is_dir() else set()


def _results_line(overrides: dict, before: set[str] | None = None) -> None:
    """Where the run's files are: the run folder itself when it is known here (``run-name``, ``resume``, or the
    folder this run created under a local output-dir: one not in ``before``), else where to find its name."""
    output = str(Path(str(overrides.get("output-dir", "runs"))).expanduser())
    folder = overrides.get("resume") or (f"{output}/{overrides['run-name']}" if overrides.get("run-name") else None)
    if folder is None and before is not None and Path(output).is_dir():
        new = [p for p in Path(output).iterdir() if p.is_dir() and p.name not in before]
        folder = str(max(new, key=lambda p: p.stat().st_ctime)) if new else None
    where = f"{folder}/" if folder else f"{output}/<run-name>/ on the server (the log names it: 'run folder ...')"
    print(f"[fedtt] results: {where} (metrics.jsonl, config.json, summary.json, adapter.safetensors)")
    if folder and (Path(folder) / "metrics.jsonl").exists():
        _own_report(folder)


def _own_report(folder: str) -> None:
    """The run's report line and plot (never fails the command: the run's files are what counts)."""
    from .runs import report

    try:
        result = report([folder])
    except Exception as exc:  # noqa: BLE001 - a report that cannot be made is a note, not a failed run
        print(f"[fedtt] report: not written ({type(exc).__name__}: {exc})")
        return
    print(result["table"].splitlines()[-1])
    print(f"[fedtt] report: {result['markdown']} and {result['plot']} (compare runs: fedtt-flwr report RUN RUN ...)")


def _report(args: argparse.Namespace) -> int:
    from .runs import lower_is_better, report

    result = report(args.runs, metric=args.metric, level=args.level, out=args.out)
    print(result["table"])
    sign = "<=" if lower_is_better(result["metric"]) else ">="
    print(f"[fedtt] level: {result['metric']} {sign} {result['level']:.4g}; table {result['markdown']}, "
          f"plot {result['plot']}")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from .launch import simulate

    overrides = app_overrides(args.set, args.num_clients)
    before = _run_folders(overrides)
    code = simulate(num_supernodes=args.num_clients, run_config=overrides, cpus_per_client=args.cpus_per_client,
                    gpus_per_client=args.gpus_per_client, flwr_home=args.flwr_home, ray_address=args.ray_address)
    _results_line(overrides, before)
    return code


def _deploy(args: argparse.Namespace) -> int:
    import os
    import shlex

    from . import deploy

    action = args.action
    if action == "certs":
        paths = deploy.make_certificates(args.out, args.host or [], days=args.days, overwrite=args.overwrite,
                                         renew_server=args.renew_server, keep_hosts=not args.drop_old_hosts)
        print(f"server.pem is valid for: {', '.join(deploy.certificate_hosts(paths['server.pem']))}")
        print("\n".join(f"{name}: {path}" for name, path in paths.items()))
        print("[fedtt] ca.crt goes to every SuperNode and CLI user; server.pem/server.key to the SuperLink only; "
              "keep ca.key offline")
        return 0
    if action == "node-key":
        private, public = deploy.make_node_key(args.out, args.name, overwrite=args.overwrite)
        print(f"private: {private} (stays on the SuperNode)\npublic: {public} (register it on the SuperLink)")
        return 0
    if action in ("superlink", "supernode"):
        if action == "superlink":
            cmd = deploy.superlink_command(args.certs, args.state, args.port, host=args.host, auth=not args.no_auth,
                                           exe=deploy.flower_bin("flower-superlink"))
            home = Path(args.state)
        else:
            cmd = deploy.supernode_command(args.superlink, args.ca, args.key,
                                           deploy.node_config(args.data_dir, args.partition_id, args.num_partitions,
                                                              args.train_file, args.dev_file, args.worker),
                                           args.port, exe=deploy.flower_bin("flower-supernode"))
            home = Path(args.flwr_home)
        print(shlex.join(cmd), flush=True)
        if args.print_only:
            return 0
        home.mkdir(parents=True, exist_ok=True)
        os.execvpe(cmd[0], cmd, deploy.flwr_env(home))  # replaces this process: systemd sees Flower's own
    env = deploy.flwr_env(deploy.write_cli_home(args.flwr_home, "fedtt-deploy", args.superlink, args.ca))
    if action == "register":
        for key in args.public_keys:
            print(f"{key}: node {deploy.register_node(key, env, 'fedtt-deploy')}")
        return 0
    if action == "run":
        overrides = app_overrides(args.set, local_data=False)  # the nodes bring their own data
        before = _run_folders(overrides)
        status = deploy.run_and_wait(env, "fedtt-deploy", overrides, args.timeout)
        _results_line(overrides, before)  # the folder itself when output-dir is on this machine
        return 0 if status == "finished:completed" else 1
    raise ValueError(f"unknown deploy action {action!r}")


def _loopback(args: argparse.Namespace) -> int:
    import json as _json
    import tempfile

    from . import deploy

    items = list(args.set or [])
    if not any(item.partition("=")[0].strip() == "min-clients" for item in items):
        items.append(f"min-clients={args.nodes}")  # every node in every round, unless told otherwise
    overrides = app_overrides(items, args.nodes)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="fedtt-deploy-"))
    if not overrides.get("data-dir"):
        raise ValueError("loopback splits a local data folder between its SuperNodes: --set data-dir=/abs/path")
    nodes = [deploy.node_config(overrides["data-dir"], i, args.nodes) for i in range(args.nodes)]
    result = deploy.loopback(work, overrides, nodes, timeout=args.timeout, workers=not args.no_worker)
    print(_json.dumps(result, indent=2))
    _results_line(overrides)
    return 0 if result["status"] == "finished:completed" else 1


def _worker(args: argparse.Namespace) -> int:
    import json as _json

    from . import worker
    from .processes import exit_on_signals

    if args.status:
        print(_json.dumps(worker.status(args.socket), indent=2))
        return 0
    exit_on_signals()  # SIGTERM (systemd stop) unwinds: the socket file is removed
    server = worker.Worker(args.socket)
    server.bind()
    from . import client  # noqa: F401  torch and transformers now, not in the first round

    server.log("ready")
    server.serve_forever()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedtt-flwr", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("params", help="trainable parameters and bytes per round: TT adapters vs LoRA")
    p.add_argument("--model", default="minilm",
                   help="minilm, mpnet-base, smollm2-135m, roberta-base, roberta-large, llama-2-7b, llama-2-13b, or "
                        "a HF name/path")
    p.add_argument("--rank", type=int, default=5, help="TT rank")
    p.add_argument("--bottleneck", type=int, default=64)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--wire-precision", choices=("float32", "float16", "bfloat16", "int8"), default="float32",
                   help="the packed records' precision (methods_packed), as the run config's wire-precision")
    p.add_argument("--wire-block", type=int, default=128, help="int8: values per scale (wire-block)")
    p.add_argument("--bias", action="store_true", help="TT layers with biases (they train and travel)")
    p.add_argument("--tensorized-classifier", choices=("auto", "on", "off"), default="auto",
                   help="a RoBERTa-style classifier.dense as a TT layer (auto: where the head has one)")
    p.add_argument("--train-layernorm", choices=("off", "weight", "on", "auto"), default="off",
                   help="also count the LayerNorm gains (weight) or gains and biases (on) that fedtt sends; auto: as a "
                        "run's train-layernorm = auto does (the gains with a classification head); off: the method's "
                        "own tensors (the paper's count)")
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

    f = sub.add_parser("finetune", help="centralized fine-tune with TT adapters or a baseline (a reference run)",
                       description="Every option is a key of the run configuration (docs/federated.md), plus "
                                   "--train-size, --epochs and --warmup; values as in --set (TOML, or a bare word).")
    _config_options(f)
    f.set_defaults(func=_finetune)

    g = sub.add_parser("generate", help="answer prompts with an instruction-tuned run's model (its run folder)")
    g.add_argument("--run", required=True, help="the run folder (config.json and adapter.safetensors)")
    g.add_argument("prompt", nargs="*", help="prompts, each one user message; none: one per line from stdin")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--base", action="store_true", help="the base model without the run's adapters, to compare")
    g.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N, mps")
    g.set_defaults(func=_generate)

    i = sub.add_parser("instructions", help="write the FLAN-style instruction mix (six task families) from a GLUE/"
                                            "SuperGLUE data folder, for task-kind = generation")
    i.add_argument("--out", required=True, help="folder for train.jsonl and dev.jsonl")
    i.add_argument("--data-dir", help="the GLUE/SuperGLUE folder (default: $FEDTT_DATA_DIR, ../shared/data, the hub)")
    i.add_argument("--per-family", type=int, default=600, help="training rows per task family")
    i.add_argument("--dev-per-family", type=int, default=60, help="held-out rows per task family")
    i.add_argument("--seed", type=int, default=0)
    i.set_defaults(func=_instructions)

    s = sub.add_parser("simulate", help="federated run: Flower's Ray simulation engine through `flwr run`")
    s.add_argument("--num-clients", type=int, default=10, help="simulated SuperNodes (one data partition each)")
    s.add_argument("--cpus-per-client", type=int, default=1)
    s.add_argument("--gpus-per-client", type=float, default=0.0, help="fractional GPUs per ClientApp, e.g. 0.25")
    s.add_argument("--flwr-home", help="FLWR_HOME to use (default: a temporary folder)")
    s.add_argument("--ray-address", help="HOST:PORT of a running Ray cluster's head (`ray start --head`): the "
                                         "simulated clients run on its nodes (docs/performance.md, 'Beyond one "
                                         "machine'); default: a Ray of this machine, started for the run")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="run-config override (repeatable), e.g. --set method=fedtt+ --set num-server-rounds=20")
    s.set_defaults(func=_simulate)

    d = sub.add_parser("deploy", help="a real federation: certificates, keys, SuperLink, SuperNodes, runs "
                                      "(docs/deployment.md)")
    dsub = d.add_subparsers(dest="action", required=True)
    c = dsub.add_parser("certs", help="a CA and the SuperLink's TLS certificate for its host names/IPs")
    c.add_argument("--out", required=True, help="folder for ca.crt, ca.key, server.pem, server.key")
    c.add_argument("--host", action="append", help="a name or IP SuperNodes dial (repeatable; 127.0.0.1 and "
                                                   "localhost are always added: the SuperLink dials itself there)")
    c.add_argument("--days", type=int, default=365)
    c.add_argument("--overwrite", action="store_true", help="a new CA too: every node needs the new ca.crt")
    c.add_argument("--renew-server", action="store_true", help="a new server certificate signed by the existing CA, "
                                                                "valid for the old one's names plus any --host")
    c.add_argument("--drop-old-hosts", action="store_true", help="with --renew-server: only the --host names given")
    k = dsub.add_parser("node-key", help="a SuperNode's authentication key pair (EC P-384, OpenSSH format)")
    k.add_argument("--out", required=True)
    k.add_argument("--name", required=True, help="file name of the private key; the public one gets .pub")
    k.add_argument("--overwrite", action="store_true")
    sl = dsub.add_parser("superlink", help="start the SuperLink with TLS and SuperNode authentication")
    sl.add_argument("--certs", required=True, help="the folder written by `deploy certs`")
    sl.add_argument("--state", required=True, help="folder for the SuperLink's state database and FLWR_HOME")
    sl.add_argument("--host", default="0.0.0.0", help="interface to listen on")
    sl.add_argument("--port", type=int, default=9200, help="the one HTTPS port of SuperNodes, CLI and ServerApp")
    sl.add_argument("--no-auth", action="store_true", help="TLS only: let any SuperNode in (not recommended)")
    sn = dsub.add_parser("supernode", help="start a SuperNode with its own data")
    sn.add_argument("--data-dir", help="this node's task folder (GLUE layout); never leaves the machine")
    sn.add_argument("--train-file", help="task = custom: this node's own training file (CSV, JSONL, ...)")
    sn.add_argument("--dev-file", help="task = custom: this node's own evaluation file")
    sn.add_argument("--partition-id", type=int, help="train on this partition of --data-dir (shared folders)")
    sn.add_argument("--num-partitions", type=int)
    sn.add_argument("--key", required=True, help="this node's private key (`deploy node-key`)")
    sn.add_argument("--worker", help="socket of this node's training worker (`fedtt-flwr worker`): the model and "
                                     "data stay loaded between rounds")
    sn.add_argument("--port", type=int, default=9094, help="its local ClientApp API port (one per node on a host)")
    sn.add_argument("--flwr-home", default=str(Path.home() / ".fedtt-flwr" / "supernode"))
    for p_ in (sl, sn):
        p_.add_argument("--print-only", action="store_true", help="print the Flower command (e.g. for a systemd "
                                                                  "unit) instead of running it")
    r = dsub.add_parser("register", help="allow SuperNodes in: register their public keys on the SuperLink")
    r.add_argument("public_keys", nargs="+")
    ru = dsub.add_parser("run", help="run the app on the SuperLink and wait for its final status")
    ru.add_argument("--set", action="append", metavar="KEY=VALUE", help="run-config override (repeatable)")
    ru.add_argument("--timeout", type=float, default=24 * 3600)
    for p_ in (sn, r, ru):
        p_.add_argument("--superlink", required=True, help="HOST:PORT of the SuperLink")
        p_.add_argument("--ca", required=True, help="ca.crt from `deploy certs`")
    for p_ in (r, ru):
        p_.add_argument("--flwr-home", default=str(Path.home() / ".fedtt-flwr" / "cli"),
                        help="the CLI's FLWR_HOME (its connection to the SuperLink is written there)")
    d.set_defaults(func=_deploy)

    lb = sub.add_parser("loopback", help="the whole secure deployment on this machine: TLS, registered "
                                         "SuperNodes on partitions of data-dir, an unregistered one refused, a run")
    lb.add_argument("--nodes", type=int, default=2)
    lb.add_argument("--work-dir", help="certificates, keys, logs (default: a temporary folder)")
    lb.add_argument("--timeout", type=float, default=6 * 3600)
    lb.add_argument("--set", action="append", metavar="KEY=VALUE", help="run-config override (repeatable)")
    lb.add_argument("--no-worker", action="store_true", help="no training worker beside each SuperNode: a new "
                                                             "ClientApp process loads the model every round")
    lb.set_defaults(func=_loopback)

    rp = sub.add_parser("report", help="compare finished runs: a table (final and best metric, rounds and uplink MB "
                                       "to a level, MB both ways, wall time) and plots against round and uplink MB")
    rp.add_argument("runs", nargs="+", help="run folders (each holding metrics.jsonl)")
    rp.add_argument("--metric", help="the dev metric (default: the task's main one that every run recorded)")
    rp.add_argument("--level", type=float, help="the level for 'rounds / MB to' (default: the lowest final value "
                                                "among the runs, one every run reached)")
    rp.add_argument("--out", help="folder for the table and the plot (default: the run folder for one run, the "
                                  "runs' common parent folder for several)")
    rp.set_defaults(func=_report)
    w = sub.add_parser("worker", help="a node's training worker: keeps the model and data loaded between rounds "
                                      "for its SuperNode's ClientApps (docs/deployment.md)")
    w.add_argument("--socket", required=True, help="Unix socket path (its folder: owner-only, created if absent); "
                                                   "the SuperNode's node config names it as worker=\"PATH\"")
    w.add_argument("--status", action="store_true", help="print a running worker's counters and exit")
    w.set_defaults(func=_worker)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "params" and args.task_kind is None:
        from .models import model_config
        from .prompts import is_decoder_only

        args.task_kind = "causal-lm" if is_decoder_only(model_config(args.model).model_type) else "classification"
    from .preflight import NothingToDo

    try:
        return args.func(args)
    except NothingToDo as exc:
        print(f"[fedtt] {exc}")
        return 0
    except ValidationError as exc:
        from .config import format_validation_error

        print(f"fedtt-flwr {args.command}: {format_validation_error(exc, 'setting')}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, OSError, KeyError, WorkerError) as exc:
        print(f"fedtt-flwr {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
