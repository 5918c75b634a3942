"""Hostile and broken clients: nothing a reply holds may crash the server, stall training or change its dtypes.

Replies travel through Flower's own serialization (``InProcessGrid``), honest clients reply float32 like the
real ClientApp, and a corruption is applied to the reply as a client could craft it (raw ``Array`` bytes and
metadata, record structure, metrics, duplicates, a reply in another order or from another round).
"""

from __future__ import annotations

import io
import random
import zlib

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
)
from test_strategies import global_record, numpy_client

from fedtt_flwr.inprocess import InProcessGrid, over_the_wire
from strategies import REPLY_KEY, FastFedAvg, FedTT, FedTTPlus, layout_digest
from strategies.hetero import FedTTHetero
from strategies.residual import FedLoRAResidual
from strategies.wire import LAYOUT_PREFIX, format_layout, parse_layout

COMMON = dict(min_train_nodes=4, min_available_nodes=4, fraction_evaluate=0.0)
INNERS = {
    "fastfedavg": lambda: FastFedAvg(**COMMON),
    "fedavg": lambda: FedAvg(**COMMON),
    "fedavgm": lambda: FedAvgM(**COMMON, server_learning_rate=0.5, server_momentum=0.5),
    "fedadam": lambda: FedAdam(**COMMON, eta=0.1),
    "fedyogi": lambda: FedYogi(**COMMON, eta=0.1),
    "fedadagrad": lambda: FedAdagrad(**COMMON, eta=0.1),
    "fedprox": lambda: FedProx(**COMMON, proximal_mu=0.1),
    "fedmedian": lambda: FedMedian(**COMMON),
    "fedtrimmedavg": lambda: FedTrimmedAvg(**COMMON, beta=0.25),
}


def npy(values: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, values, allow_pickle=True)
    return buf.getvalue()


def crafted(data: bytes, dtype: str, shape: tuple, stype: str = "numpy.ndarray") -> Array:
    return Array(dtype=dtype, shape=tuple(shape), stype=stype, data=data)


def _first(msg: Message) -> tuple[ArrayRecord, str]:
    rec = msg.content["arrays"]
    return rec, next(iter(rec.keys()))


def _replace_first(msg: Message, make) -> None:
    rec, name = _first(msg)
    arr = rec[name]
    values = np.frombuffer(arr.data[-int(np.prod(arr.shape)) * 4:], dtype=np.float32).reshape(arr.shape)
    rec[name] = make(values, tuple(arr.shape))


# each corruption: (name, bad?, function(reply, rng) -> list of replies to deliver)
def _values(fill):
    def corrupt(msg, rng):
        _replace_first(msg, lambda v, s: Array(np.full(s, fill, dtype=np.float32)))
        return [msg]
    return corrupt


def _header_float64(msg, rng):  # the bytes say float64, the metadata float32
    _replace_first(msg, lambda v, s: crafted(npy(v.astype(np.float64)), "float32", s))
    return [msg]


def _int_bytes(msg, rng):  # metadata float32 over int32 bytes of 2^30
    _replace_first(msg, lambda v, s: crafted(npy(np.full(s, 2**30, np.int32)), "float32", s))
    return [msg]


def _truncated(msg, rng):
    _replace_first(msg, lambda v, s: crafted(npy(v)[:-3], "float32", s))
    return [msg]


def _padded(msg, rng):
    _replace_first(msg, lambda v, s: crafted(npy(v) + b"\0" * 8, "float32", s))
    return [msg]


def _header_shape(msg, rng):  # header shape disagrees with the metadata (same number of values)
    _replace_first(msg, lambda v, s: crafted(npy(v.reshape(-1)), "float32", s) if len(s) > 1 else
                   crafted(npy(v.reshape(1, -1)), "float32", s))
    return [msg]


def _meta_shape(msg, rng):
    _replace_first(msg, lambda v, s: crafted(npy(v), "float32", (*s, 1)))
    return [msg]


def _object(msg, rng):
    _replace_first(msg, lambda v, s: crafted(npy(np.array([1, "a"], dtype=object)), "object", (2,)))
    return [msg]


def _stype(msg, rng):
    _replace_first(msg, lambda v, s: crafted(npy(v), "float32", s, stype="torch.Tensor"))
    return [msg]


def _garbage(msg, rng):
    _replace_first(msg, lambda v, s: crafted(rng.randbytes(rng.randint(0, 300)), "float32", s))
    return [msg]


def _bad_header(msg, rng):
    _replace_first(msg, lambda v, s: crafted(npy(v).replace(b"'descr'", b"'DESCR'"), "float32", s))
    return [msg]


def _big_endian(msg, rng):
    _replace_first(msg, lambda v, s: crafted(npy(v.astype(">f4")), "float32", s))
    return [msg]


def _comma_descr(msg, rng):  # np.dtype(",f4") raises SyntaxError: it must never be parsed
    _replace_first(msg, lambda v, s: crafted(npy(v).replace(b"'<f4'", b"',f4'"), "float32", s))
    return [msg]


def _meta_dtype_syntax(msg, rng):
    _replace_first(msg, lambda v, s: crafted(npy(v), ",f4", s))
    return [msg]


def _meta_dtype_huge(msg, rng):  # np.dtype("(1,1,...)f4") of megabytes took seconds and a GB
    _replace_first(msg, lambda v, s: crafted(npy(v), "(" + "1," * 50_000 + ")f4", s))
    return [msg]


def _npy_minor_version(msg, rng):  # np.load refuses it: accepted as is it would crash a Flower inner strategy
    _replace_first(msg, lambda v, s: crafted(npy(v)[:7] + b"\x01" + npy(v)[8:], "float32", s))
    return [msg]


def _huge_values(msg, rng):  # finite, but their squares overflow FedAdam's v_t (the tensor froze for good)
    _replace_first(msg, lambda v, s: Array(np.full(s, 1e20, dtype=np.float32)))
    return [msg]


def _missing(msg, rng):
    rec, name = _first(msg)
    del rec[name]
    return [msg]


def _extra_tensor(msg, rng):
    msg.content["arrays"]["backbone.embed.weight"] = Array(np.zeros((10, 4), np.float32))
    return [msg]


def _second_array_record(msg, rng):
    msg.content["more"] = ArrayRecord({"x": Array(np.zeros(2, np.float32))})
    return [msg]


def _second_metric_record(msg, rng):
    msg.content["more-metrics"] = MetricRecord({"num-examples": 5})
    return [msg]


def _no_metrics(msg, rng):
    del msg.content["metrics"]
    return [msg]


def _weight(value):
    def corrupt(msg, rng):
        if value is None:
            del msg.content["metrics"]["num-examples"]
        else:
            msg.content["metrics"]["num-examples"] = value
        return [msg]
    return corrupt


def _extra_metric(msg, rng):  # benign: the key is dropped, the reply counts
    msg.content["metrics"]["my-own-metric"] = 3.0
    return [msg]


def _renamed_metrics(msg, rng):  # benign: one MetricRecord under another name
    msg.content["stats"] = msg.content["metrics"]
    del msg.content["metrics"]
    return [msg]


def _nan_metric(msg, rng):  # benign: a non-finite metric is dropped
    msg.content["metrics"]["train-loss"] = float("nan")
    return [msg]


def _list_metric(msg, rng):  # benign: a list metric is dropped
    msg.content["metrics"]["losses"] = [1.0, 2.0]
    return [msg]


def _duplicate(msg, rng):  # the same node twice: the second is rejected
    return [msg, over_the_wire(msg)]


def _stranger(msg, rng):  # a node that was not sent a message this round
    msg.metadata.__dict__["_src_node_id"] = 999
    return [msg]


def _error(msg, rng):  # a client error: counted as an error, not a rejection
    return [Message(Error(code=1, reason="boom"), reply_to=msg)]


def _packed_only(corrupt):
    corrupt.packed_only = True
    return corrupt


@_packed_only
def _reordered(msg, rng):  # the same tensors in another order, with the digest of that order
    layout = parse_layout(msg.content["config-seen"]["layout"])
    if len(layout) < 2:
        return [msg]
    flat = np.frombuffer(msg.content["arrays"]["packed"].data[-sum(int(np.prod(s)) for _, s in layout) * 4:],
                         np.float32)
    parts = np.split(flat, np.cumsum([int(np.prod(s)) for _, s in layout])[:-1])
    order = list(range(len(layout)))[::-1]
    new_layout = [layout[i] for i in order]
    msg.content["arrays"] = ArrayRecord({"packed": Array(np.concatenate([parts[i] for i in order]))})
    rnd = int(msg.content["config-seen"]["round"])
    msg.content[REPLY_KEY] = ConfigRecord({LAYOUT_PREFIX + "arrays": layout_digest(format_layout(new_layout), rnd)})
    return [msg]


@_packed_only
def _stale_round(msg, rng):  # a reply from an earlier round: the digest names that round
    layout = msg.content["config-seen"]["layout"]
    rnd = int(msg.content["config-seen"]["round"])
    msg.content[REPLY_KEY] = ConfigRecord({LAYOUT_PREFIX + "arrays": layout_digest(layout, rnd - 1)})
    return [msg]


@_packed_only
def _no_digest(msg, rng):
    del msg.content[REPLY_KEY]
    return [msg]


CORRUPTIONS = [
    ("nan", True, _values(np.nan)), ("inf", True, _values(np.inf)), ("header-float64", True, _header_float64),
    ("int-bytes", True, _int_bytes), ("truncated", True, _truncated), ("padded", True, _padded),
    ("header-shape", True, _header_shape), ("metadata-shape", True, _meta_shape), ("object", True, _object),
    ("stype", True, _stype), ("garbage", True, _garbage), ("bad-header", True, _bad_header),
    ("big-endian", True, _big_endian), ("comma-descr", True, _comma_descr),
    ("metadata-dtype-syntax", True, _meta_dtype_syntax), ("metadata-dtype-huge", True, _meta_dtype_huge),
    ("npy-minor-version", True, _npy_minor_version), ("huge-values", True, _huge_values),
    ("missing", True, _missing), ("extra-tensor", True, _extra_tensor),
    ("second-arrayrecord", True, _second_array_record), ("second-metricrecord", True, _second_metric_record),
    ("no-metrics", True, _no_metrics), ("weight-0", True, _weight(0)), ("weight-negative", True, _weight(-3)),
    ("weight-huge", True, _weight(10**9)), ("weight-nan", True, _weight(float("nan"))),
    ("weight-list", True, _weight([1, 2])), ("weight-missing", True, _weight(None)),
    ("duplicate", True, _duplicate), ("stranger", True, _stranger), ("reordered", True, _reordered),
    ("stale-round", True, _stale_round), ("no-digest", True, _no_digest),
    ("extra-metric", False, _extra_metric), ("renamed-metrics", False, _renamed_metrics),
    ("nan-metric", False, _nan_metric), ("list-metric", False, _list_metric), ("error", False, _error),
]


class FuzzGrid(InProcessGrid):
    """Honest numpy clients whose replies are corrupted on the way, as a hostile client would send them."""

    def __init__(self, seed: int, packed: bool, num_nodes: int = 4, client=None) -> None:
        super().__init__(client or numpy_client(), num_nodes)
        self.rng = random.Random(seed)
        self.packed = packed
        self.bad: dict[int, int] = {}  # round -> corruptions that must be rejected
        self.errors: dict[int, int] = {}
        self.applied: list[str] = []

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        sent = {m.metadata.dst_node_id: m for m in messages}
        replies = list(super().send_and_receive(messages))
        out = []
        for reply in replies:
            msg = sent[reply.metadata.src_node_id]
            if msg.metadata.message_type != "train" or self.rng.random() < 0.4:  # a rank query has no round
                out.append(reply)
                continue
            rnd = int(msg.content["config"]["server-round"])
            options = [c for c in CORRUPTIONS if self.packed or not getattr(c[2], "packed_only", False)]
            name, bad, corrupt = self.rng.choice(options)
            if self.packed:  # what the client saw, for corruptions that need it
                reply.content["config-seen"] = ConfigRecord(
                    {"layout": str(msg.content["config"][LAYOUT_PREFIX + "arrays"]), "round": rnd})
            delivered = corrupt(reply, self.rng)
            for m in delivered:
                if m.has_content() and "config-seen" in m.content:
                    del m.content["config-seen"]
            self.applied.append(name)
            self.bad[rnd] = self.bad.get(rnd, 0) + bad
            self.errors[rnd] = self.errors.get(rnd, 0) + (name == "error")
            out.extend(over_the_wire(m) for m in delivered)
        return out


def _check_global(result_arrays: ArrayRecord, initial: ArrayRecord) -> None:
    for name, arr in result_arrays.items():
        values = arr.numpy()
        assert values.dtype == np.float32 and arr.dtype == "float32", name
        assert values.shape == tuple(initial[name].shape), name
        assert np.isfinite(values).all(), name
    assert np.array_equal(result_arrays["backbone.embed.weight"].numpy(), initial["backbone.embed.weight"].numpy())


def _seed(inner: str, wrapper: type, packed: bool) -> int:
    return zlib.crc32(f"{inner}/{wrapper.__name__}/{packed}".encode())


@pytest.mark.parametrize("packed", [False, True], ids=["unpacked", "packed"])
@pytest.mark.parametrize("wrapper", [FedTT, FedTTPlus])
@pytest.mark.parametrize("inner", list(INNERS))
def test_fuzz_no_bad_reply_crashes_stalls_or_changes_dtypes(inner, wrapper, packed):
    """Seeded: 4 nodes x 4 rounds per case, ~60 % of replies corrupted (36 cases, ~350 corrupted replies)."""
    _fuzz(_seed(inner, wrapper, packed), packed, wrapper(INNERS[inner](), pack=packed), global_record())


def _fuzz(seed: int, packed: bool, strategy, initial: ArrayRecord, client=None) -> None:
    """4 rounds of corrupted replies: every bad one rejected and counted, no round skipped that had a good one,
    the global state float32, finite and of its shapes."""
    random.seed(seed)
    grid = FuzzGrid(seed, packed, client=client)
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=4, train_config=ConfigRecord())
    _check_global(result.arrays, initial)
    for rnd in range(1, 5):
        stats = strategy.rounds[rnd]
        assert stats["rejected"] == grid.bad.get(rnd, 0), (rnd, grid.applied)
        assert stats["errors"] == grid.errors.get(rnd, 0)
        if stats["replies"] > 0:
            assert not stats.get("skipped"), stats.get("skip_reason")
    assert sum(grid.bad.values()) > 0


def lora_record(seed: int = 0) -> ArrayRecord:
    """Two LoRA-adapted 6x5 matrices (rank 2) with their residuals, a head and a backbone tensor."""
    rng = np.random.default_rng(seed)
    arrays = {"backbone.embed.weight": rng.normal(size=(10, 4))}
    for i in range(2):
        arrays[f"enc.{i}.q.lora_A.default.weight"] = rng.normal(size=(2, 5))
        arrays[f"enc.{i}.q.lora_B.default.weight"] = rng.normal(size=(6, 2))
        arrays[f"enc.{i}.q.lora_residual"] = rng.normal(size=(6, 5))
    arrays["classifier.weight"] = rng.normal(size=(2, 6))
    return ArrayRecord({k: Array(v.astype(np.float32)) for k, v in arrays.items()})


def ranked_client(ranks: dict[int, int]):
    """``numpy_client`` that also answers the server's rank query, as a ClientApp of a declared rank does."""
    inner = numpy_client()

    def app(msg: Message, context) -> Message:
        if msg.metadata.message_type == "query":
            return Message(RecordDict({"m": MetricRecord({"adapter-rank": ranks[context.node_id]})}), reply_to=msg)
        return inner(msg, context)

    return app


EXACT_AND_HETERO = {
    "fedex": (lambda inner, pack: FedLoRAResidual(inner, include=_not_backbone(lora_record()), pack=pack,
                                                  mode="fedex"), lora_record, None),
    "flora": (lambda inner, pack: FedLoRAResidual(inner, include=_not_backbone(lora_record()), pack=pack,
                                                  mode="flora"), lora_record, None),
    "hetero-tt": (lambda inner, pack: FedTTHetero(inner, include=_not_backbone(global_record()), pack=pack),
                  global_record, ranked_client({101: 1, 102: 2, 103: 3, 104: 2})),
}


def _not_backbone(record: ArrayRecord) -> list[str]:
    return [n for n in record if not n.startswith("backbone.")]


@pytest.mark.parametrize("packed", [False, True], ids=["unpacked", "packed"])
@pytest.mark.parametrize("inner", ["fedavg", "fedprox"])
@pytest.mark.parametrize("method", list(EXACT_AND_HETERO))
def test_fuzz_the_exact_lora_and_mixed_rank_strategies(method, inner, packed):
    """The same corruptions against FedEx-LoRA, FLoRA and heterogeneous TT ranks (their averaging servers)."""
    make, record, client = EXACT_AND_HETERO[method]
    _fuzz(zlib.crc32(f"{method}/{inner}/{packed}".encode()), packed, make(INNERS[inner](), packed), record(), client)


def test_fuzz_covers_every_corruption():
    """The seeds above reach every kind of corruption (so a kind that stops being applied is noticed)."""
    seen = set()
    for inner in INNERS:
        for wrapper in (FedTT, FedTTPlus):
            for packed in (False, True):
                seed = _seed(inner, wrapper, packed)
                grid = FuzzGrid(seed, packed)
                random.seed(seed)
                wrapper(INNERS[inner](), pack=packed).start(grid=grid, initial_arrays=global_record(), num_rounds=4,
                                                            train_config=ConfigRecord())
                seen.update(grid.applied)
    assert seen == {name for name, _, _ in CORRUPTIONS}


@pytest.mark.parametrize("packed", [False, True], ids=["unpacked", "packed"])
@pytest.mark.parametrize("wrapper", [FedTT, FedTTPlus])
@pytest.mark.parametrize("inner", list(INNERS))
def test_every_inner_strategy_trains_in_every_round_with_float32_clients(inner, wrapper, packed):
    strategy = wrapper(INNERS[inner](), pack=packed)
    grid = InProcessGrid(numpy_client(), 4)
    initial = global_record()
    arrays, before = initial, {}
    for rnd in range(1, 5):
        before = {n: a.numpy().copy() for n, a in arrays.items()}
        replies = grid.send_and_receive(strategy.configure_train(rnd, arrays, ConfigRecord(), grid))
        agg, _ = strategy.aggregate_train(rnd, replies)
        assert agg is not None, strategy.rounds[rnd]
        assert strategy.rounds[rnd]["replies"] == 4 and strategy.rounds[rnd]["rejected"] == 0
        arrays = agg
        trained = [n for n in strategy._expected if "core_" in n]
        assert any(not np.array_equal(arrays[n].numpy(), before[n]) for n in trained), f"round {rnd} did not move"
        _check_global(arrays, initial)


def _one_round(strategy, corrupt, nodes=3):
    class Grid(InProcessGrid):
        def send_and_receive(self, messages, *, timeout=None):
            return [over_the_wire(m) for r in super().send_and_receive(messages)
                    for m in (corrupt(r) if r.metadata.src_node_id == 102 else [r])]

    grid = Grid(numpy_client(), nodes)
    random.seed(0)
    return strategy.start(grid=grid, initial_arrays=global_record(), num_rounds=2, train_config=ConfigRecord())


def test_a_float64_header_under_float32_metadata_cannot_turn_the_global_model_float64(caplog):
    """Once a float64 tensor entered the global state every honest reply was rejected from then on."""
    strategy = FedTT(FedAvg(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0))
    with caplog.at_level("WARNING"):
        result = _one_round(strategy, lambda r: _header_float64(r, None))
    assert all(a.dtype == "float32" and a.numpy().dtype == np.float32 for a in result.arrays.values())
    assert [strategy.rounds[r]["rejected"] for r in (1, 2)] == [1, 1]
    assert [strategy.rounds[r]["replies"] for r in (1, 2)] == [2, 2]  # the honest replies keep counting
    assert "its bytes say" in caplog.text


def test_duplicates_and_strangers_are_rejected_not_averaged():
    strategy = FedTT(FedAvg(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0))
    _one_round(strategy, lambda r: _duplicate(r, None))
    assert strategy.rounds[1]["replies"] == 3 and strategy.rounds[1]["rejected"] == 1
    strategy = FedTT(FedAvg(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0))
    _one_round(strategy, lambda r: _stranger(r, None))
    assert strategy.rounds[1]["replies"] == 2 and strategy.rounds[1]["rejected"] == 1


def test_the_weight_ceiling_is_configurable():
    def claim(r):
        r.content["metrics"]["num-examples"] = 50_000
        return [r]

    strict = FedTT(FedAvg(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0), max_examples=10_000)
    _one_round(strict, claim)
    assert strict.rounds[1]["rejected"] == 1
    loose = FedTT(FedAvg(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0), max_examples=100_000)
    _one_round(loose, claim)
    assert loose.rounds[1]["rejected"] == 0
    with pytest.raises(ValueError, match="max_examples"):
        FedTT(max_examples=0)


def test_each_metric_is_averaged_over_the_replies_that_report_it():
    """An extra key from one client crashed Flower's averaging; one client's NaN loss must not blank the loss
    of the others either."""
    strategy = FedTT(FedAvg(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0))
    _one_round(strategy, lambda r: _extra_metric(r, None))
    assert strategy.rounds[1]["replies"] == 3 and strategy.rounds[1]["rejected"] == 0
    assert strategy.rounds[1]["train_metrics"] == pytest.approx({"train-loss": 0.5, "my-own-metric": 3.0})
    strategy = FedTT(FedAvg(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0))
    _one_round(strategy, lambda r: _nan_metric(r, None))
    assert strategy.rounds[1]["train_metrics"] == pytest.approx({"train-loss": 0.5})  # from the other two


def test_hostile_evaluate_replies_are_rejected_and_counted():
    def client(msg, ctx):
        reply = numpy_client()(msg, ctx)
        if msg.metadata.message_type == "evaluate" and ctx.node_id == 102:
            reply.content["other"] = MetricRecord({"num-examples": 1})
        if msg.metadata.message_type == "evaluate" and ctx.node_id == 103:
            reply.content["metrics"]["num-examples"] = -1
        return reply

    strategy = FedTT(FedAvg(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=1.0, min_evaluate_nodes=3))
    grid = InProcessGrid(client, 3)
    strategy.start(grid=grid, initial_arrays=global_record(), num_rounds=1, train_config=ConfigRecord())
    assert strategy.rounds[1]["evaluate_rejected"] == 2
    assert strategy.rounds[1]["evaluate_metrics"] == {"loss": 1.0}


def test_an_inner_strategy_that_fails_skips_the_round_instead_of_ending_the_run(caplog):
    class Broken(FedAvg):
        def aggregate_train(self, server_round, replies):
            raise RuntimeError("inner bug")

    strategy = FedTT(Broken(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0))
    with caplog.at_level("WARNING"):
        result = _one_round(strategy, lambda r: [r])
    assert all(strategy.rounds[r]["skipped"] and "inner bug" in strategy.rounds[r]["skip_reason"] for r in (1, 2))
    assert len(result.arrays) == 0  # Flower's Result: no round produced new arrays; the run itself went on


def test_an_inner_strategy_whose_state_turns_non_finite_is_restored_and_the_round_skipped():
    class Poisoned(FedAvg):
        """Aggregates like FedAvg, but its own state turns non-finite in round 1 (as FedAdam's v_t did)."""

        def aggregate_train(self, server_round, replies):
            if server_round == 1:
                self.v_t = {"x": np.array([np.inf])}
            return super().aggregate_train(server_round, replies)

    strategy = FedTT(Poisoned(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0))
    _one_round(strategy, lambda r: [r])
    assert strategy.rounds[1]["skipped"] and "state became NaN or Inf" in strategy.rounds[1]["skip_reason"]
    assert not hasattr(strategy.inner, "v_t")  # restored to before the round
    assert not strategy.rounds[2].get("skipped")  # and the next round trains


def test_fedavgm_steps_from_the_model_the_clients_were_sent():
    """FedAvgM kept its own copy of the model after round 1; with FedTT+ (frozen cores restored bit for bit) it
    drifted from the global and later rounds started from the wrong cores."""
    strategy = FedTTPlus(FedAvgM(**COMMON, server_learning_rate=0.5, server_momentum=0.9))
    grid = InProcessGrid(numpy_client(), 4)
    arrays = global_record()
    for rnd in range(1, 6):
        messages = strategy.configure_train(rnd, arrays, ConfigRecord(), grid)
        sent = strategy.inner.current_arrays
        assert all(np.array_equal(sent[n].numpy(), arrays[n].numpy()) for n in sent)
        arrays = strategy.aggregate_train(rnd, grid.send_and_receive(messages))[0] or arrays


def test_fedtrimmedavg_that_trims_nothing_says_so(caplog):
    strategy = FedTT(FedTrimmedAvg(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0, beta=0.2))
    with caplog.at_level("WARNING"):
        _one_round(strategy, lambda r: [r])
    assert strategy.rounds[1]["untrimmed"] and "trims nothing from 3 replies (it needs at least 5)" in caplog.text
    trimming = FedTT(FedTrimmedAvg(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0, beta=0.34))
    _one_round(trimming, lambda r: [r])
    assert "untrimmed" not in trimming.rounds[1]


def test_flowers_client_side_adaptive_clipping_still_gets_its_metric():
    """The inner strategy gets the metric keys every reply has (adaptive clipping needs its `norm_bit`)."""
    from flwr.clientapp.mod import adaptiveclipping_mod
    from flwr.serverapp.strategy import DifferentialPrivacyClientSideAdaptiveClipping

    client = numpy_client()
    dp = DifferentialPrivacyClientSideAdaptiveClipping(
        FedAvg(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0),
        noise_multiplier=0.0, num_sampled_clients=3, initial_clipping_norm=0.5)
    strategy = FedTT(dp)
    grid = InProcessGrid(lambda msg, ctx: adaptiveclipping_mod(msg, ctx, client), 3)
    result = strategy.start(grid=grid, initial_arrays=global_record(), num_rounds=2, train_config=ConfigRecord())
    assert all(strategy.rounds[r]["replies"] == 3 and not strategy.rounds[r].get("skipped") for r in (1, 2))
    name = "enc.0.adapter.down.core_0"
    assert not np.array_equal(result.arrays[name].numpy(), global_record()[name].numpy())


def test_an_inner_strategy_that_cannot_be_copied_still_aggregates(caplog):
    import threading

    class Locked(FedAvg):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.lock = threading.Lock()

    strategy = FedTT(Locked(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0))
    with caplog.at_level("WARNING"):
        _one_round(strategy, lambda r: [r])
    assert [strategy.rounds[r]["replies"] for r in (1, 2)] == [3, 3] and not strategy.rounds[2].get("skipped")
    assert caplog.text.count("cannot be copied") == 1
