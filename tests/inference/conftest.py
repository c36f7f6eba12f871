"""Fixtures shared by the inference tests."""

from __future__ import annotations

import pytest

from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def local_ray():
    """A Ray instance on this machine only, with 2 CPUs, shut down after the module."""
    ray = pytest.importorskip("ray")
    # NOTE: Ray 2.60's raylet aborts when its dashboard agent needs more than
    # about 15 s to start, as on a heavily overloaded machine. ray.init then
    # raises "The current node timed out during startup" here.
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=100 * 1024**2,
        logging_level="WARNING",
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}},
    )
    yield ray
    ray.shutdown()
