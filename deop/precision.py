"""The numeric format both networks run in: float32 (the exact reference), bfloat16 or float16, or ``auto``.

Both models run under ``torch.autocast`` rather than with their weights cast: matrix products and
convolutions take the lower precision, while layer norms, softmaxes and the pipeline around them stay
float32 (but for CLIP's blocked attention on a CPU, ``deop.clip.attention``). On this project's CPU
(AVX-512 BF16) that made CLIP's dense pass 3-4x cheaper where casting the weights made it 1.5x cheaper
(its layer norms then run in bfloat16, slowly), with the same agreement (per-patch cosine 0.9999 to
float32). The weights stay float32 and shared, so a float32 segmenter beside a bfloat16 one costs no
second copy, and float32 is the untouched stock computation; only the linear layers of CLIP's image tower
and of the proposal model keep their weights' casts once made (``deop.casts``: 170 MB each for ViT-B/16 and
SAM vit_b in bfloat16), which autocast would redo on every call.

``auto`` picks, once per device and models, what is measured faster among the formats the device
supports: on a CPU bfloat16 only where the processor has native bfloat16 instructions (AVX-512 BF16 or
AMX; without them bfloat16 is emulated and slower than float32), kept only if a short CLIP and SAM-encoder
pass measured faster than float32's; on CUDA bfloat16 where the GPU supports it (float16 elsewhere, measured
like the CPU's); on Apple's MPS float16, measured. Nothing here imports torch at import time.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
# a lower precision must be at least this much faster than float32 to be chosen: within noise, exact wins
MARGIN = 0.9
ROUNDS = 2  # timed runs of each format, alternating
# the proposal model's input when auto measures it: the fast preset's (MobileSAM's is fixed at 1024)
SAM_SIZE = 448


@dataclass(frozen=True)
class Choice:
    """What ``auto`` decided and from what: the formats it considered and their measured seconds."""

    precision: str
    candidates: tuple[str, ...]
    seconds: dict[str, float] = field(default_factory=dict)
    reason: str = ""


def cpu_flags() -> set[str]:
    """The processor's feature flags as the OS reports them (Linux's /proc/cpuinfo, macOS's sysctl), empty
    where it does not."""
    try:
        if os.path.exists("/proc/cpuinfo"):
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key.strip() in ("flags", "Features"):
                        return set(value.split())
        elif platform.system() == "Darwin":
            out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True,
                                 timeout=5)
            return {"bf16"} if out.stdout.strip() == "1" else set()
    except (OSError, subprocess.SubprocessError):
        pass
    return set()


@cache
def cpu_has_bfloat16(flags: frozenset[str] | None = None) -> bool:
    """Native bfloat16 arithmetic: x86's AVX-512 BF16 or AMX-BF16, Arm's BF16 extension."""
    flags = frozenset(cpu_flags()) if flags is None else flags
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def supported(device: torch.device | str) -> tuple[str, ...]:
    """The lower precisions worth measuring on `device` (float32 is always supported)."""
    kind = getattr(device, "type", str(device).split(":")[0])
    if kind == "cpu":
        return ("bfloat16",) if cpu_has_bfloat16() else ()
    if kind == "cuda":
        import torch

        return ("bfloat16",) if torch.cuda.is_bf16_supported() else ("float16",)
    if kind == "mps":
        return ("float16",)
    return ()


def choose(device: torch.device | str, measure: Callable[[str], float],
           candidates: Sequence[str] | None = None) -> Choice:
    """``auto``'s pick on `device`. `measure(precision)` returns the seconds of a short representative run
    (called only where a choice needs it); `candidates` default to ``supported(device)``."""
    kind = getattr(device, "type", str(device).split(":")[0])
    candidates = tuple(supported(device) if candidates is None else candidates)
    if not candidates:
        return Choice("float32", (), {}, f"no faster format on this {kind}")
    if kind == "cuda" and "bfloat16" in candidates:
        return Choice("bfloat16", candidates, {}, "the GPU supports bfloat16")
    formats = ("float32", *candidates)
    seconds = {p: float("inf") for p in formats}
    for _ in range(ROUNDS):  # alternating, best of each: a busy machine's slow spell does not pick for it
        for p in formats:
            seconds[p] = min(seconds[p], measure(p))
    best = min(candidates, key=seconds.__getitem__)
    if seconds[best] < MARGIN * seconds["float32"]:
        return Choice(best, candidates, seconds, f"{best} measured {seconds['float32'] / seconds[best]:.1f}x faster")
    return Choice("float32", candidates, seconds, "nothing measured faster than float32")


def dtype_of(precision: str) -> torch.dtype:
    import torch

    if precision not in PRECISIONS[1:]:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS[1:])} here, got {precision!r}")
    return getattr(torch, precision)


def autocast(device: torch.device | str, precision: str) -> Any:
    """The context both networks run in: nothing at float32 (stock's computation, untouched), else
    ``torch.autocast`` to that format on the device."""
    if precision == "float32":
        return nullcontext()
    import torch

    kind = getattr(device, "type", str(device).split(":")[0])
    return torch.autocast(kind, dtype=dtype_of(precision))


def timed(device: torch.device | str, precision: str, runs: Sequence[Callable[[], Any]], warmup: bool = True) -> float:
    """Seconds of one call of each of `runs` at `precision`, after a warm-up call with `warmup` (one-time
    kernel set-up)."""
    import torch

    kind = getattr(device, "type", str(device).split(":")[0])
    sync = torch.cuda.synchronize if kind == "cuda" else (torch.mps.synchronize if kind == "mps" else lambda: None)
    with torch.inference_mode(), autocast(device, precision):
        for _ in range(2 if warmup else 1):
            sync()
            start = time.perf_counter()
            for run in runs:
                run()
            sync()
    return time.perf_counter() - start


def calibrate(clip: Any, proposer: Any, device: torch.device | str, candidates: Sequence[str] | None = None,
              clip_size: int = 224) -> Choice:
    """``auto``'s choice for these two models (float32 ones): one dense CLIP pass at `clip_size` and one
    pass of the proposal model's image encoder at the size it runs at (``Segmenter`` passes it at
    ``SAM_SIZE``), timed per format."""
    import torch

    from .clip.dense import encode_dense

    pixels = torch.zeros(1, 3, clip_size, clip_size, device=clip.device)
    encoder, size = proposer.model.image_encoder, proposer.input_size
    image = torch.zeros(1, 3, size, size, device=clip.device)
    runs = (lambda: encode_dense(clip.model, pixels), lambda: encoder(image))
    warmed: set[str] = set()

    def measure(precision: str) -> float:
        seconds = timed(device, precision, runs, warmup=precision not in warmed)
        warmed.add(precision)
        return seconds

    choice = choose(device, measure, candidates)
    if choice.precision == "float32" and warmed - {"float32"}:  # the casts the measurement made, unused
        from .casts import drop_casts

        drop_casts(clip.model)
        drop_casts(proposer.model)
    return choice
