"""Flower ClientApp: trains the round's TT adapter tensors on the node's data (logic: fedtt_flwr.client)."""

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedtt_flwr import client

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    return client.train(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return client.evaluate(msg, context)
