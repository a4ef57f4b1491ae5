"""HeadCLIP's local path as data: which variant, which CSA blocks, which read-out blocks.

The local tokens come from consistent self-attention (CSA, softmax(V Vᵀ/sqrt(d)) V with each
head scaled by its learned weight) run beside the ordinary blocks. Two readings exist:

- ``residual`` (default): AnomalyCLIP's code, on which HeadCLIP is built. A second residual
  stream starts as a copy of the residual stream entering the first CSA block; each CSA block
  adds its attention output to it (no MLP on this path) while the ordinary stream goes on
  unchanged. The stream is read after each read-out block; AnomalyCLIP runs CSA in blocks 5..23
  (0-based, its ``DPAM_layer=20``) and reads after block 23 (its ``features_list`` 24).
  HeadCLIP's Table 7 varies these read-out blocks.
- ``sum``: HeadCLIP's section 3.3.2 read literally (eq. 6): the sum of the CSA outputs of blocks
  5..19, without the starting residual.

Several read-out blocks give one map per block, averaged. Block indices are 0-based
everywhere (Table 7's "6, 12, 18, 24" are blocks 5, 11, 17, 23). A calibration artifact and a
HeadCLIP bundle record their local path; the learned head weights only fit the one they were
trained with.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from zsad.errors import ZsadError

KINDS = ("residual", "sum")
DEFAULT_KIND = "residual"


@dataclass(frozen=True)
class LocalPath:
    """A local-path variant: ``kind``, 0-based CSA blocks and read-out blocks (both sorted)."""

    kind: str
    csa_layers: tuple[int, ...]
    readout_layers: tuple[int, ...]

    @classmethod
    def resolve(
        cls,
        n_layers: int,
        kind: str = DEFAULT_KIND,
        csa_layers: Sequence[int] | None = None,
        readout_layers: Sequence[int] | None = None,
    ) -> LocalPath:
        """The variant for an ``n_layers`` ViT; None picks the kind's default blocks."""
        csa = tuple(csa_layers) if csa_layers is not None else default_csa_layers(n_layers, kind)
        readout = tuple(readout_layers) if readout_layers is not None else csa[-1:]
        path = cls(kind, csa, readout)
        path.check(n_layers)
        return path

    def check(self, n_layers: int) -> None:
        """One-line errors for an unknown kind, blocks outside the model or a read-out before
        the first CSA block."""
        if self.kind not in KINDS:
            raise ZsadError(f"--local-path {self.kind!r}: choose from {', '.join(KINDS)}")
        named = (("--csa-layers", self.csa_layers), ("--readout-layers", self.readout_layers))
        for flag, layers in named:
            if not layers or list(layers) != sorted(set(layers)):
                raise ZsadError(f"{flag} {list(layers)}: need increasing 0-based block indices")
            if not 0 <= layers[0] <= layers[-1] < n_layers:
                raise ZsadError(
                    f"{flag} {list(layers)}: this model has blocks 0..{n_layers - 1} (0-based)"
                )
        if self.readout_layers[0] < self.csa_layers[0]:
            raise ZsadError(
                f"--readout-layers {list(self.readout_layers)}: the local stream starts at CSA "
                f"block {self.csa_layers[0]}"
            )

    def to_meta(self) -> dict[str, Any]:
        """JSON form, as bundle.json stores it."""
        return {
            "kind": self.kind,
            "csa_layers": list(self.csa_layers),
            "readout_layers": list(self.readout_layers),
        }

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> LocalPath:
        """Inverse of ``to_meta``."""
        return cls(
            str(meta["kind"]),
            tuple(int(i) for i in meta["csa_layers"]),
            tuple(int(i) for i in meta["readout_layers"]),
        )

    @classmethod
    def legacy(cls, csa_layers: Sequence[int]) -> LocalPath:
        """What files written before the variants existed computed: the sum, read once."""
        csa = tuple(csa_layers)
        return cls("sum", csa, csa[-1:])

    def describe(self) -> str:
        """One line: kind, CSA blocks, read-out blocks."""
        return (
            f"{self.kind}, CSA blocks {_span(self.csa_layers)}, read out after "
            f"{', '.join(str(i) for i in self.readout_layers)}"
        )

    def require(self, source: str, **requested: Any) -> None:
        """Fail when a requested setting (None: take ours) differs from this recorded one."""
        recorded = {
            "local_path": self.kind,
            "csa_layers": self.csa_layers,
            "readout_layers": self.readout_layers,
        }
        for name, value in requested.items():
            if value is None:
                continue
            want = value if isinstance(value, str) else tuple(value)
            if want != recorded[name]:
                shown = want if isinstance(want, str) else ",".join(str(i) for i in want)
                raise ZsadError(
                    f"--{name.replace('_', '-')} {shown}: {source} was trained with local path "
                    f"{self.describe()}; its head weights fit only that"
                )


def default_csa_layers(n_layers: int, kind: str = DEFAULT_KIND) -> tuple[int, ...]:
    """0-based CSA blocks: 5..23 (residual) or 5..19 (sum) for 24 blocks, scaled otherwise."""
    first = math.floor(5 * n_layers / 24 + 0.5)
    last = n_layers - 1 if kind == "residual" else math.floor(19 * n_layers / 24 + 0.5)
    return tuple(range(first, last + 1))


def parse_layers(flag: str, text: str) -> tuple[int, ...]:
    """'5-23' or '5,11,17,23' (or a mix) -> 0-based block indices; a one-line error otherwise."""
    values: list[int] = []
    try:
        for part in text.split(","):
            low, _, high = part.strip().partition("-")
            values.extend(range(int(low), int(high or low) + 1))
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise ZsadError(f"{flag} {text!r}: expected 0-based blocks such as 5-23 or 5,11,17,23")
    return tuple(values)


def _span(layers: tuple[int, ...]) -> str:
    if layers == tuple(range(layers[0], layers[-1] + 1)) and len(layers) > 2:
        return f"{layers[0]}..{layers[-1]}"
    return ", ".join(str(i) for i in layers)
