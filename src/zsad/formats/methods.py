"""The method registry: what each detection method needs from the encoder and what it can do.

Every front end (the Detector API, export, the CLI's choices, the station) reads this one table.
Scorers are named as ``module:attribute`` and imported only when a method is used, so this leaf
module stays free of NumPy, SciPy and torch.
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
    bundle_method: str  # the method a bundle must be exported for to serve it
    set_scorer: str  # scores a set of images: "module:factory"
    stream_scorer: str | None  # scores images one by one in arrival order; None: cannot
    per_image: bool  # each image is scored on its own (predict works without a bank)
    needs_calibration: bool  # needs a HeadCLIP artifact (a torch model) or a bundle carrying one

    @property
    def exportable(self) -> bool:
        """Whether `zsad export --method NAME` builds a bundle for it."""
        return self.bundle_method == self.name


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            name="staps",
            summary="training-free: MuSc maps, BGMPS map fusion, STAS image scores",
            outputs=("cls", "taps"),
            bundle_method="staps",
            set_scorer="zsad.api.scorers:staps_set_scorer",
            stream_scorer="zsad.api.scorers:staps_stream_scorer",
            per_image=False,
            needs_calibration=False,
        ),
        Method(
            name="musc",
            summary="training-free: MuSc (mean of the maps, RsCIN image scores)",
            outputs=("cls", "taps"),
            bundle_method="staps",
            set_scorer="zsad.api.scorers:staps_set_scorer",
            stream_scorer=None,
            per_image=False,
            needs_calibration=False,
        ),
        Method(
            name="headclip",
            summary="calibrated once: learnable prompts, CSA local path with LHW, JAS",
            outputs=("cls", "local"),
            bundle_method="headclip",
            set_scorer="zsad.api.scorers:headclip_set_scorer",
            stream_scorer="zsad.api.scorers:headclip_stream_scorer",
            per_image=True,
            needs_calibration=True,
        ),
    )
}
EXPORTABLE = tuple(name for name, m in METHODS.items() if m.exportable)
STREAMABLE = tuple(name for name, m in METHODS.items() if m.stream_scorer is not None)


def get_method(name: str, *, among: tuple[str, ...] | None = None) -> Method:
    """The registry entry for ``name``; a one-line error lists the valid choices."""
    choices = tuple(METHODS) if among is None else among
    if name not in choices:
        raise ZsadError(f"--method {name!r}: choose from {', '.join(choices)}")
    return METHODS[name]
