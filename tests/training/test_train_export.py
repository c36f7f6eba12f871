"""Tiny training on real crops, safe checkpoint loading, ONNX export and its parity with PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("mmdet")

from midog.errors import ModelError  # noqa: E402
from midog.inference.onnx_detector import METADATA_KEYS, OnnxDetector  # noqa: E402
from midog.training.crops import list_crops, load_rgb  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "tests" / "rtmdet_s_tiny_canvas.py"

pytestmark = pytest.mark.train


@pytest.fixture(scope="module")
def tiny_run(shared_data, tmp_path_factory):
    """Train the tiny config for 2 iterations on the real data and return (work_dir, checkpoint)."""
    from midog.training.train import train

    work_dir = tmp_path_factory.mktemp("tiny_run")
    overrides = {"train_dataloader.dataset.data_root": str(shared_data)}
    checkpoint = train(TINY_CONFIG, work_dir, overrides)
    return work_dir, checkpoint


@pytest.fixture(scope="module")
def crops(shared_data):
    records = list_crops(shared_data / "mf_crops")
    return np.stack([load_rgb(r.path) for r in records[::400][:4]])


@pytest.fixture(scope="module")
def biased_export(tiny_run, crops, tmp_path_factory):
    """Export the tiny model with its class bias raised, so that tiles yield many candidates."""
    from midog.training.export import build_model, export_onnx

    _, checkpoint = tiny_run
    model, _ = build_model(TINY_CONFIG, checkpoint)
    with torch.no_grad():
        for conv in model.bbox_head.rtm_cls:
            conv.bias += 3.0
    out_dir = tmp_path_factory.mktemp("biased")
    biased_checkpoint = out_dir / "biased.pth"
    torch.save({"state_dict": model.state_dict()}, biased_checkpoint)
    onnx_path = out_dir / "biased.onnx"
    export_onnx(TINY_CONFIG, biased_checkpoint, onnx_path, crops)
    return model, onnx_path


def test_train_writes_checkpoint(tiny_run):
    work_dir, checkpoint = tiny_run
    assert checkpoint.name == "iter_2.pth"
    assert (work_dir / "last_checkpoint").is_file()


def test_train_same_second_separate_logs(shared_data, tmp_path, monkeypatch):
    # mmengine names a run's logger and visualizer after the config and the
    # second it starts, and reuses an instance of the same name. So two runs in
    # one process and one second used to write their scalars to the first
    # run's folder.
    import time

    from midog.training.train import train

    strftime = time.strftime

    def same_second(fmt, *args):
        return "20261205_000000" if fmt == "%Y%m%d_%H%M%S" else strftime(fmt, *args)

    monkeypatch.setattr(time, "strftime", same_second)
    overrides = {
        "train_dataloader.dataset.data_root": str(shared_data),
        "train_cfg.max_iters": 1,
        "default_hooks.logger.interval": 1,
    }
    for name in ("first", "second"):
        train(TINY_CONFIG, tmp_path / name, overrides)
    for name in ("first", "second"):
        scalars = list((tmp_path / name).glob("*/vis_data/scalars.json"))
        assert len(scalars) == 1, name
        assert len(scalars[0].read_text().splitlines()) == 1, name


def test_train_resume_uses_safe_loader(tiny_run, shared_data):
    from midog.training.train import train

    work_dir, _ = tiny_run
    overrides = {"train_dataloader.dataset.data_root": str(shared_data), "train_cfg.max_iters": 3}
    checkpoint = train(TINY_CONFIG, work_dir, overrides, resume=True)
    assert checkpoint.name == "iter_3.pth"


def test_checkpoint_loads_with_history_buffer(tiny_run):
    from mmengine.logging.history_buffer import HistoryBuffer

    from midog.training.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(tiny_run[1])
    buffers = checkpoint["message_hub"]["log_scalars"]
    assert any(isinstance(value, HistoryBuffer) for value in buffers.values())
    assert "state_dict" in checkpoint


def test_checkpoint_loads_numpy_scalar_meta(tmp_path):
    from mmengine.logging.history_buffer import HistoryBuffer

    from midog.training.checkpoint import load_checkpoint

    buffer = HistoryBuffer()
    buffer.update(0.5)
    path = tmp_path / "meta.pth"
    torch.save({"meta": {"loss": buffer, "best": np.float64(0.81), "seen": np.arange(3)}, "state_dict": {}}, path)
    loaded = load_checkpoint(path)
    assert loaded["meta"]["best"] == pytest.approx(0.81)
    assert loaded["meta"]["loss"].current() == pytest.approx(0.5)
    assert loaded["meta"]["seen"].tolist() == [0, 1, 2]


class _RunsCommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_rejects_untrusted_global(tmp_path):
    from midog.training.checkpoint import load_checkpoint

    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"meta": _RunsCommand(marker)}, path)
    with pytest.raises(ModelError, match="system' is not in the allow-list"):
        load_checkpoint(path)
    assert not marker.exists()


class _GetattrGadget:
    def __reduce__(self):
        from mmengine.logging.history_buffer import HistoryBuffer

        return (getattr, (HistoryBuffer, "update"))


def test_checkpoint_rejects_other_getattr(tmp_path):
    from midog.training.checkpoint import load_checkpoint

    path = tmp_path / "gadget.pth"
    torch.save({"meta": _GetattrGadget()}, path)
    with pytest.raises(ModelError, match="getattr\\(HistoryBuffer, 'update'\\)"):
        load_checkpoint(path)


def test_checkpoint_missing_and_invalid(tmp_path):
    from midog.training.checkpoint import load_checkpoint

    with pytest.raises(ModelError, match="not found"):
        load_checkpoint(tmp_path / "absent.pth")
    bad = tmp_path / "text.pth"
    bad.write_text("not a checkpoint")
    with pytest.raises(ModelError, match="not a readable torch checkpoint"):
        load_checkpoint(bad)


def test_dataset_ids_unique_with_empty_canvases(tiny_run, shared_data):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from midog.training.registry import MitoticCanvasDataset

    init_default_scope("mmdet")
    cfg = Config.fromfile(str(TINY_CONFIG))
    dataset_cfg = dict(cfg.train_dataloader.dataset)
    dataset_cfg.pop("type")
    dataset_cfg["data_root"] = str(shared_data)
    dataset = MitoticCanvasDataset(**dataset_cfg)
    items = [dataset[i] for i in range(12)]
    counts = [len(item["data_samples"].gt_instances) for item in items]
    ids = [item["data_samples"].img_id for item in items]
    assert 0 in counts
    assert max(counts) > 0
    assert len(set(ids)) == len(ids)


def test_train_step_on_batch_without_boxes(tiny_run, shared_data):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmengine.optim import build_optim_wrapper

    from midog.training.export import build_model
    from midog.training.registry import MitoticCanvasDataset

    init_default_scope("mmdet")
    cfg = Config.fromfile(str(TINY_CONFIG))
    dataset_cfg = dict(cfg.train_dataloader.dataset)
    dataset_cfg.pop("type")
    dataset_cfg["data_root"] = str(shared_data)
    dataset = MitoticCanvasDataset(**dataset_cfg)
    empty = [dataset[i] for i in range(40) if len(dataset[i]["data_samples"].gt_instances) == 0][:2]
    assert len(empty) == 2
    model, _ = build_model(TINY_CONFIG, tiny_run[1])
    model.train()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    batch = {"inputs": [e["inputs"] for e in empty], "data_samples": [e["data_samples"] for e in empty]}
    losses = model.train_step(batch, optim_wrapper)
    assert all(torch.isfinite(value).all() for value in losses.values())


def test_export_metadata(biased_export):
    _, onnx_path = biased_export
    detector = OnnxDetector(onnx_path, device="cpu")
    assert detector.mpp == 0.25
    assert detector.class_names == ("mitotic figure",)
    assert detector.postprocess_config.strides == (8, 16, 32)
    assert detector.postprocess_config.nms_iou_thresh == 0.65
    assert set(METADATA_KEYS) >= {"mpp", "score_thresh"}


def _mmdet_predict(model, tiles: np.ndarray):
    from mmdet.structures import DetDataSample

    height, width = tiles.shape[1:3]
    meta = dict(img_shape=(height, width), ori_shape=(height, width), pad_shape=(height, width),
                batch_input_shape=(height, width), scale_factor=(1.0, 1.0))
    samples = [DetDataSample(metainfo=meta) for _ in tiles]
    images = torch.from_numpy(tiles).permute(0, 3, 1, 2).float()
    preprocessor = model.data_preprocessor
    inputs = (images - preprocessor.mean.reshape(1, 3, 1, 1)) / preprocessor.std.reshape(1, 3, 1, 1)
    with torch.no_grad():
        results = model.predict(inputs, samples, rescale=False)
    return [(r.pred_instances.bboxes.numpy(), r.pred_instances.scores.numpy()) for r in results]


def _parity_tiles(crops: np.ndarray) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    white = np.full((2, 128, 128, 3), 255, np.uint8)
    black = np.zeros((2, 128, 128, 3), np.uint8)
    noise = rng.integers(0, 256, size=(2, 128, 128, 3), dtype=np.uint8)
    mixed = np.concatenate([white[:1], crops[:2], black[:1]])
    return {"crops": crops, "white": white, "black": black, "noise": noise, "mixed": mixed}


@pytest.mark.parametrize("kind", ["crops", "white", "black", "noise", "mixed"])
def test_export_detection_parity(biased_export, crops, kind):
    model, onnx_path = biased_export
    tiles = _parity_tiles(crops)[kind]
    detector = OnnxDetector(onnx_path, device="cpu")
    onnx_results = detector.detect_boxes(tiles)
    torch_results = _mmdet_predict(model, tiles)
    for (boxes, scores, _), (torch_boxes, torch_scores) in zip(onnx_results, torch_results):
        assert len(scores) == len(torch_scores)
        if not len(scores):
            continue
        # Candidates with equal scores may come in another order, so pair each box with its closest twin.
        box_diff = np.abs(boxes[:, None, :] - torch_boxes[None, :, :]).max(axis=2)
        twin = box_diff.argmin(axis=1)
        assert box_diff.min(axis=1).max() <= 1.0
        assert box_diff.min(axis=0).max() <= 1.0
        assert np.abs(scores - torch_scores[twin]).max() <= 1e-3


def test_export_empty_tiles_give_empty_result(tiny_run, crops, tmp_path):
    from midog.training.export import export_onnx

    onnx_path = tmp_path / "tiny.onnx"
    report = export_onnx(TINY_CONFIG, tiny_run[1], onnx_path, crops)
    assert report.max_abs_diff_logits < 1e-3
    assert report.max_abs_diff_distances < 1e-2
    detector = OnnxDetector(onnx_path, device="cpu")
    white = np.full((3, 128, 128, 3), 255, np.uint8)
    results = detector.detect(white)
    assert len(results) == 3
    assert all(len(r) == 0 for r in results)


def test_export_writes_no_partial_file(tiny_run, crops, tmp_path):
    from midog.training.export import export_onnx

    with pytest.raises(ValueError):
        export_onnx(TINY_CONFIG, tiny_run[1], tmp_path / "bad.onnx", crops[:, :100])
    assert list(tmp_path.iterdir()) == []


def test_onnx_detector_rejects_non_onnx(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_text("not onnx")
    with pytest.raises(ModelError, match="is not a valid ONNX model"):
        OnnxDetector(path, device="cpu")


def test_onnx_detector_rejects_wrong_inputs(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "wrong",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "wrong.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(ModelError, match="expected one input 'image'"):
        OnnxDetector(path, device="cpu")


def test_export_cli_prints_parity(tiny_run, shared_data, tmp_path, capsys):
    from midog.cli import main

    output = tmp_path / "cli.onnx"
    code = main(["export", str(tiny_run[1]), "--config", str(TINY_CONFIG), "--output", str(output),
                 "--data-root", str(shared_data), "--threshold", "0.4"])
    assert code == 0
    assert "max |diff| logits" in capsys.readouterr().out
    meta = OnnxDetector(output, device="cpu").session.get_modelmeta().custom_metadata_map
    assert json.loads(meta[METADATA_KEYS["class_names"]]) == ["mitotic figure"]
    assert float(meta[METADATA_KEYS["score_thresh"]]) == 0.4
