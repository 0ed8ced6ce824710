"""Where ``eval`` and ``segment`` run (``EngineConfig``): this process, or Ray Data.

With Ray, a manifest of file paths becomes a dataset; CPU tasks decode the images (and labels); a pool of
model actors (``map_batches`` with a callable class and ``ActorPoolStrategy``), each loading the models
once, scores or segments them a batch at a time. An image that fails is caught inside the actor and comes
back as an error row naming it, so one bad file never drops its batch (Ray's ``max_errored_blocks`` would
drop whole batches: it is not used). For ``eval`` an actor sums its batch's confusion matrices before they
leave it, and the driver sums the batches': the object store carries one matrix per batch and run, never
one per image.

Ray is optional: nothing here imports it before a Ray run starts, and a missing Ray is an ``EngineError``
that says how to install it. A Ray session already open in the process (a notebook's, the tests') is used
as it is (its workers must be able to import deop: ``package_env``); otherwise one is started for the run
(``ray.init``: the cluster at the address, else a local Ray) and shut down after it.
"""

from __future__ import annotations

import logging
import pickle
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from .benchmarks import Sample
from .config import EngineConfig, SegmenterConfig
from .errors import DeopError, EngineError
from .evaluation import DatasetSpec, Decoded, Partial, Plan, Scorer, decode

RAY_INSTALL = 'pip install "ray[data]>=2.60,<3"'
# CPUs a decoding task reserves: none, so that actors holding every CPU of a small machine (two actors on two
# cores) cannot starve the tasks that feed them; decoding an image costs a few percent of scoring it.
DECODE_CPUS = 0
ACTOR_CPUS = 1.0


def require_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise EngineError(f"--engine ray needs Ray, which is not installed here ({exc.name or exc}): "
                          f"{RAY_INSTALL} (requirements-dev.txt has it)") from None
    return ray


def check_address(address: str, timeout: float = 5.0) -> None:
    """Fail fast, with a message, when a Ray address does not answer (ray.init would wait a long time)."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise EngineError(f"the Ray address {address!r} is not host:port or ray://host:port (--ray-address or "
                          "$RAY_ADDRESS)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise EngineError(f"the Ray cluster at {address} does not answer ({exc.strerror or exc}); start one with "
                          "`ray start --head` there, or leave --ray-address and $RAY_ADDRESS unset for a local "
                          "Ray") from None


@contextmanager
def ray_session(engine: EngineConfig) -> Iterator[Any]:
    """Ray for one run: an open session as it is, else ``ray.init`` at the address (or a local Ray)."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    address = engine.ray_address or None
    if address:
        check_address(address)
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "runtime_env": package_env()}
    if not address:
        kwargs["include_dashboard"] = False
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, TimeoutError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise EngineError(f"cannot start {where}: {exc}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _quiet_data(ray: Any) -> None:
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours, per benchmark, are shown instead
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its plan and timing lines; warnings still show


def package_env() -> dict[str, Any]:
    """The runtime environment that ships the driver's own deop package to every worker (on a cluster too):
    they run the code that was asked for, whether or not the nodes have deop installed or on their path. A
    Ray session opened by the caller needs deop importable on its workers: pass this to its ``ray.init``."""
    import deop

    return {"py_modules": [str(Path(deop.__file__).parent)]}


def _actor_options(engine: EngineConfig) -> dict[str, Any]:
    from ray.data import ActorPoolStrategy

    return {"compute": ActorPoolStrategy(size=engine.workers), "batch_size": engine.batch_size,
            "num_cpus": ACTOR_CPUS, "num_gpus": engine.gpus_per_worker, "batch_format": "numpy"}


# -- eval -----------------------------------------------------------------------------------------------------
def _decode_row(row: dict[str, Any], datasets: Mapping[str, DatasetSpec]) -> dict[str, Any]:
    """A CPU task: the sample's image and label as arrays, or its error (never raises)."""
    sample = Sample(**{k: row[k] for k in ("benchmark", "name", "image", "label", "error")})
    d = decode(sample, datasets[sample.benchmark])
    return {**asdict(sample), "error": d.error,
            "pixels": d.image if d.image is not None else np.zeros((0, 0, 3), np.uint8),
            "truth": d.truth.astype(np.int32) if d.truth is not None else np.zeros((0, 0), np.int32)}


def _decoded(batch: dict[str, np.ndarray]) -> list[Decoded]:
    out = []
    for i in range(len(batch["name"])):
        sample = Sample(*(str(batch[k][i]) for k in ("benchmark", "name", "image", "label")))
        error = str(batch["error"][i])
        # copies: Ray's batch arrays are read-only, and torch wants to own what it wraps
        out.append(Decoded(sample, None if error else np.array(batch["pixels"][i]),
                           None if error else np.array(batch["truth"][i]), error))
    return out


class EvalActor:
    """A Ray actor: the models loaded once; each call scores a batch and returns its one summed partial."""

    def __init__(self, config: SegmenterConfig, plan: Plan) -> None:
        self.scorer = Scorer(config, plan)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        part = self.scorer.score(_decoded(batch))
        return {"partial": np.array([pickle.dumps(part)], dtype=object)}


def evaluate(config: SegmenterConfig, plan: Plan, samples: Sequence[Sample], engine: EngineConfig,
             report: Callable[[Partial], None]) -> Partial:
    """Scores `samples` where `engine` says: this process (one ``Scorer``), or Ray's model actors."""
    if engine.engine == "ray":
        return evaluate_ray(config, plan, samples, engine, report)
    return evaluate_local(Scorer(config, plan), samples, report)


def evaluate_local(scorer: Scorer, samples: Sequence[Sample], report: Callable[[Partial], None]) -> Partial:
    total = Partial()
    for sample in samples:
        part = scorer.score([decode(sample, scorer.plan.datasets[sample.benchmark])])
        total.add(part)
        report(part)
    return total


def evaluate_ray(config: SegmenterConfig, plan: Plan, samples: Sequence[Sample], engine: EngineConfig,
                 report: Callable[[Partial], None]) -> Partial:
    with ray_session(engine) as ray:
        _quiet_data(ray)
        ds = ray.data.from_items([asdict(s) for s in samples])
        ds = ds.map(_decode_row, fn_kwargs={"datasets": plan.datasets}, num_cpus=DECODE_CPUS,
)
        ds = ds.map_batches(EvalActor, fn_constructor_kwargs={"config": config, "plan": plan}, **_actor_options(engine))
        total = Partial()
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for blob in batch["partial"]:
                part = pickle.loads(blob)
                total.add(part)
                report(part)
        return total


# -- segment --------------------------------------------------------------------------------------------------
def _load_row(row: dict[str, Any]) -> dict[str, Any]:
    from .images import load_image

    try:
        pixels, error = load_image(row["path"]), ""
    except DeopError as exc:
        pixels, error = np.zeros((0, 0, 3), np.uint8), f"{row['path']}: {exc}"
    return {**row, "pixels": pixels, "error": error}


class SegmentActor:
    """A Ray actor that segments a batch of decoded images and writes each one's outputs where the driver
    asked (a folder every node can write); one row back per image: what was written, or why not."""

    def __init__(self, config: SegmenterConfig, vocabulary: Any, method: str, out_dir: str) -> None:
        from .pipeline import Segmenter

        self.segmenter = Segmenter(config)
        self.segmenter.load()
        self.vocabulary, self.method, self.out_dir = vocabulary, method, Path(out_dir)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        lines, errors = [], []
        for i in range(len(batch["path"])):
            line, error = segment_one(self.segmenter, self.vocabulary, self.method, self.out_dir,
                                      str(batch["path"][i]), str(batch["stem"][i]),
                                      None if batch["error"][i] else np.array(batch["pixels"][i]),
                                      str(batch["error"][i]))
            lines.append(line)
            errors.append(error)
        return {"path": batch["path"], "line": np.array(lines, dtype=object), "error": np.array(errors, dtype=object)}


def segment_one(segmenter: Any, vocabulary: Any, method: str, out_dir: Path, path: str, stem: str,
                image: np.ndarray | None, error: str = "") -> tuple[str, str]:
    """(the line to print, "") or ("", the error) for one image: segmented and its outputs written."""
    from .export import save_result
    from .images import load_image

    if error:
        return "", error
    try:
        image = load_image(path) if image is None else image
        result = segmenter.segment(image, vocabulary, method=method)
        written = save_result(image, result, out_dir, stem)
    except DeopError as exc:
        return "", f"{path}: {exc}"
    return f"{path} -> {written['overlay']}  [{timing_line(result)}]", ""


def timing_line(result: Any) -> str:
    """The line ``segment`` prints per image: each method's stage times, and which way the speed-up went."""
    parts = []
    for name, m in result.methods.items():
        t = m.timings
        parts.append(f"{name}: {t['total']:.2f}s (proposals {t['proposals']:.2f}, image {t['image_encoding']:.2f},"
                     f" text {t['text_encoding']:.2f}, classify {t['classification']:.2f})")
    line = "; ".join(parts)
    summary = result.comparison_summary()
    if summary and summary.one_pass_won:
        line += f"; one-pass CLIP stage {summary.clip:.1f}x faster than crops"
    elif summary:
        line += f"; crops {1 / summary.clip:.1f}x faster than one pass with only {summary.segments}"
    return line


def segment_ray(config: SegmenterConfig, vocabulary: Any, method: str, out_dir: Path,
                items: Sequence[tuple[Path, str]], engine: EngineConfig,
                report: Callable[[str, str], None]) -> None:
    """Segments `items` (path, output stem) on Ray; `report(line, error)` per image (an empty error for
    one done)."""
    with ray_session(engine) as ray:
        _quiet_data(ray)
        ds = ray.data.from_items([{"path": str(p), "stem": stem} for p, stem in items])
        ds = ds.map(_load_row, num_cpus=DECODE_CPUS)
        ds = ds.map_batches(SegmentActor, fn_constructor_kwargs={"config": config, "vocabulary": vocabulary,
                                                                 "method": method, "out_dir": str(out_dir)},
                            **_actor_options(engine))
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for line, error in zip(batch["line"], batch["error"]):
                report(str(line), str(error))
