"""Flower ClientApp: trains the round's TT adapter tensors on the node's data (logic: fedtt_flwr.client).

A node whose config names a training worker (``worker="/path/worker.sock"``, docs/deployment.md) hands each
message to that long-lived process instead, which keeps the model and data loaded between rounds."""

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedtt_flwr import worker

app = ClientApp()


def _run(kind: str, msg: Message, context: Context) -> Message:
    if worker.WORKER_KEY in context.node_config:
        return worker.forward(kind, msg, context)
    from fedtt_flwr import client  # torch and the model: only where this process trains

    return getattr(client, kind)(msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    return _run("train", msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _run("evaluate", msg, context)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """What the server asks of a node before it trains: its adapter rank (clients with their own ranks)."""
    from fedtt_flwr.config import RunConfig, node_rank

    rank = node_rank(context.node_config, RunConfig.from_flower(dict(context.run_config)))
    return Message(RecordDict({"metrics": MetricRecord({"adapter-rank": rank})}), reply_to=msg)
