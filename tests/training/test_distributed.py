"""Training with two processes under torchrun on CPU (gloo), and the data given to each rank."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("mmdet")

from tests.conftest import REPO_ROOT  # noqa: E402

TINY_CONFIG = REPO_ROOT / "configs" / "tests" / "rtmdet_s_tiny_canvas.py"
NUM_PROCESSES = 2

pytestmark = [pytest.mark.train, pytest.mark.slow]


@pytest.fixture(scope="module")
def ddp_run(shared_data, tmp_path_factory):
    """Train the tiny config (2 iterations) in two CPU processes; return (work_dir, completed process)."""
    work_dir = tmp_path_factory.mktemp("ddp")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(NUM_PROCESSES),
        "-m",
        "midog.cli",
        "train",
        str(TINY_CONFIG),
        "--launcher",
        "pytorch",
        "--work-dir",
        str(work_dir),
        "--data-root",
        str(shared_data),
        "--cfg-options",
        "env_cfg.dist_cfg.backend=gloo",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    completed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    return work_dir, completed


def test_ddp_exits_cleanly(ddp_run):
    _, completed = ddp_run
    assert completed.returncode == 0, completed.stderr[-4000:]


def test_ddp_writes_checkpoint(ddp_run):
    work_dir, _ = ddp_run
    assert (work_dir / "iter_2.pth").is_file()


def test_ddp_log_shows_two_processes(ddp_run):
    work_dir, _ = ddp_run
    log_text = "\n".join(path.read_text() for path in work_dir.glob("*/*.log"))
    assert "Distributed training: True" in log_text
    # mmengine 0.10 logs the world size as "GPU number", on CPU too.
    assert f"GPU number: {NUM_PROCESSES}" in log_text


def test_ddp_checkpoint_has_plain_keys(ddp_run):
    from midog.training.checkpoint import load_checkpoint

    work_dir, _ = ddp_run
    state_dict = load_checkpoint(work_dir / "iter_2.pth")["state_dict"]
    assert not [key for key in state_dict if key.startswith("module.")]
    assert any(key.startswith("backbone.") for key in state_dict)


def test_ddp_checkpoint_keeps_plain_batchnorm(ddp_run):
    from midog.training.checkpoint import load_checkpoint

    work_dir, _ = ddp_run
    state_dict = load_checkpoint(work_dir / "iter_2.pth")["state_dict"]
    assert "backbone.stem.0.bn.running_mean" in state_dict


def _rank_indices(monkeypatch, dataset_length: int, rank: int, count: int) -> list[int]:
    """Return the first indices the training sampler gives ``rank`` of ``NUM_PROCESSES``."""
    from mmengine.dataset import sampler as sampler_module

    monkeypatch.setattr(sampler_module, "get_dist_info", lambda: (rank, NUM_PROCESSES))
    sampler = sampler_module.InfiniteSampler(list(range(dataset_length)), shuffle=True, seed=0)
    iterator = iter(sampler)
    return [next(iterator) for _ in range(count)]


def test_sampler_ranks_disjoint(monkeypatch):
    rank0 = _rank_indices(monkeypatch, 10_000, 0, 500)
    rank1 = _rank_indices(monkeypatch, 10_000, 1, 500)
    assert not set(rank0) & set(rank1)


def test_ranks_get_different_canvases(monkeypatch, shared_data):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from midog.training.registry import MitoticCanvasDataset

    init_default_scope("mmdet")
    cfg = Config.fromfile(str(TINY_CONFIG))
    dataset_cfg = dict(cfg.train_dataloader.dataset)
    dataset_cfg.pop("type")
    dataset_cfg["data_root"] = str(shared_data)
    dataset = MitoticCanvasDataset(**dataset_cfg)

    first0 = _rank_indices(monkeypatch, len(dataset), 0, 1)[0]
    first1 = _rank_indices(monkeypatch, len(dataset), 1, 1)[0]
    image0 = dataset[first0]["inputs"].numpy()
    image1 = dataset[first1]["inputs"].numpy()
    assert not np.array_equal(image0, image1)
