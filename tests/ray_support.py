"""One local Ray for the whole test session: 2 CPUs, no dashboard, its files in a temporary folder, shut
down at the end. Ray is optional for the package, not for CI: with DEOP_REQUIRE_RAY set (.ci/run sets it) a
missing Ray fails the tests that need it instead of skipping them."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ray_session():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        if os.environ.get("DEOP_REQUIRE_RAY"):
            raise RuntimeError("DEOP_REQUIRE_RAY is set but Ray is missing (requirements-dev.txt has it)") from None
        pytest.skip("Ray is not installed (pip install -r requirements-dev.txt)")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    # a short path: Ray's Unix sockets live under it
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, logging_level="WARNING",
             # the workers import deop from this checkout, as ray_session in deop.engine arranges for its own Rays
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
