"""Heads shared by methods: projection and prediction MLPs."""

from __future__ import annotations

from torch import nn


class MLPHead(nn.Sequential):
    """Linear → BN → ReLU blocks, then a final Linear (optionally followed by a BatchNorm).

    SimCLR's projector is ``MLPHead(d, d, 128, num_layers=2)``; BYOL/SimSiam predictors and the
    3-layer projectors of SimSiam/Barlow Twins/VICReg are the same shape with other sizes.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2,
                 last_bn: bool = False) -> None:
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim),
                       nn.ReLU(inplace=True)]
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim, bias=not last_bn))
        if last_bn:
            layers.append(nn.BatchNorm1d(out_dim, affine=False))
        super().__init__(*layers)
        self.out_dim = out_dim
