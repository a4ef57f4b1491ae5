"""The method registry: what each detection method needs from the encoder and what it can do.

Every front end (the Detector API, export, the CLI's choices, the station) reads this one table.
It holds data only, so this leaf module stays free of NumPy, SciPy and torch; the scorers of each
method are in zsad.api.scorers.SCORERS, keyed by the method's name.
"""

from __future__ import annotations

from dataclasses import dataclass

from zsad.errors import ZsadError


@dataclass(frozen=True)
class Method:
    """One detection method as data."""

    name: str
    summary: str
    outputs: tuple[str, ...]  # encoder outputs it scores
    bundle_method: str  # the kind of bundle that serves it (bundle.json's "method")
    streams: bool  # scores images one by one in arrival order
    per_image: bool  # each image is scored on its own (predict works without a bank)
    needs_calibration: bool  # needs a HeadCLIP artifact (a torch model) or a bundle carrying one


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            name="musc",
            summary="training-free, the default: MuSc (mean of the maps, RsCIN image scores; "
            "the order of the images does not matter)",
            outputs=("cls", "taps"),
            bundle_method="staps",
            streams=True,
            per_image=False,
            needs_calibration=False,
        ),
        Method(
            name="staps",
            summary="training-free, as published: MuSc maps, BGMPS map fusion, STAS image "
            "scores (the order of the images moves the scores)",
            outputs=("cls", "taps"),
            bundle_method="staps",
            streams=True,
            per_image=False,
            needs_calibration=False,
        ),
        Method(
            name="headclip",
            summary="calibrated once: learnable prompts, CSA local path with LHW, JAS",
            outputs=("cls", "local"),
            bundle_method="headclip",
            streams=True,
            per_image=True,
            needs_calibration=True,
        ),
    )
}
STREAMABLE = tuple(name for name, m in METHODS.items() if m.streams)
# Scores best on real features in a random or production order, and is the only order-free
# training-free method (docs/methods.md#defaults).
DEFAULT_METHOD = "musc"
# Images in a rolling bank: a stream holds the first this many (warm-up), then scores each image
# against the last this many.
DEFAULT_BANK = 32
# LNAMD's aggregation degrees: each tap makes one expert map per r (MuSc's r = 1, 3, 5).
DEFAULT_R_LIST = (1, 3, 5)


def default_method(exported_for: str | None = None) -> str:
    """The method run when none is named: the default, unless a bundle exported for ``exported_for``
    cannot serve it (then the bundle's own)."""
    if exported_for is None or METHODS[DEFAULT_METHOD].bundle_method == exported_for:
        return DEFAULT_METHOD
    return exported_for


def get_method(name: str, *, among: tuple[str, ...] | None = None) -> Method:
    """The registry entry for ``name``; a one-line error lists the valid choices."""
    choices = tuple(METHODS) if among is None else among
    if name not in choices:
        raise ZsadError(f"--method {name!r}: choose from {', '.join(choices)}")
    return METHODS[name]
