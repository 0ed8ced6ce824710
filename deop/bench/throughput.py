"""``python -m deop bench-eval``: how many images per second ``eval`` scores, in this process and on Ray with
1 and 2 model actors, and what Ray costs per image.

The dataset is made here: the example photos (assets/) cycled to N images at a fixed size, each with a
random label map, as a folder dataset. The settings are the app's fast preset with about `masks` forced
segments per image (quality thresholds 0, NMS off, at most `masks` masks: a random SAM would keep about
one), the method one-pass. Each engine is timed twice: start-up (Ray's start, the actors' model loading, up
to the first scored image) and the steady rate over the images after the first, from the times the images
were scored (Ray hands results to the driver in bursts: timed at the driver, one actor came out faster than
the pipeline it runs). `scoring_s` is the pipeline's own time per image; the rest of `per_image_s` is
decoding (local) or Ray's hand-over (an actor).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .measure import ASSETS

PHOTOS = ("astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg")
CLASSES = ("person", "cat", "cup", "rocket", "sky", "grass", "table", "wall")


@dataclass
class ThroughputRecord:
    engine: str
    workers: int | None
    threads: int | None
    images: int
    startup_s: float
    steady_s: float
    images_per_second: float
    per_image_s: float
    scoring_s: float  # of per_image_s, the pipeline's own time (Scorer.score), mean over the same images


def make_dataset(root: Path, n: int, size: tuple[int, int] = (480, 640), seed: int = 0) -> list[Any]:
    from PIL import Image

    from ..evaluation import folder_samples

    images, labels = root / "images", root / "labels"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = size
    for i in range(n):
        with Image.open(ASSETS / PHOTOS[i % len(PHOTOS)]) as img:
            img.convert("RGB").resize((w, h)).save(images / f"img{i:04d}.jpg", quality=90)
        blocks = rng.integers(0, len(CLASSES), size=(h // 32, w // 32), dtype=np.uint8)
        Image.fromarray(np.kron(blocks, np.ones((32, 32), np.uint8))).save(labels / f"img{i:04d}.png")
    return folder_samples(images, labels)


def run_engine(config: Any, plan: Any, samples: list, engine: Any, threads: int | None = None) -> ThroughputRecord:
    import torch

    from ..engine import evaluate

    marks: list[tuple[float, int, float]] = []

    def report(part: Any) -> None:
        marks.append((part.finished, sum(part.images.values()) + len(part.failed), sum(part.seconds.values())))

    start = time.time()
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)  # this process's (Ray's actors set their own: threads is None)
    try:
        evaluate(config, plan, samples, engine, report)
    finally:
        torch.set_num_threads(before)
    marks.sort()  # by when each image was scored, not when the driver heard of it
    first_t = marks[0][0]
    rest = sum(n for _, n, _ in marks[1:])
    scoring = sum(s for _, _, s in marks[1:]) / rest if rest else float("nan")
    steady = marks[-1][0] - first_t
    ips = rest / steady if steady > 0 else float("nan")
    return ThroughputRecord(engine.engine, engine.workers if engine.engine == "ray" else None,
                            threads if engine.engine == "local" else 1, len(samples), round(first_t - start, 3),
                            round(steady, 3), round(ips, 4), round(1 / ips, 4) if ips == ips and ips else float("nan"),
                            round(scoring, 4))


def measure(config: Any, root: Path, n: int, masks: int, ray_workers: tuple[int, ...] = (1, 2),
            ray_address: str | None = None, batch_size: int = 1) -> dict[str, Any]:
    from ..bench.app import many_masks
    from ..config import PROPOSAL_PRESETS, EngineConfig
    from ..evaluation import FOLDER_LAYOUT, DatasetSpec, Plan, plan_runs
    from ..vocabulary import Vocabulary

    proposals = replace(PROPOSAL_PRESETS["fast"], **many_masks(masks))
    config = replace(config, options=replace(config.options, proposals=proposals))
    samples = make_dataset(root, n)
    vocabulary = Vocabulary.from_names(CLASSES)
    plan = Plan(plan_runs("one-pass", None, config.options.severance),
                {"folder": DatasetSpec("folder", "folder", vocabulary, FOLDER_LAYOUT)})
    import torch

    records = [run_engine(config, plan, samples, EngineConfig(), threads) for threads in
               dict.fromkeys((torch.get_num_threads(), 1))]
    for workers in ray_workers:
        engine = EngineConfig("ray", ray_address, workers, 0.0, batch_size)
        records.append(run_engine(config, plan, samples, engine))
    one_thread = next(r for r in records if r.engine == "local" and r.threads == 1)
    ray_one = next((r for r in records if r.engine == "ray" and r.workers == 1), None)
    overhead = None if ray_one is None else round(ray_one.per_image_s - one_thread.per_image_s, 4)
    return {"images": n, "masks": masks, "preset": "fast", "method": "one-pass",
            "records": [asdict(r) for r in records], "ray_overhead_per_image_s": overhead}


def format_records(out: dict[str, Any]) -> str:
    lines = ["| engine | workers | torch threads each | start-up | images/s | s/image | scoring s/image (each) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in out["records"]:
        lines.append(f"| {r['engine']} | {r['workers'] or ''} | {r['threads']} | {r['startup_s']:.1f} s | "
                     f"{r['images_per_second']:.3f} | {r['per_image_s']:.2f} | {r['scoring_s']:.2f} |")
    if out["ray_overhead_per_image_s"] is not None:
        lines.append(f"\nRay's cost per image (one actor against this process on one thread): "
                     f"{out['ray_overhead_per_image_s']:+.3f} s")
    return "\n".join(lines)
