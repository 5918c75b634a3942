"""Packed messages: one flat array per record; the same numbers, fewer bytes, the same aggregation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from safetensors.numpy import load_file

from strategies import pack, unpack


def _record() -> ArrayRecord:
    rng = np.random.default_rng(0)
    return ArrayRecord({"a.core_0": Array(rng.normal(size=(1, 4, 3)).astype(np.float32)),
                        "a.core_1": Array(rng.normal(size=(3, 4, 1)).astype(np.float32)),
                        "head.bias": Array(rng.normal(size=(2,)).astype(np.float32))})


def test_round_trip_and_fewer_bytes():
    record = _record()
    packed, layout = pack(record)
    assert list(packed.keys()) == ["packed"] and layout == "a.core_0:1x4x3;a.core_1:3x4x1;head.bias:2"
    back = unpack(packed, layout)
    assert list(back.keys()) == list(record.keys())
    assert all(np.array_equal(back[n].numpy(), record[n].numpy()) for n in record)
    assert packed.count_bytes() + len(layout) < record.count_bytes()


def test_bad_packed_records_are_clear_errors():
    packed, layout = pack(_record())
    with pytest.raises(ValueError, match="has 26 values, the layout needs 27"):
        unpack(packed, layout + ";extra:1")
    with pytest.raises(ValueError, match="expected one array named 'packed'"):
        unpack(_record(), layout)
    with pytest.raises(ValueError, match="bad layout entry"):
        unpack(packed, "nocolon")
    mixed = ArrayRecord({"x": Array(np.zeros(2, np.float32)), "y": Array(np.zeros(2, np.float64))})
    with pytest.raises(ValueError, match="share a dtype"):
        pack(mixed)


@pytest.mark.parametrize("method", ["fedtt", "fedtt+", "rolora"])
def test_packed_run_equals_unpacked_run_with_fewer_bytes(tmp_path, tiny_model_dir, tiny_sst2_dir, method):
    from fedtt_flwr.inprocess import run_inprocess

    runs = {}
    for packed in (False, True):
        name = f"pack-{packed}"
        run_inprocess({"model": str(tiny_model_dir), "data-dir": str(tiny_sst2_dir), "num-server-rounds": 3,
                       "local-steps": 2, "max-length": 16, "output-dir": str(tmp_path), "run-name": name,
                       "method": method, "pack-arrays": packed, "fraction-train": 0.67, "min-clients": 2},
                      num_nodes=3)
        lines = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        runs[packed] = (load_file(str(tmp_path / name / "adapter.safetensors")), lines)
    (plain, plain_lines), (packed, packed_lines) = runs[False], runs[True]
    assert plain.keys() == packed.keys()
    assert all(np.array_equal(plain[k], packed[k]) for k in plain)  # bit-identical global adapters
    assert all(x["rejected"] == 0 and x["replies"] == 2 for x in packed_lines[1:])
    for a, b in zip(plain_lines[1:], packed_lines[1:], strict=True):
        assert b["bytes_up"] < a["bytes_up"] and b["bytes_down"] < a["bytes_down"]
        assert a.get("accuracy") == b.get("accuracy")
    if method == "fedtt":  # the parameter report's packed uplink is what the run counted (2 clients a round)
        from fedtt_flwr.config import RunConfig
        from fedtt_flwr.methods import resolve
        from fedtt_flwr.report import param_report

        cfg = RunConfig(model=str(tiny_model_dir))
        report = param_report(str(tiny_model_dir), adapter_config=resolve(cfg).adapter_config(cfg))
        assert packed_lines[1]["bytes_up"] == 2 * report["methods_packed"]["fedtt"]["bytes_up_per_round"]
        assert plain_lines[1]["bytes_up"] == 2 * report["methods"]["fedtt"]["bytes_up_per_round"]
