"""The ServerApp and ClientApp driven in one process: no Ray, no SuperLink.

Used by the tests and by the benchmark grid (Ray's per-message overhead dominates on 2 CPU cores).
Messages go through Flower's own serialization on the way in and out (``over_the_wire``), so no state
leaks between nodes and a reply reaches the server exactly as a real one would (dtypes, raw ``.npy``
bytes, metadata); ``benchmarks/grid.py --check-flwr`` shows it agrees with `flwr run` for the same seed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents


def over_the_wire(message: Message) -> Message:
    """``message`` as the receiving side gets it: deflated into Flower's transport objects and inflated
    again (what the SuperLink relays between ServerApp and ClientApp)."""
    contents = {oid: obj.deflate() for oid, obj in get_all_nested_objects(message).items()}
    received = inflate_object_from_contents(message.object_id, contents)
    received.metadata.__dict__.update({k: v for k, v in message.metadata.__dict__.items()
                                       if k in ("_message_id", "_src_node_id", "_reply_to_message_id")})
    return received


class InProcessGrid(Grid):
    """A Flower Grid whose nodes are calls of ``client_app`` (a ClientApp or any callable); node ``i``
    gets ``partition-id=i`` of ``num_nodes`` unless ``node_config`` says otherwise. ``sent`` keeps every
    message pushed (for tests to inspect) unless ``keep_sent`` is off."""

    def __init__(self, client_app: Callable[[Message, Context], Message], num_nodes: int,
                 run_config: dict | None = None, node_config: Callable[[int], dict] | None = None,
                 keep_sent: bool = True) -> None:
        self.client_app = client_app
        self.keep_sent = keep_sent
        self.node_ids = list(range(101, 101 + num_nodes))
        self.contexts = {
            nid: Context(run_id=1, node_id=nid,
                         node_config=(node_config(i) if node_config else
                                      {"partition-id": i, "num-partitions": num_nodes}),
                         state=RecordDict(), run_config=dict(run_config or {}))
            for i, nid in enumerate(self.node_ids)
        }
        self.sent: list[Message] = []
        self._replies: dict[str, Message] = {}
        self._ids = itertools.count(1)
        self._run = None

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for m in messages:
            m = over_the_wire(m)  # no RecordDict shared between nodes, as after real serialization
            mid = f"m{next(self._ids)}"
            m.metadata.__dict__["_message_id"] = mid
            m.metadata.__dict__["_src_node_id"] = 1
            if self.keep_sent:
                self.sent.append(m)
            try:
                reply = self.client_app(m, self.contexts[m.metadata.dst_node_id])
            except Exception as exc:  # a crashing client becomes an error reply, as in Flower
                from flwr.app import Error

                reply = Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=m)
            reply.metadata.__dict__["_src_node_id"] = m.metadata.dst_node_id
            reply = over_the_wire(reply)
            self._replies[mid] = reply
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id,
                       ttl=ttl)

    def set_run(self, run_id) -> None:
        self._run = run_id

    @property
    def run(self):
        return self._run


def run_inprocess(run_config: dict, num_nodes: int) -> dict:
    """Run this project's ServerApp against ``num_nodes`` in-process ClientApps; returns the run summary."""
    from flwr.supercore.task_identity import TaskIdentity

    from client_app.app import app as client_app

    from .server import main as server_main

    # Messages created outside a Flower runtime need a task identity (internal API, flwr 1.41)
    TaskIdentity.run_id = TaskIdentity.task_id = TaskIdentity.node_id = 1
    grid = InProcessGrid(client_app, num_nodes, run_config, keep_sent=False)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=dict(run_config))
    return server_main(grid, context)
