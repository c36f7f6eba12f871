"""Training with the mmengine Runner on an mmdet-style config."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

__all__ = ["load_config", "train"]

logger = logging.getLogger(__name__)

# Training runs started in this process; see train().
_runs_started = 0


def load_config(config_path: str | Path, overrides: dict[str, Any] | None = None):
    """Load an mmdet-style config file and apply ``key.sub=value`` overrides.

    Raises:
        FileNotFoundError: the config file does not exist.
    """
    from mmengine.config import Config

    config_path = Path(config_path)
    if not config_path.is_file():
        raise FileNotFoundError(f"config file {config_path} not found")
    cfg = Config.fromfile(str(config_path))
    if overrides:
        cfg.merge_from_dict(overrides)
    return cfg


def _init_cpu_process_group() -> bool:
    """Join the torchrun process group with gloo when no GPU is present; return whether it did.

    mmengine 0.10's ``init_dist("pytorch")`` always calls
    ``torch.cuda.set_device``, which fails on CPU-only torch builds. The Runner
    skips its own initialisation when a process group already exists.
    """
    import torch
    import torch.distributed as dist

    if torch.cuda.is_available():
        return False
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
        logger.info("joined process group as rank %d of %d (gloo, CPU)", dist.get_rank(), dist.get_world_size())
    return True


def train(
    config_path: str | Path,
    work_dir: str | Path,
    overrides: dict[str, Any] | None = None,
    resume: bool = False,
    launcher: str = "none",
) -> Path:
    """Train a model and return the path of the last checkpoint.

    Args:
        config_path: an mmdet-style config (see ``configs/``).
        work_dir: folder for checkpoints, logs and the dumped config.
        overrides: config values to replace, as ``{"train_cfg.max_iters": 10}``.
        resume: continue from the last checkpoint in ``work_dir``.
        launcher: ``"none"`` for one process, or ``"pytorch"`` under torchrun.
    """
    from mmengine.runner import Runner

    cpu_distributed = launcher != "none" and _init_cpu_process_group()
    cfg = load_config(config_path, overrides)
    if cpu_distributed:
        # DistributedDataParallel takes no device ids for CPU modules; mmengine would pass the local rank.
        cfg.model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None)
        # RTMDet converts BN to SyncBatchNorm in distributed runs, and SyncBatchNorm needs GPUs.
        cfg.model.use_syncbn = False
    cfg.work_dir = str(work_dir)
    # mmengine names its logger and visualizer after the config and the second
    # the run starts, and returns an existing instance of that name. So a second
    # run started in the same second in this process would write its scalars
    # into the first run's folder. A count of runs per process keeps the names
    # apart and equal on all ranks.
    global _runs_started
    _runs_started += 1
    cfg.experiment_name = f"{Path(config_path).stem}_run{_runs_started}"
    cfg.resume = resume
    cfg.launcher = launcher
    runner = Runner.from_cfg(cfg)
    logger.info("training %s for %d iterations in %s", config_path, cfg.train_cfg.max_iters, work_dir)
    runner.train()

    # Rank 0 writes the checkpoints. The other ranks wait for it and check
    # nothing, because on several machines they may not see rank 0's work_dir.
    from mmengine.dist import barrier, is_main_process

    barrier()
    last = Path(work_dir) / "last_checkpoint"
    if not is_main_process():
        return Path(last.read_text().strip()) if last.is_file() else last
    checkpoint = Path(last.read_text().strip()) if last.is_file() else None
    if checkpoint is None or not checkpoint.is_file():
        raise RuntimeError(f"training finished but no checkpoint was written to {work_dir}")
    logger.info("last checkpoint: %s", checkpoint)
    return checkpoint
