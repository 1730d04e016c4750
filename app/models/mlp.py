"""Multi-layer perceptrons for tabular / low-dimensional inputs."""
from __future__ import annotations

from torch import Tensor, nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name (one of `ACTIVATIONS`)."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; accepted: {', '.join(sorted(ACTIVATIONS))}"
        ) from None


class MLP(nn.Module):
    """`layers` hidden layers of width `nodes`, each Linear -> activation (-> Dropout).

    Input [batch, in_features] -> output [batch, out_features] (raw scores / regression values).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        nodes: int,
        layers: int,
        activation: str,
        dropout: float,
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        width = in_features
        for _ in range(layers):
            blocks += [nn.Linear(width, nodes), make_activation(activation)]
            if dropout > 0:
                blocks.append(nn.Dropout(dropout))
            width = nodes
        blocks.append(nn.Linear(width, out_features))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ResidualBlock(nn.Module):
    """Pre-norm residual block: x + Linear(act(Linear(LayerNorm(x))))."""

    def __init__(self, nodes: int, activation: str, dropout: float, expansion: int) -> None:
        super().__init__()
        hidden = nodes * expansion
        self.norm = nn.LayerNorm(nodes)
        self.fc1 = nn.Linear(nodes, hidden)
        self.act = make_activation(activation)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc2 = nn.Linear(hidden, nodes)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fc2(self.drop(self.act(self.fc1(self.norm(x)))))


class ResidualMLP(nn.Module):
    """Input projection, `blocks` residual blocks of width `nodes`, final norm and projection.

    Trains deeper than a plain MLP without vanishing gradients.
    Input [batch, in_features] -> output [batch, out_features].
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        nodes: int,
        blocks: int,
        expansion: int,
        activation: str,
        dropout: float,
    ) -> None:
        super().__init__()
        self.stem = nn.Linear(in_features, nodes)
        self.blocks = nn.Sequential(
            *(ResidualBlock(nodes, activation, dropout, expansion) for _ in range(blocks))
        )
        self.head = nn.Sequential(nn.LayerNorm(nodes), nn.Linear(nodes, out_features))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)))

