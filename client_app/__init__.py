"""fedtt-flwr ClientApp."""
