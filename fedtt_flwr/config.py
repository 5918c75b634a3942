"""Configuration objects, validated with pydantic so bad values fail at start with the key named."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Activation = Literal["relu", "gelu", "silu", "tanh", "identity"]
Placement = Literal["auto", "encoder", "decoder"]
TaskKind = Literal["classification", "causal-lm"]


class TTAdapterConfig(BaseModel):
    """Everything that decides the shape of the tensorized adapters (one object per method, as in peft).

    Defaults follow LoRETTA's scripts where the FedTT paper does not say (docs/tensorized-adapters.md).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    rank: int = Field(5, ge=1, description="TT rank r of every core boundary")
    bottleneck: int = Field(64, ge=1, description="adapter bottleneck width")
    activation: Activation = "relu"
    scaling: float = Field(1.0, description="adapter output multiplier")
    placement: Placement = Field(
        "auto", description="encoder: 2 output adapters per block; decoder: 3 on the MLP; auto: detect"
    )
    bias: bool = Field(True, description="TT layers carry a bias (it trains and travels)")
    train_layernorm: bool = Field(False, description="also train (and send) every LayerNorm/RMSNorm")
    train_head: bool = Field(True, description="train (and send) the newly initialised task head")
    tensorized_classifier: bool = Field(
        False, description="replace a RoBERTa-style classifier.dense (h x h) by a TT layer"
    )
    shape: tuple[int, ...] | None = Field(
        None, description="TT shape for both projections; None picks a preset or factors automatically"
    )
    forward_mode: Literal["rebuild", "contract"] = "rebuild"

    @field_validator("shape")
    @classmethod
    def _check_shape(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is not None and (len(v) < 2 or any(n < 1 for n in v)):
            raise ValueError(f"shape must list at least 2 positive mode sizes, got {list(v)}")
        return v

    def shape_for(self, in_features: int, out_features: int) -> tuple[int, ...] | None:
        """The configured shape if it fits this projection, else None (automatic)."""
        if self.shape is None:
            return None
        if math.prod(self.shape) != in_features * out_features:
            raise ValueError(
                f"TTAdapterConfig.shape {list(self.shape)} has product {math.prod(self.shape)}, but a "
                f"{in_features}x{out_features} projection needs {in_features * out_features}"
            )
        return self.shape
