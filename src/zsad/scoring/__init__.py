"""zsad.scoring: training-free STAPS/MuSc scoring on NumPy arrays (CuPy optional for MSM)."""

from __future__ import annotations

from zsad.scoring.bgmps import BGMPSResult, bgmps
from zsad.scoring.lnamd import lnamd
from zsad.scoring.msm import mutual_scores
from zsad.scoring.stas import pseudo_temporal_order, rscin, stas

__all__ = [
    "BGMPSResult",
    "bgmps",
    "lnamd",
    "mutual_scores",
    "pseudo_temporal_order",
    "rscin",
    "stas",
]
