"""Score a run's subsets on a Ray cluster with Ray Data: what `zsad infer --ray` runs.

The driver plans the run as `zsad infer` does (the same subsets, in content order) and keeps
the journal; a pool of actors, one per GPU (else per CPU) of the cluster, each opens the
detector once, torch-free from a bundle, and scores whole subsets (MSM compares a subset's
images with each other, so a subset is never split between calls). The driver writes each
subset's maps, overlays and records as `zsad infer` does, in subset order, so the records are
those of a run in one process. An actor that dies is restarted and its subset scored again
(Ray Data's actor pools retry by default); the journal takes each subset once, so nothing is
lost or written twice, and a killed driver resumes like `zsad infer`.

Ray is imported here, inside functions: `import zsad` and `zsad --help` never load it.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from zsad.api.detector import Detector
from zsad.api.infer import SubsetScoring, infer_to_folder
from zsad.api.results import SetResult
from zsad.api.subsets import SetPlan, SubsetRequest
from zsad.errors import ZsadError, echo_stderr

LOCAL = "local"  # a new Ray instance on this machine, as ray.init names it
AUTO = "auto"  # the cluster this machine is part of ($RAY_ADDRESS or the last `ray start`)
LOCAL_CPUS = 2  # a local instance's CPUs when no worker count is given: it shares the machine
PROBE_TIMEOUT_S = 5.0

OpenDetector = Callable[[], Detector]


@dataclass(frozen=True)
class RayCluster:
    """Where subsets are scored: ``address`` is local, auto, ray://HOST:PORT or HOST:PORT
    (None: the Ray this process has joined, else local); ``workers`` the encoder actors (None:
    one per GPU of the cluster, else one per CPU; never more than the subsets to score)."""

    address: str | None = None
    workers: int | None = None


def infer_on_ray(
    open_detector: OpenDetector,
    paths: Sequence[Path],
    out: Path,
    *,
    cluster: RayCluster | None = None,
    groups: Sequence[str] | None = None,
    subsets: SubsetRequest | None = None,
    batch_size: int = 8,
    overlays: bool = True,
    echo: Callable[[str], None] = echo_stderr,
) -> dict[str, Any]:
    """`infer_to_folder` with the subsets scored on Ray: the same files and records.
    ``open_detector`` (picklable, e.g. ``functools.partial(Detector.from_bundle, DIR)``) runs
    on the driver and once in each actor, so the bundle and the images must be at the same
    paths on every node."""
    cluster = cluster or RayCluster()
    with open_detector() as detector:
        # Checked before Ray starts: a mistake costs no cluster.
        if detector.bundle is None:
            raise ZsadError(
                "--ray: each worker runs the encoder from a bundle, without torch: pass --bundle "
                "DIR or --engine FILE (from zsad export)"
            )
        with ray_session(cluster.address, cluster.workers) as ray:
            return infer_to_folder(
                detector,
                paths,
                out,
                batch_size=batch_size,
                overlays=overlays,
                subsets=subsets,
                groups=groups,
                score=_ray_scoring(ray, open_detector, cluster.workers, echo),
                echo=echo,
            )


@contextmanager
def ray_session(address: str | None, cpus: int | None = None) -> Iterator[ModuleType]:
    """Ray, joined for the duration: at ``address``, or where None the Ray this process has
    joined, else a new local instance with ``cpus`` CPUs (default 2) on 127.0.0.1 only. What
    this starts or joins is left on exit; a Ray already joined stays."""
    if address not in (None, LOCAL, AUTO):
        _probe(address)
    local = address == LOCAL or (address is None and not _joined())
    ray = _import_ray(loopback=local or _on_loopback(address))
    if address is None and ray.is_initialized():
        yield ray
        return
    try:
        if local:
            ray.init(
                address=LOCAL,
                num_cpus=cpus or LOCAL_CPUS,
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                logging_level=logging.WARNING,
            )
        else:
            ray.init(address=address, logging_level=logging.WARNING)
    except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError, ...
        raise ZsadError(f"--ray {address or LOCAL}: {_first_line(exc)}") from exc
    try:
        yield ray
    finally:
        ray.shutdown()


def _joined() -> bool:
    """Whether this process has already joined a Ray instance (without importing Ray)."""
    return "ray" in sys.modules and bool(sys.modules["ray"].is_initialized())


def _on_loopback(address: str | None) -> bool:
    """Whether ``address`` is an instance on this machine's loopback interface."""
    host = (address or "").removeprefix("ray://").rpartition(":")[0]
    return host == "localhost" or host.startswith("127.")


def _import_ray(loopback: bool) -> ModuleType:
    """Ray and Ray Data, or a one-line error naming the extra."""
    if loopback:
        # Ray reads this when imported: with it, a local instance takes 127.0.0.1 as its node
        # address and listens there only, instead of on every interface of the machine;
        # and a driver joining an instance on 127.0.0.1 looks for it there, not on this
        # machine's network address.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
        import ray.data  # noqa: F401 (loaded here: its import error is the one to report)
    except ImportError as exc:
        raise ZsadError(f"--ray needs Ray Data ({exc}): pip install 'zsad[ray]'") from None
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # a line per dataset otherwise
    return ray


def _probe(address: str) -> None:
    """Refuse, in one line, an address that is malformed or where nothing answers; Ray itself
    would retry for a minute or more."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ZsadError(f"--ray {address}: give {LOCAL}, {AUTO}, ray://HOST:PORT or HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise ZsadError(f"--ray {address}: nothing answers there ({exc.strerror or exc})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _ray_scoring(
    ray: ModuleType, open_detector: OpenDetector, workers: int | None, echo: Callable[[str], None]
) -> SubsetScoring:
    """A SubsetScoring for infer_to_folder that scores the subsets on an actor pool."""

    def score(
        detector: Detector, paths: Sequence[Path], plan: SetPlan, todo: list[int], batch_size: int
    ) -> Iterator[SetResult]:
        if not todo:
            return
        gpus = int(ray.cluster_resources().get("GPU", 0))
        slots = workers or gpus or int(ray.cluster_resources().get("CPU", 1))
        size = min(slots, len(todo))  # an actor without a subset would only open the bundle
        slot = "GPU" if gpus else "CPU"
        echo(f"zsad: scoring {len(todo)} subsets on Ray: {size} workers, one {slot} each")
        rows = [
            {"subset": s, "members": plan.members(s, detector.time_is_input_order)} for s in todo
        ]
        # A block per subset: Ray Data hands out blocks, so each subset goes to a free actor.
        scored = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            _SubsetScorer,
            fn_constructor_args=(open_detector, list(paths), batch_size),
            batch_size=1,  # one whole subset per call
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=size),
            num_gpus=1 if gpus else None,
            num_cpus=None if gpus else 1,
        )
        # Subsets finish in any order; they are written in plan order, so the records and
        # their ids are those of a run in one process.
        pending: dict[int, Any] = {}
        position = 0
        for row in scored.iter_rows():
            pending[int(row["subset"])] = row["part"]
            while position < len(todo) and todo[position] in pending:
                part, notes, error = pending.pop(todo[position])
                if error is not None:
                    raise ZsadError(error)
                for note in notes:
                    detector.note(note)
                position += 1
                yield part

    return score


class _SubsetScorer:
    """A Ray Data actor: one detector, opened once, scoring a subset per call. A ZsadError
    (a bundle missing on this node, ...) goes back as the subset's result: Ray would bury its
    one line in a traceback, or retry opening the bundle in new actors."""

    def __init__(self, open_detector: OpenDetector, paths: list[Path], batch_size: int) -> None:
        self._paths = paths
        self._batch_size = batch_size
        self._detector: Detector | None = None
        self._error: str | None = None
        try:
            self._detector = open_detector()
        except ZsadError as exc:
            self._error = str(exc)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # An object column: Ray carries each (result, notes, error) between its own processes
        # as it carries the actor itself; nothing here reads bytes from outside the cluster.
        parts = np.empty(len(batch["subset"]), dtype=object)
        for row, (subset, members) in enumerate(
            zip(batch["subset"], batch["members"], strict=True)
        ):
            parts[row] = self._score(int(subset), [int(i) for i in members])
        return {"subset": batch["subset"], "part": parts}

    def _score(self, subset: int, members: list[int]) -> tuple[Any, list[str], str | None]:
        """(the subset's SetResult, the detector's notes, None), or (None, [], the error)."""
        if self._detector is None:
            return None, [], self._error
        try:
            part = self._detector.score_subset(
                self._paths, members, subset=subset, batch_size=self._batch_size
            )
        except ZsadError as exc:
            return None, [], str(exc)
        return part, self._detector.notes, None
