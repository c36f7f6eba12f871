"""Session settings, IO binding, model variants and resumed runs with a real onnxruntime session."""

from __future__ import annotations

import numpy as np
import pytest

from midog.errors import ModelError
from midog.inference.onnx_detector import INPUT_NAME, OUTPUT_NAMES, OnnxDetector
from midog.inference.precision import precision_of_path, resolve_model_path, variant_path
from midog.inference.resume import ResumeError
from midog.inference.runner import detect_slide
from midog.inference.session import IoBindingRunner, execution_providers, session_options
from tests.inference.synthetic import draw_disc, pink_image, write_tiff
from tests.inference.tiny_model import write_tiny_model

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.onnx")


@pytest.fixture(scope="module")
def disc_slide(tmp_path_factory):
    rgb = pink_image(1856, 1400)
    rng = np.random.default_rng(5)
    for x, y in rng.uniform(40, 1360, size=(12, 2)):
        draw_disc(rgb, (float(x) * 1.3, float(y)), 14.0)
    return write_tiff(tmp_path_factory.mktemp("onnx-slide") / "discs.tiff", rgb)


def test_io_binding_matches_run(tiny_model):
    session = ort.InferenceSession(str(tiny_model), session_options(), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(0).uniform(0, 255, (2, 3, 96, 128)).astype(np.float32)
    expected = session.run(list(OUTPUT_NAMES), {INPUT_NAME: images})
    bound = IoBindingRunner(session, INPUT_NAME, OUTPUT_NAMES).run(images)
    assert all(np.array_equal(a, b) for a, b in zip(bound, expected, strict=True))


def test_io_binding_device_on_cpu(tiny_model):
    session = ort.InferenceSession(str(tiny_model), providers=["CPUExecutionProvider"])
    assert IoBindingRunner(session, INPUT_NAME, OUTPUT_NAMES).device_type == "cpu"


def test_session_options_without_spinning():
    options = session_options(allow_spinning=False)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_session_options_negative_threads():
    with pytest.raises(ValueError, match="intra_op_threads"):
        session_options(intra_op_threads=-1)


def test_cpu_providers():
    assert execution_providers("cpu") == ["CPUExecutionProvider"]


def test_cuda_providers_missing():
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime build has CUDA")
    with pytest.raises(ModelError, match="onnxruntime-gpu"):
        execution_providers("cuda")


# Model variants by precision.


@pytest.mark.parametrize(
    ("precision", "name"), [("fp32", "model.onnx"), ("fp16", "model.fp16.onnx"), ("int8", "model.int8.onnx")]
)
def test_variant_path(tmp_path, precision, name):
    assert variant_path(tmp_path / "model.onnx", precision) == tmp_path / name


@pytest.mark.parametrize(
    ("name", "precision"), [("m.int8.onnx", "int8"), ("m.onnx", None), ("m.v2.onnx", None)]
)
def test_precision_of_path(name, precision):
    assert precision_of_path(name) == precision


def test_missing_variant_names_command(tmp_path):
    with pytest.raises(ModelError, match="python -m midog.training.quantize"):
        resolve_model_path(tmp_path / "model.onnx", "int8", "cpu")


def test_variant_file_used_as_is(tmp_path):
    assert resolve_model_path(tmp_path / "m.fp16.onnx", "auto", "cpu") == (tmp_path / "m.fp16.onnx", "fp16")


def test_variant_file_other_precision(tmp_path):
    with pytest.raises(ModelError, match="is the fp16 variant"):
        resolve_model_path(tmp_path / "m.fp16.onnx", "int8", "cpu")


def test_auto_without_variants_is_fp32(tmp_path, monkeypatch):
    monkeypatch.setattr("midog.inference.precision.AUTO_PRECISION", {"cpu": "int8", "cuda": "fp16"})
    assert resolve_model_path(tmp_path / "model.onnx", "auto", "cpu") == (tmp_path / "model.onnx", "fp32")


def test_auto_picks_device_variant(tmp_path, monkeypatch):
    monkeypatch.setattr("midog.inference.precision.AUTO_PRECISION", {"cpu": "int8", "cuda": "fp16"})
    (tmp_path / "model.int8.onnx").write_bytes(b"")
    assert resolve_model_path(tmp_path / "model.onnx", "auto", "cpu") == (
        tmp_path / "model.int8.onnx",
        "int8",
    )


# Whole-slide runs with the tiny model.


@pytest.fixture(scope="module")
def clean_onnx_run(tiny_model, disc_slide, tmp_path_factory):
    detector = OnnxDetector(tiny_model, device="cpu")
    return detect_slide(disc_slide, detector, tmp_path_factory.mktemp("clean"), batch_size=2, progress=False)


def test_tiny_model_finds_discs(clean_onnx_run):
    assert clean_onnx_run.num_figures >= 12


def test_onnx_resume_is_bit_identical(tiny_model, disc_slide, clean_onnx_run, tmp_path):
    detector = OnnxDetector(tiny_model, device="cpu")
    original = detector.detect
    calls = []

    def stop_at_third_call(tiles):
        calls.append(len(tiles))
        if len(calls) == 3:
            raise KeyboardInterrupt("stopped by the test")
        return original(tiles)

    detector.detect = stop_at_third_call  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        detect_slide(disc_slide, detector, tmp_path, batch_size=2, progress=False)
    resumed = detect_slide(
        disc_slide,
        OnnxDetector(tiny_model, device="cpu"),
        tmp_path,
        batch_size=2,
        resume=True,
        progress=False,
    )
    assert np.array_equal(resumed.candidates.xy, clean_onnx_run.candidates.xy)
    assert np.array_equal(resumed.candidates.scores, clean_onnx_run.candidates.scores)


def test_onnx_resume_other_model_rejected(tiny_model, disc_slide, tmp_path):
    detector = OnnxDetector(tiny_model, device="cpu")

    def stop(tiles):
        raise KeyboardInterrupt("stopped by the test")

    detector.detect = stop  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        detect_slide(disc_slide, detector, tmp_path, progress=False)
    other = write_tiny_model(tmp_path / "other.onnx", padding_rgb=(255, 255, 254))
    with pytest.raises(ResumeError, match="model_sha256"):
        detect_slide(disc_slide, OnnxDetector(other, device="cpu"), tmp_path, resume=True, progress=False)


def test_unpadded_tile_padded_with_padding_colour(tiny_model):
    # A 100 px tile is padded to 128 px with the model's padding colour (white)
    # before the model runs, so it must give what the same tile padded by hand gives.
    detector = OnnxDetector(tiny_model, device="cpu")
    tile = pink_image(100, 100)
    draw_disc(tile, (50.0, 50.0), 14.0)
    padded = np.full((128, 128, 3), detector.padding_rgb, dtype=np.uint8)
    padded[:100, :100] = tile

    (small,) = detector.detect(tile[None])
    (large,) = detector.detect(padded[None])
    assert len(small) == len(large) > 0
    np.testing.assert_allclose(small.xy, large.xy)
    np.testing.assert_allclose(small.scores, large.scores)
