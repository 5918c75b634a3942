"""`make run` in a fresh copy of the repository, as anyone who clones it gets it: no ../shared/data beside it,
no Hugging Face hub (an endpoint that refuses), an empty cache. It must fail in seconds with one line that
says where it looked, start nothing; and with FEDTT_DATA_DIR it must run a real federation."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix) if sys.prefix != sys.base_prefix else None  # the venv running this test


def fresh_clone(tmp_path: Path) -> Path:
    """The repository's files (tracked and new, not ignored) in ``tmp_path/work/fedtt-flwr``: nothing beside it."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    clone = tmp_path / "work" / "fedtt-flwr"
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, clone / name)
    return clone


def make_run(clone: Path, tmp_path: Path, args: str, timeout: float, **env_extra) -> tuple[subprocess.CompletedProcess,
                                                                                           float, str]:
    """``make run ARGS=...`` in ``clone`` with this test's environment (the installed venv, its install step
    marked done), offline mode not forced and the hub unreachable; returns (result, seconds, marker)."""
    marker = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "FEDTT_DATA_DIR", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"), FEDTT_CACHE_DIR=str(tmp_path / "cache"),
               FEDTT_TEST_MARK=marker, **env_extra)
    stamp = VENV / ".fedtt-installed"
    started = time.monotonic()
    result = subprocess.run(["make", "-C", str(clone), "run", f"VENV={VENV}", "-o", str(stamp), f"ARGS={args}"],
                            env=env, capture_output=True, text=True, timeout=timeout)
    return result, time.monotonic() - started, marker


def processes_with(marker: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if f"FEDTT_TEST_MARK={marker}".encode() in (proc / "environ").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


pytestmark = pytest.mark.skipif(VENV is None or shutil.which("make") is None, reason="needs make and a venv")


def test_make_run_without_data_fails_in_seconds_with_one_line(tmp_path):
    clone = fresh_clone(tmp_path)
    assert not (clone.parent / "shared").exists()
    result, seconds, marker = make_run(clone, tmp_path, "", timeout=120)
    assert result.returncode != 0
    assert seconds < 15, f"took {seconds:.1f} s"
    errors = [line for line in result.stderr.splitlines() if line.startswith("fedtt-flwr simulate: error:")]
    assert len(errors) == 1, result.stderr
    message = errors[0]
    for place in ("data-dir (not set)", "$FEDTT_DATA_DIR (not set)", "../shared/data next to the checkout",
                  "the Hugging Face hub (http://127.0.0.1:9", "set FEDTT_DATA_DIR=",
                  "python -m fedtt_flwr.data download sst2"):
        assert place in message, message
    assert "Traceback" not in result.stderr and "starting a simulation SuperLink" not in result.stdout
    assert processes_with(marker) == []


def test_make_run_with_fedtt_data_dir_completes(tmp_path, tiny_model_dir, tiny_sst2_dir):
    clone = fresh_clone(tmp_path)
    out = tmp_path / "runs"
    args = (f'--num-clients 2 --set model="{tiny_model_dir}" --set num-server-rounds=1 --set local-steps=2 '
            f'--set max-length=16 --set batch-size=8 --set min-clients=2 --set output-dir="{out}" '
            '--set run-name="clone"')
    result, _, marker = make_run(clone, tmp_path, args, timeout=600, FEDTT_DATA_DIR=str(tiny_sst2_dir))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"[fedtt] data: $FEDTT_DATA_DIR {tiny_sst2_dir}" in result.stdout
    lines = [json.loads(x) for x in (out / "clone" / "metrics.jsonl").read_text().splitlines()]
    assert [x["round"] for x in lines] == [0, 1] and lines[1]["replies"] == 2
    # the command ends with its own run's report: the table line and the plot
    assert "| clone (unfinished) |" not in result.stdout and "| clone | fedtt | 1 |" in result.stdout
    assert f"[fedtt] report: {out / 'clone' / 'report.md'} and {out / 'clone' / 'report.png'}" in result.stdout
    time.sleep(2)
    assert processes_with(marker) == []
