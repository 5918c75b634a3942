"""Flower ServerApp: runs FedTT / FedTT+ for the configured rounds (logic: fedtt_flwr.server)."""

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedtt_flwr import server

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    server.main(grid, context)
