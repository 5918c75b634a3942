"""Flower ClientApp: trains the round's TT adapter tensors on the node's data (logic: fedtt_flwr.client).

A node whose config names a training worker (``worker="/path/worker.sock"``, docs/deployment.md) hands each
message to that long-lived process instead, which keeps the model and data loaded between rounds."""

from flwr.app import Context, Message
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
