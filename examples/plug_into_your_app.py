"""FedTT in an existing Flower app, in a few lines: your model, your ServerApp/ClientApp, our strategy.

The "model" here is a small torch MLP whose first layer gets a TT layer next to it (any model whose
tensors are named works the same way). Only the TT cores and the head travel: the rest of the global
ArrayRecord (here `body.weight`) never leaves the server.

Run it in-process: `python examples/plug_into_your_app.py` (no SuperLink, no Ray); or point a
pyproject's `serverapp`/`clientapp` at `examples.plug_into_your_app:server_app` / `:client_app`.
"""

from __future__ import annotations

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAdam
from torch import nn

from fedtt_flwr import TTLinear
from strategies import FedTTPlus, receive_global, reply_content, round_trainable


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(16, 16)  # frozen backbone, never sent
        self.adapter = TTLinear(16, 16, rank=3)  # cores adapter.core_0 ... travel
        self.classifier = nn.Linear(16, 2)  # head: travels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        return self.classifier(torch.relu(h + self.adapter(h)))


def to_record(model: nn.Module) -> ArrayRecord:
    return ArrayRecord({n: Array(p.detach().numpy().copy()) for n, p in model.named_parameters()})


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    torch.manual_seed(0)
    strategy = FedTTPlus(FedAdam(eta=0.05, min_train_nodes=2, min_available_nodes=2, fraction_evaluate=0.0))
    result = strategy.start(grid=grid, initial_arrays=to_record(Net()), num_rounds=3, train_config=ConfigRecord())
    context.state["final"] = result.arrays  # handy for a test; a real app would save it
    context.state["rounds"] = ConfigRecord({"replies": [s["replies"] for s in strategy.rounds.values()],
                                            "rejected": [s["rejected"] for s in strategy.rounds.values()]})
    print({r: (s["plan"], s["bytes_up"]) for r, s in strategy.rounds.items()})


client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    torch.manual_seed(context.node_id)
    model = Net()  # the body is re-created from the same seed in a real app: load your pretrained weights
    received = receive_global(msg.content, context.state)  # this node's copy of the global adapters
    model.load_state_dict({n: torch.from_numpy(a.numpy()) for n, a in received.items()}, strict=False)
    names = round_trainable(msg.content)  # what trains (and goes back) this round
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.01)
    x, y = torch.randn(64, 16), torch.randint(0, 2, (64,))
    for _ in range(5):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    params = dict(model.named_parameters())
    arrays = ArrayRecord({n: Array(params[n].detach().numpy().copy()) for n in names})
    metrics = MetricRecord({"loss": loss.item(), "num-examples": 64})
    return Message(reply_content(msg.content, arrays, metrics), reply_to=msg)  # packs if the server packed


if __name__ == "__main__":
    from flwr.supercore.task_identity import TaskIdentity

    from fedtt_flwr.inprocess import InProcessGrid

    TaskIdentity.run_id = TaskIdentity.task_id = TaskIdentity.node_id = 1  # only needed outside Flower
    server_app(InProcessGrid(client_app, num_nodes=3), Context(1, 0, {}, RecordDict(), {}))
