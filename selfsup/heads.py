"""Heads shared by methods: projection and prediction MLPs."""

from __future__ import annotations

from torch import nn

from selfsup.errors import ConfigError

# In-place ReLU saves one activation-sized buffer per block; GELU is DINO's and the ViTs' choice.
ACTIVATIONS = {"relu": lambda: nn.ReLU(inplace=True), "gelu": nn.GELU}


class MLPHead(nn.Sequential):
    """Linear → BN → activation blocks, then a final Linear (optionally followed by a BatchNorm).

    SimCLR's projector is ``MLPHead(d, d, 128, num_layers=2)``; BYOL/SimSiam predictors and the
    3-layer projectors of SimSiam/Barlow Twins/VICReg are the same shape with other sizes.
    ``batch_norm=False`` drops the hidden BatchNorms (the hidden Linear layers then get biases) and
    ``activation="gelu"`` swaps the ReLUs: DINO's head, which has no BatchNorm.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2,
                 last_bn: bool = False, batch_norm: bool = True, activation: str = "relu") -> None:
        if activation not in ACTIVATIONS:
            raise ConfigError(f"unknown head activation {activation!r}; choose one of "
                              f"{', '.join(ACTIVATIONS)}")
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(dim, hidden_dim, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(ACTIVATIONS[activation]())
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim, bias=not last_bn))
        if last_bn:
            layers.append(nn.BatchNorm1d(out_dim, affine=False))
        super().__init__(*layers)
        self.out_dim = out_dim
