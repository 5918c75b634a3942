"""fedtt-flwr ServerApp."""
