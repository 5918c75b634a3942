"""Bytes of one client reply on the wire (as Flower serializes it for transport) against the strategy's count
of tensor bytes, per method, with and without `pack-arrays`; MiniLM on SST-2. No training: trained values
are stood in for by distinct random numbers (identical arrays, e.g. LoRA's zero B at initialisation, are sent
once per message by Flower, which would flatter an untrained state).

    .venv/bin/python -m benchmarks.wire_bytes
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from benchmarks._common import write_result
from fedtt_flwr.adapters import get_adapter_state
from fedtt_flwr.config import RunConfig
from fedtt_flwr.methods import build_model
from fedtt_flwr.server import wire_bytes
from strategies import record_bytes, reply_content
from strategies.packing import pack
from strategies.wire import LAYOUT_PREFIX

METHODS = ("fedtt", "lora", "ffa-lora", "adapter")


def reply(arrays: ArrayRecord, packed: bool) -> Message:
    """The reply a ClientApp sends (``reply_content``: packed with its layout digest when the server packed)."""
    config = ConfigRecord({"server-round": 1})
    if packed:
        config[LAYOUT_PREFIX + "arrays"] = pack(arrays)[1]
    metrics = MetricRecord({"num-examples": 6735, "train-loss": 0.5})
    content = reply_content(RecordDict({"config": config}), arrays, metrics)
    return Message(content, dst_node_id=1, message_type="train")


def measure(method: str) -> dict:
    model, _ = build_model(RunConfig.from_flower({"model": "minilm", "task": "sst2", "method": method}))
    trained = set(model.fedtt_state_names) if method != "ffa-lora" else {
        n for n in model.fedtt_state_names if "lora_A" not in n}
    rng = np.random.default_rng(0)
    state = {n: rng.standard_normal(t.shape).astype(np.float32) for n, t in get_adapter_state(model).items()
             if n in trained}
    record = ArrayRecord({n: Array(v) for n, v in state.items()})
    plain, packed = reply(record, False), reply(record, True)
    return {"tensors": len(state), "values": int(sum(v.size for v in state.values())),
            "counted": record_bytes(plain.content), "wire": wire_bytes(plain),
            "counted_packed": record_bytes(packed.content), "wire_packed": wire_bytes(packed)}


def main() -> None:
    TaskIdentity.run_id = TaskIdentity.task_id = TaskIdentity.node_id = 1  # Messages outside a Flower runtime
    rows = {m: measure(m) for m in METHODS}
    write_result("wire_bytes", {"model": "minilm", "rows": rows,
                                "command": ".venv/bin/python -m benchmarks.wire_bytes"})
    print("| method | tensors | values | counted | on the wire | counted, packed | on the wire, packed |"
          " lora / method on the wire (unpacked, packed) |")
    print("|---|---|---|---|---|---|---|---|")
    lora = rows["lora"]
    for m, r in rows.items():
        print(f"| {m} | {r['tensors']} | {r['values']:,} | {r['counted']:,} | {r['wire']:,} | "
              f"{r['counted_packed']:,} | {r['wire_packed']:,} | {lora['wire'] / r['wire']:.2f}, "
              f"{lora['wire_packed'] / r['wire_packed']:.2f} |")


if __name__ == "__main__":
    main()
