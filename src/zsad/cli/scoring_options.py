"""The training-free scoring options, declared once and added to every command that scores sets."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import fields
from typing import Annotated, Any

import typer

from zsad.errors import ZsadError
from zsad.scoring.pipeline import SetScoringConfig

_PANEL = "Training-free scoring (staps / musc)"

# (config field, flag, help); bool fields become --x/--no-x switches.
_OPTIONS: tuple[tuple[str, str, str], ...] = (
    ("r_list", "--r-list", "LNAMD aggregation degrees r, comma-separated."),
    ("topmin_max", "--topmin", "MSM: fraction of the other images whose distances are averaged."),
    ("memory_budget_mb", "--memory-mb", "MSM: upper bound of each temporary buffer, in MB."),
    ("device", "--score-device", "LNAMD and MSM on auto, cpu or gpu (CuPy)."),
    ("rscin_k", "--rscin-k", "RsCIN neighbour counts k (MuSc, or STAPS with --no-stas)."),
    ("use_stas", "--stas", "STAPS: STAS image scores (--no-stas: MuSc's RsCIN)."),
    ("window", "--window", "STAS: temporal window L (images on each side)."),
    ("gamma", "--gamma", "STAS: temporal decay gamma^|i-j|."),
    ("alpha", "--alpha", "STAS: weight of semantic vs temporal affinity."),
    ("stas_k", "--stas-k", "STAS: neighbour counts k, comma-separated."),
    ("beta", "--beta", "STAS: EMA factor along the sequence (0 disables the EMA)."),
    ("order", "--order", "STAS sequence: shuffle (seeded) or input (the real arrival order)."),
    ("use_bgmps", "--bgmps", "STAPS: BGMPS map fusion (--no-bgmps: mean of all maps)."),
    ("embed", "--embed", "BGMPS: expert embedding, dct or svd."),
    ("cluster", "--cluster", "BGMPS: clustering, bgmm or kmeans."),
    ("dim", "--dim", "BGMPS: embedding dimension d."),
    ("n_components", "--components", "BGMPS: upper bound on the number of clusters."),
    ("top_percent", "--top-percent", "BGMPS: evidence = mean of the top p% map values."),
)
# Parameter names are prefixed so they never clash with a command's own (e.g. --device).
_PREFIX = "scoring_"
_DEFAULTS = {f.name: getattr(SetScoringConfig(), f.name) for f in fields(SetScoringConfig)}


def _parameter(name: str, flag: str, help_text: str, default: Any) -> inspect.Parameter:
    if isinstance(default, bool):
        decls = [f"{flag}/--no-{flag[2:]}"]
        kind: type = bool
    elif isinstance(default, tuple):
        decls, kind, default = [flag], str, ",".join(str(v) for v in default)
    else:
        decls, kind = [flag], type(default)
    option = typer.Option(*decls, help=help_text, rich_help_panel=_PANEL)
    return inspect.Parameter(
        _PREFIX + name,
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[kind, option],
    )


def _int_tuple(flag: str, text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise ZsadError(f"{flag} {text!r}: expected comma-separated positive integers")
    return values


def build_config(values: dict[str, Any], seed: int) -> SetScoringConfig:
    """Turn parsed option values into a SetScoringConfig, with one-line errors."""
    flags = {name: flag for name, flag, _ in _OPTIONS}
    for name, default in _DEFAULTS.items():
        if isinstance(default, tuple) and isinstance(values.get(name), str):
            values[name] = _int_tuple(flags[name], values[name])
    if any(r % 2 == 0 for r in values.get("r_list", ())):
        raise ZsadError(f"--r-list {values['r_list']}: aggregation degrees must be odd")
    try:
        return SetScoringConfig(**values, seed=seed)
    except ValueError as exc:
        raise ZsadError(f"scoring options: {exc}") from exc


def scoring_options(
    exclude: tuple[str, ...] = (), defaults: dict[str, Any] | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator adding the scoring options to a command, which receives them as one
    `scoring` config argument; ``exclude`` ones keep their value from ``defaults``, else the
    config's default, and ``defaults`` overrides the config's defaults."""
    start = {**_DEFAULTS, **(defaults or {})}
    options = [option for option in _OPTIONS if option[0] not in exclude]
    names = [name for name, _, _ in options]
    fixed = {name: start[name] for name, _, _ in _OPTIONS if name in exclude}

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            values = {**fixed, **{name: kwargs.pop(_PREFIX + name) for name in names}}
            return command(**kwargs, scoring=build_config(values, kwargs.get("seed", 0)))

        own = [
            p
            for p in inspect.signature(command, eval_str=True).parameters.values()
            if p.name != "scoring"
        ]
        extra = [_parameter(*option, start[option[0]]) for option in options]
        wrapper.__signature__ = inspect.Signature(own + extra)  # type: ignore[attr-defined]
        return wrapper

    return decorate


with_scoring_options = scoring_options()
