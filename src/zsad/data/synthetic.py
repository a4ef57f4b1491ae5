"""Seeded synthetic defect data in the MVTec AD layout, for tests and smoke runs.

Each category is a texture or a simple object whose good images share their statistics
(fresh random realisation, small shift or pose jitter), so that mutual scoring, which
judges a patch normal when it appears in other images, has something to match. Defects are
painted onto exactly the pixels of their mask, so the masks are exact ground truth.

The fixtured categories (FIXTURED_CATEGORIES: bracket, chip) are parts held in a fixture: the
same part at the same place, within a pixel or two, frame after frame. Beside surface defects
they carry defects of place (a hole not drilled or drilled where none belongs, a missing pin):
what they show is normal elsewhere on the part, only not there, so only a comparison by
position (aligned MSM) can tell; small specks test small defects. loose_chip is the same chip
laid anywhere within an eighth of the image of its place, where aligned MSM must not be used.

The output is a pure function of the arguments: every image draws from its own generator,
seeded from (seed, CRC-32 of the category, CRC-32 of its folder, index), so the same seed
writes byte-identical PNGs and changing one count leaves the other images unchanged.
"""

from __future__ import annotations

import shutil
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from zsad.data.images import StrPath
from zsad.errors import ZsadError

FIXTURED_CATEGORIES: tuple[str, ...] = ("bracket", "chip")
SYNTHETIC_CATEGORIES: tuple[str, ...] = (
    "grid",
    "fabric",
    "wood",
    "disc",
    *FIXTURED_CATEGORIES,
    "loose_chip",
)
DEFECT_TYPES: dict[str, tuple[str, ...]] = {
    "grid": ("crack", "stain", "hole"),
    "fabric": ("scratch", "stain", "hole"),
    "wood": ("scratch", "crack", "stain"),
    "disc": ("scratch", "stain", "missing"),
    "bracket": ("missing_hole", "extra_hole", "scratch", "speck"),
    "chip": ("missing_pin", "scratch", "speck"),
    "loose_chip": ("missing_pin", "scratch", "speck"),
}
MIN_DEFECT_FRACTION = 0.005
MAX_DEFECT_FRACTION = 0.05
MIN_SIZE = 32

# A category folder holding this file was written here and may be replaced on a re-run;
# any other existing folder of that name is user data and is never touched.
MARKER_NAME = ".zsad-synthetic"
_MARKER_TEXT = "written by zsad.data.synthetic.make_dataset; safe to delete\n"
_MAX_DEFECT_TRIES = 200

_STAIN_RGB: dict[str, tuple[float, float, float]] = {
    "grid": (0.55, 0.27, 0.10),
    "fabric": (0.80, 0.66, 0.20),
    "wood": (0.10, 0.12, 0.28),
    "disc": (0.55, 0.27, 0.10),
    "bracket": (0.55, 0.27, 0.10),
    "chip": (0.80, 0.80, 0.78),
    "loose_chip": (0.80, 0.80, 0.78),
}
# Fixtured parts sit within this many pixels (per 128) of their place.
_FIXTURE_JITTER = 2.0 / 128


@dataclass
class _Scene:
    """A clean rendering: float RGB in [0, 1], where defects may go, and what lies beneath."""

    image: np.ndarray
    region: np.ndarray
    anchors: np.ndarray
    backdrop: np.ndarray
    # Fixtured parts: the part without its holes/pins, and where those features sit.
    surface: np.ndarray | None = None
    sites: list[np.ndarray] | None = None


def make_dataset(
    out_dir: StrPath,
    seed: int = 0,
    categories: Sequence[str] | None = None,
    *,
    n_train: int = 10,
    n_good: int = 8,
    n_defect: int = 4,
    size: int = 128,
) -> list[str]:
    """Write synthetic categories (size x size RGB PNGs) in the MVTec layout; return their names."""
    names = _check_arguments(seed, categories, n_train, n_good, n_defect, size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        _write_category(out, name, seed, n_train, n_good, n_defect, size)
    return names


def render_sample(
    category: str, rng: np.random.Generator, size: int = 128, defect: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Render one RGB uint8 image and its bool defect mask (all False when defect is None).

    The clean picture is drawn first, so two generators in the same state give the same
    picture with and without the defect: the images differ exactly on the mask.
    """
    if category not in _RENDERERS:
        raise ValueError(f"unknown synthetic category {category!r}")
    scene = _RENDERERS[category](rng, size)
    mask = np.zeros((size, size), dtype=bool)
    if defect is not None:
        if defect not in DEFECT_TYPES[category]:
            raise ValueError(f"category {category!r} has no defect type {defect!r}")
        if defect in _PLACED:
            mask = _PLACED[defect](scene, rng)
        else:
            mask = _place_defect(scene, rng, defect)
            _PAINTERS[defect](scene, mask, rng, category)
    return _to_uint8(scene.image), mask


def _check_arguments(
    seed: int,
    categories: Sequence[str] | None,
    n_train: int,
    n_good: int,
    n_defect: int,
    size: int,
) -> list[str]:
    """Validate make_dataset's options and return the category names to write."""
    if seed < 0:
        raise ZsadError(f"seed: must be a non-negative integer, got {seed}")
    for option, count in (("n_train", n_train), ("n_good", n_good), ("n_defect", n_defect)):
        if count < 0:
            raise ZsadError(f"{option}: must be >= 0, got {count}")
    if n_good + n_defect == 0:
        raise ZsadError("n_good, n_defect: the test split needs at least one image")
    if size < MIN_SIZE:
        raise ZsadError(f"size: must be at least {MIN_SIZE} pixels, got {size}")
    if isinstance(categories, str):
        categories = [categories]
    names = list(SYNTHETIC_CATEGORIES if categories is None else dict.fromkeys(categories))
    for name in names:
        if name not in SYNTHETIC_CATEGORIES:
            raise ZsadError(
                f"category: unknown synthetic category {name!r} "
                f"(available: {', '.join(SYNTHETIC_CATEGORIES)})"
            )
    return names


def _write_category(
    out: Path, name: str, seed: int, n_train: int, n_good: int, n_defect: int, size: int
) -> None:
    """Write one category into a temporary folder, then swap it in for any earlier run."""
    target = out / name
    if target.exists() and not (target / MARKER_NAME).is_file():
        raise ZsadError(
            f"{target}: exists and was not written by make_dataset; refusing to replace it"
        )
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out))
    try:
        _write_images(staging, name, seed, "train", None, n_train, size)
        _write_images(staging, name, seed, "test", None, n_good, size)
        for defect in DEFECT_TYPES[name]:
            _write_images(staging, name, seed, "test", defect, n_defect, size)
        (staging / MARKER_NAME).write_text(_MARKER_TEXT, encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _write_images(
    root: Path, name: str, seed: int, split: str, defect: str | None, count: int, size: int
) -> None:
    """Render and save ``count`` images of one folder, with masks for defect folders."""
    kind = defect or "good"
    image_dir = root / split / kind
    image_dir.mkdir(parents=True, exist_ok=True)
    mask_dir = root / "ground_truth" / kind
    if defect is not None:
        mask_dir.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        rng = _image_rng(seed, name, f"{split}/{kind}", index)
        image, mask = render_sample(name, rng, size, defect)
        _save_png(image, image_dir / f"{index:03d}.png")
        if defect is not None:
            _save_png(mask.astype(np.uint8) * 255, mask_dir / f"{index:03d}_mask.png")


def _image_rng(seed: int, name: str, folder: str, index: int) -> np.random.Generator:
    """Return the generator of one image, independent of every other image's draws."""
    # zlib.crc32, not hash(): str hashes are salted per process and would break determinism.
    entropy = [seed, zlib.crc32(name.encode()), zlib.crc32(folder.encode()), index]
    return np.random.default_rng(entropy)


def _save_png(array: np.ndarray, path: Path) -> None:
    """Save a uint8 array as PNG with fixed settings, so equal arrays give equal bytes."""
    Image.fromarray(array).save(path, format="PNG", optimize=False, compress_level=6)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """Quantise a float [0, 1] image to uint8."""
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def _smooth_noise(
    rng: np.random.Generator, size: int, sigma: float | tuple[float, float]
) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
    return field / (field.std() + 1e-12)


def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Return float (y, x) pixel coordinate grids."""
    y, x = np.mgrid[0:size, 0:size]
    return y.astype(np.float64), x.astype(np.float64)


def _texture_scene(rng: np.random.Generator, image: np.ndarray) -> _Scene:
    """Wrap a texture: defects anywhere away from the border, holes show a dark backing."""
    size = image.shape[0]
    margin = int(0.15 * size)
    anchors = np.zeros((size, size), dtype=bool)
    anchors[margin:-margin, margin:-margin] = True
    backing = 0.07 + 0.015 * _smooth_noise(rng, size, 1.0)
    return _Scene(
        image=image,
        region=np.ones((size, size), dtype=bool),
        anchors=anchors,
        backdrop=np.repeat(backing[:, :, None], 3, axis=2),
    )


def _render_grid(rng: np.random.Generator, size: int) -> _Scene:
    """A regular mesh of dark lines on light grey, randomly shifted."""
    period = max(8, size // 8)
    width = max(2, period // 6)
    y, x = _coords(size)
    phase_y, phase_x = rng.integers(0, period, size=2)
    lines = ((x + phase_x) % period < width) | ((y + phase_y) % period < width)
    paper = np.array([0.78, 0.78, 0.76])
    ink = np.array([0.25, 0.26, 0.28])
    image = np.where(lines[:, :, None], ink, paper)
    image = ndimage.gaussian_filter(image, sigma=(0.6, 0.6, 0.0))
    image += 0.025 * _smooth_noise(rng, size, 0.7)[:, :, None]
    return _texture_scene(rng, image)


def _render_fabric(rng: np.random.Generator, size: int) -> _Scene:
    """A blue woven cloth: a fine weave under stochastic fibre noise."""
    y, x = _coords(size)
    phase_y, phase_x = rng.uniform(0, 2 * np.pi, size=2)
    weave = np.sin(np.pi * x / 2 + phase_x) * np.sin(np.pi * y / 2 + phase_y)
    shade = 1.0 + 0.07 * weave + 0.09 * _smooth_noise(rng, size, 1.0)
    image = np.array([0.28, 0.38, 0.62]) * shade[:, :, None]
    return _texture_scene(rng, image)


def _render_wood(rng: np.random.Generator, size: int) -> _Scene:
    """Vertical wood grain: warped growth rings plus streaky fibres."""
    y, x = _coords(size)
    period = size / 10
    warp = 0.04 * size * _smooth_noise(rng, size, size / 10)
    phase = rng.uniform(0, period)
    rings = 0.5 + 0.5 * np.sin(2 * np.pi * (x + phase + warp) / period)
    dark = np.array([0.48, 0.30, 0.16])
    light = np.array([0.74, 0.55, 0.34])
    image = dark + (light - dark) * rings[:, :, None]
    image += 0.04 * _smooth_noise(rng, size, (3.0, 0.5))[:, :, None]
    return _texture_scene(rng, image)


def _render_disc(rng: np.random.Generator, size: int) -> _Scene:
    """A machined washer on a dark table, with a few pixels of pose jitter."""
    y, x = _coords(size)
    centre = size / 2 + rng.uniform(-0.03 * size, 0.03 * size, size=2)
    outer, inner = 0.32 * size, 0.13 * size
    dist = np.hypot(y - centre[0], x - centre[1])
    angle = np.arctan2(y - centre[0], x - centre[1])
    table = 0.17 + 0.015 * _smooth_noise(rng, size, 1.0)
    backdrop = table[:, :, None] * np.array([0.95, 1.0, 1.1])
    shade = 0.62 + 0.1 * np.cos(angle + np.pi / 4) + 0.03 * np.sin(2 * np.pi * dist / 3)
    shade = shade + 0.015 * rng.standard_normal((size, size))
    metal = shade[:, :, None] * np.array([1.04, 1.0, 0.94])
    body = (dist <= outer) & (dist >= inner)
    image = np.where(body[:, :, None], metal, backdrop)
    return _Scene(
        image=image,
        region=body,
        anchors=ndimage.binary_erosion(body, iterations=2),
        backdrop=backdrop,
    )


def _fixture_offset(rng: np.random.Generator, size: int) -> np.ndarray:
    """The part's (y, x) offset from its nominal place: a pixel or two."""
    return rng.uniform(-1.0, 1.0, size=2) * _FIXTURE_JITTER * size


def _render_bracket(rng: np.random.Generator, size: int) -> _Scene:
    """A brushed steel bracket in a fixture: six bolt holes, a slot, on a dark nest."""
    y, x = _coords(size)
    dy, dx = _fixture_offset(rng, size)
    nest = 0.12 + 0.012 * _smooth_noise(rng, size, 1.0)
    backdrop = nest[:, :, None] * np.array([1.0, 1.0, 1.05])
    top, bottom, left, right = (
        0.22 * size + dy,
        0.78 * size + dy,
        0.14 * size + dx,
        0.86 * size + dx,
    )
    plate = (y >= top) & (y < bottom) & (x >= left) & (x < right)
    brushed = 0.66 + 0.03 * _smooth_noise(rng, size, (0.4, 6.0)) + 0.05 * (x - left) / size
    surface = np.where(
        plate[:, :, None], brushed[:, :, None] * np.array([1.0, 1.0, 1.03]), backdrop
    )
    radius = 0.045 * size
    sites = [
        np.array([cy * size + dy, cx * size + dx])
        for cy in (0.32, 0.68)
        for cx in (0.26, 0.5, 0.74)
    ]
    holes = np.zeros((size, size), dtype=bool)
    for centre in sites:
        holes |= np.hypot(y - centre[0], x - centre[1]) <= radius
    slot = (np.abs(y - (0.5 * size + dy)) <= 0.025 * size) & (
        np.abs(x - (0.5 * size + dx)) <= 0.16 * size
    )
    surface = np.where(slot[:, :, None], backdrop, surface)
    image = np.where(holes[:, :, None], backdrop, surface)
    solid = plate & ~holes & ~slot
    return _Scene(
        image=image,
        region=solid,
        anchors=ndimage.binary_erosion(solid, iterations=int(0.06 * size)),
        backdrop=backdrop,
        surface=surface,
        sites=sites,
    )


def _render_chip(rng: np.random.Generator, size: int, loose: bool = False) -> _Scene:
    """A 12-pin IC in a test socket on a green board: dark body, tinned pins above and below;
    ``loose``: laid anywhere within an eighth of the image of its place."""
    y, x = _coords(size)
    dy, dx = rng.uniform(-0.12, 0.12, size=2) * size if loose else _fixture_offset(rng, size)
    board = 0.5 + 0.02 * _smooth_noise(rng, size, 1.5)
    backdrop = board[:, :, None] * np.array([0.25, 0.62, 0.32])
    body = (np.abs(y - (0.5 * size + dy)) <= 0.17 * size) & (
        np.abs(x - (0.5 * size + dx)) <= 0.34 * size
    )
    moulding = 0.13 + 0.015 * _smooth_noise(rng, size, 0.8)
    surface = np.where(body[:, :, None], moulding[:, :, None] * np.ones(3), backdrop)
    pins = np.zeros((size, size), dtype=bool)
    sites = []
    for row in (-1, 1):
        for column in range(6):
            centre = np.array([(0.5 + row * 0.235) * size + dy, (0.25 + 0.1 * column) * size + dx])
            sites.append(centre)
            pins |= (np.abs(y - centre[0]) <= 0.065 * size) & (np.abs(x - centre[1]) <= 0.03 * size)
    tin = (0.74 + 0.03 * _smooth_noise(rng, size, 0.6))[:, :, None] * np.array([1.0, 1.0, 0.97])
    image = np.where(pins[:, :, None], tin, surface)
    return _Scene(
        image=image,
        region=body,
        anchors=ndimage.binary_erosion(body, iterations=int(0.05 * size)),
        backdrop=backdrop,
        surface=surface,
        sites=sites,
    )


def _feature_mask(scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    """The pixels of one of the part's holes or pins, chosen at random."""
    assert scene.sites is not None and scene.surface is not None
    centre = scene.sites[rng.integers(len(scene.sites))]
    differs = np.abs(scene.image - scene.surface).max(axis=2) > 0
    labels, _ = ndimage.label(differs)
    return labels == labels[int(round(centre[0])), int(round(centre[1]))]


def _missing_feature(scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    """A hole not drilled or a pin not fitted: the part's plain surface where it belongs."""
    mask = _feature_mask(scene, rng)
    assert scene.surface is not None
    scene.image[mask] = scene.surface[mask]
    return mask


def _extra_hole(scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    """A bolt hole drilled where the drawing has none, on solid metal."""
    size = scene.region.shape[0]
    y, x = _coords(size)
    points = np.argwhere(scene.anchors)
    radius = 0.045 * size
    for _ in range(_MAX_DEFECT_TRIES):
        centre = points[rng.integers(len(points))]
        mask = np.hypot(y - centre[0], x - centre[1]) <= radius
        if mask.sum() and (mask <= scene.region).all():
            scene.image[mask] = scene.backdrop[mask]
            return mask
    raise RuntimeError(f"could not place an extra hole on a {size}px image")


def _speck(scene: _Scene, rng: np.random.Generator) -> np.ndarray:
    """A small speck of dirt or a weld spatter, dark on light surfaces and light on dark ones."""
    size = scene.region.shape[0]
    points = np.argwhere(scene.anchors)
    for _ in range(_MAX_DEFECT_TRIES):
        centre = points[rng.integers(len(points))].astype(np.float64)
        radius = np.sqrt(rng.uniform(0.006, 0.01) * size * size / np.pi)
        y, x = _coords(size)
        mask = (np.hypot(y - centre[0], x - centre[1]) <= radius) & scene.region
        if MIN_DEFECT_FRACTION <= mask.mean() <= MAX_DEFECT_FRACTION:
            level = 0.08 if scene.image[mask].mean() > 0.4 else 0.85
            _fill(scene, mask, np.array([level, 0.9 * level, 0.8 * level]), rng)
            return mask
    raise RuntimeError(f"could not place a speck on a {size}px image")


def _place_defect(scene: _Scene, rng: np.random.Generator, defect: str) -> np.ndarray:
    """Draw defect shapes until one covers a plausible fraction of the image."""
    size = scene.region.shape[0]
    anchor_points = np.argwhere(scene.anchors)
    for _ in range(_MAX_DEFECT_TRIES):
        centre = anchor_points[rng.integers(len(anchor_points))].astype(np.float64)
        mask = _SHAPES[defect](rng, size, centre) & scene.region
        if MIN_DEFECT_FRACTION <= mask.mean() <= MAX_DEFECT_FRACTION:
            return mask
    raise RuntimeError(f"could not place a {defect!r} defect on a {size}px image")


def _stroke_width(size: int) -> int:
    """Half-width in pixels of scratches and cracks, growing with the image size."""
    return max(1, round(size / 100))


def _scratch_shape(rng: np.random.Generator, size: int, centre: np.ndarray) -> np.ndarray:
    """A thin, gently bent curve (quadratic Bezier) through ``centre``."""
    length = rng.uniform(0.3, 0.5) * size
    direction = _unit(rng.uniform(0, 2 * np.pi))
    normal = np.array([-direction[1], direction[0]])
    start, end = centre - direction * length / 2, centre + direction * length / 2
    control = centre + normal * rng.uniform(-0.25, 0.25) * length
    t = np.linspace(0.0, 1.0, int(4 * length))[:, None]
    points = (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end
    return _rasterise(points, size)


def _crack_shape(rng: np.random.Generator, size: int, centre: np.ndarray) -> np.ndarray:
    """A jagged random walk from ``centre`` with one side branch."""
    length = int(rng.uniform(0.3, 0.45) * size)
    heading = rng.uniform(0, 2 * np.pi)
    trunk = _walk(rng, centre, heading, length)
    fork = trunk[len(trunk) // 2]
    branch = _walk(rng, fork, heading + rng.choice([-1.0, 1.0]) * 0.9, length // 3)
    return _rasterise(np.concatenate([trunk, branch]), size)


def _walk(rng: np.random.Generator, start: np.ndarray, heading: float, steps: int) -> np.ndarray:
    """Return the points of a unit-step walk whose heading drifts randomly."""
    headings = heading + np.cumsum(rng.normal(0.0, 0.3, size=max(steps, 1)))
    steps_yx = np.stack([np.sin(headings), np.cos(headings)], axis=1)
    return start + np.cumsum(steps_yx, axis=0)


def _blob_shape(rng: np.random.Generator, size: int, centre: np.ndarray) -> np.ndarray:
    """An irregular star-shaped patch covering about 1-3 % of the image."""
    radius = np.sqrt(rng.uniform(0.01, 0.03) * size * size / np.pi)
    amplitudes = rng.uniform(0.0, 0.18, size=3)
    phases = rng.uniform(0, 2 * np.pi, size=3)
    y, x = _coords(size)
    angle = np.arctan2(y - centre[0], x - centre[1])
    wobble = sum(
        a * np.cos(k * angle + p) for k, a, p in zip((2, 3, 4), amplitudes, phases, strict=True)
    )
    return np.hypot(y - centre[0], x - centre[1]) <= radius * (1.0 + wobble)


def _unit(angle: float) -> np.ndarray:
    """Return the (y, x) unit vector at ``angle``."""
    return np.array([np.sin(angle), np.cos(angle)])


def _rasterise(points: np.ndarray, size: int) -> np.ndarray:
    """Mark the pixels under a polyline's sample points and thicken them into a stroke."""
    mask = np.zeros((size, size), dtype=bool)
    rows, cols = np.round(points).astype(int).T
    inside = (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)
    mask[rows[inside], cols[inside]] = True
    return ndimage.binary_dilation(mask, iterations=_stroke_width(size))


def _paint_scratch(scene: _Scene, mask: np.ndarray, rng: np.random.Generator, _: str) -> None:
    """Paint a scratch near-white or near-black, whichever stands out more from its surround."""
    local = scene.image[mask].mean()
    level = 0.05 if local > 0.5 else 0.97
    _fill(scene, mask, np.full(3, level), rng)


def _paint_crack(scene: _Scene, mask: np.ndarray, rng: np.random.Generator, _: str) -> None:
    """Paint a crack as a deep shadow."""
    _fill(scene, mask, np.full(3, 0.03), rng)


def _paint_stain(scene: _Scene, mask: np.ndarray, rng: np.random.Generator, category: str) -> None:
    """Tint the patch towards the category's stain colour, keeping a trace of the texture."""
    stain = np.array(_STAIN_RGB[category])
    noise = 0.02 * rng.standard_normal((int(mask.sum()), 1))
    scene.image[mask] = 0.25 * scene.image[mask] + 0.75 * stain + noise


def _paint_hole(scene: _Scene, mask: np.ndarray, rng: np.random.Generator, _: str) -> None:
    """Cut the patch out, revealing whatever lies beneath the surface."""
    scene.image[mask] = scene.backdrop[mask]


def _fill(scene: _Scene, mask: np.ndarray, colour: np.ndarray, rng: np.random.Generator) -> None:
    """Set the masked pixels to ``colour`` with a little grain."""
    scene.image[mask] = colour + 0.02 * rng.standard_normal((int(mask.sum()), 1))


_RENDERERS: dict[str, Callable[[np.random.Generator, int], _Scene]] = {
    "grid": _render_grid,
    "fabric": _render_fabric,
    "wood": _render_wood,
    "disc": _render_disc,
    "bracket": _render_bracket,
    "chip": _render_chip,
    "loose_chip": lambda rng, size: _render_chip(rng, size, loose=True),
}
# Defects that choose their own place on the part (a feature of it, or solid surface).
_PLACED: dict[str, Callable[[_Scene, np.random.Generator], np.ndarray]] = {
    "missing_hole": _missing_feature,
    "missing_pin": _missing_feature,
    "extra_hole": _extra_hole,
    "speck": _speck,
}
_SHAPES: dict[str, Callable[[np.random.Generator, int, np.ndarray], np.ndarray]] = {
    "scratch": _scratch_shape,
    "crack": _crack_shape,
    "stain": _blob_shape,
    "hole": _blob_shape,
    "missing": _blob_shape,
}
_PAINTERS: dict[str, Callable[[_Scene, np.ndarray, np.random.Generator, str], None]] = {
    "scratch": _paint_scratch,
    "crack": _paint_crack,
    "stain": _paint_stain,
    "hole": _paint_hole,
    "missing": _paint_hole,
}
