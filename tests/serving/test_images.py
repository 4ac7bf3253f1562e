"""JPEG bodies kept encoded until their batch is decoded (the GPU path), model placement and precision,
and top-k answers. The nvJPEG decode itself needs a GPU (bench/gpu_serving.py checks its pixels against
PIL's there); here the same code paths run on the CPU."""

from __future__ import annotations

import io
import textwrap

import httpx
import numpy as np
import pytest
from PIL import Image as PILImage

from kaon.errors import ConfigError
from kaon.models import load_file
from kaon.serving.images import EncodedImage, as_array, decode_batch, decode_image_bytes
from kaon.serving.model_service import model_service, rows_to_predictions
from kaon.serving.tensors import Image
from tests.servers import Server


def _encode(pixels: np.ndarray, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format=fmt, quality=90)
    return buffer.getvalue()


def _rgb(seed: int, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)


def test_encoded_image_checks_the_header_and_keeps_only_jpegs():
    jpeg = _encode(_rgb(0))
    lazy = EncodedImage.check(jpeg, 3, (16, 16), channels_last=False)
    assert isinstance(lazy, EncodedImage) and lazy.data == jpeg
    assert EncodedImage.check(_encode(_rgb(0), "PNG"), 3, (16, 16), False) is None  # PNGs are decoded at once
    with pytest.raises(ValueError, match="expected an image of 8x8 pixels. Received: 16x16"):
        EncodedImage.check(jpeg, 3, (8, 8), False)
    with pytest.raises(ValueError, match="not a readable PNG or JPEG"):
        EncodedImage.check(b"\xff\xd8\xff" + b"garbage" * 10, 3, (16, 16), False)


def test_decode_batch_matches_pil_for_mixed_items_and_layouts():
    jpegs = [_encode(_rgb(i)) for i in range(3)]
    array = np.random.default_rng(5).random((3, 16, 16), dtype=np.float32)
    lazy = [EncodedImage(j, 3, False) for j in jpegs]
    items = [lazy[0], array, lazy[1], lazy[2]]
    batch = decode_batch(items, "cpu").numpy()
    assert batch.shape == (4, 3, 16, 16) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[1], array)
    for row, data in zip((0, 2, 3), jpegs, strict=True):
        np.testing.assert_allclose(batch[row], decode_image_bytes(data, 3, None), atol=1e-6)
    last = EncodedImage(jpegs[0], 3, channels_last=True)
    assert as_array(last).shape == (16, 16, 3)
    np.testing.assert_allclose(decode_batch([last], "cpu").numpy()[0], as_array(last), atol=1e-6)


def test_image_type_with_encoded_passes_jpegs_through_and_decodes_the_rest():
    import pydantic

    adapter = pydantic.TypeAdapter(list[Image(16, 16, channels=3, encoded=True)])
    jpeg, png = _encode(_rgb(1)), _encode(_rgb(1), "PNG")
    got = adapter.validate_python([jpeg, png, np.zeros((3, 16, 16)).tolist()])
    assert isinstance(got[0], EncodedImage)
    assert isinstance(got[1], np.ndarray) and got[1].shape == (3, 16, 16)
    with pytest.raises(pydantic.ValidationError, match="expected an image of 16x16 pixels"):
        adapter.validate_python([_encode(_rgb(1, size=8))])


@pytest.fixture(scope="module")
def rgb_model(tmp_path_factory):
    import torch

    from kaon.models.torch import export_program

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 14 * 14, 12), torch.nn.Softmax(dim=1)).eval()
    path = tmp_path_factory.mktemp("rgb") / "rgb.pt2"
    export_program(net, np.random.rand(2, 3, 16, 16).astype(np.float32), path)
    return path


def test_model_service_decodes_jpegs_with_the_batch_and_answers_as_the_eager_path(rgb_model):
    model = load_file(rgb_model)
    jpegs = [_encode(_rgb(i)) for i in range(4)]
    lazy_cls = model_service(model, decode_on_device=True)
    eager_cls = model_service(model, decode_on_device=False)
    lazy, eager = lazy_cls(), eager_cls()
    lazy.setup()
    eager.setup()
    import pydantic

    item = lazy_cls.predict.__annotations__["inputs"]
    items = pydantic.TypeAdapter(item).validate_python(jpegs)
    assert all(isinstance(x, EncodedImage) for x in items)
    arrays = [decode_image_bytes(j, 3, None) for j in jpegs]
    got, want = lazy.predict(items), eager.predict(arrays)
    assert [r["label"] for r in got] == [r["label"] for r in want]
    np.testing.assert_allclose([r["output"] for r in got], [r["output"] for r in want], atol=1e-5)
    lazy.teardown()
    eager.teardown()


def test_a_jpeg_that_does_not_decode_fails_alone_in_its_batch(rgb_model):
    from kaon.errors import InvalidInputError

    good = [_encode(_rgb(i)) for i in range(3)]
    broken = good[0][: len(good[0]) // 3]  # the header is fine, the pixels are cut off
    items = [EncodedImage.check(d, 3, (16, 16), False) for d in (good[0], broken, good[1], good[2])]
    assert all(isinstance(x, EncodedImage) for x in items)
    errors: list = []
    batch = decode_batch(items, "cpu", errors=errors)
    assert batch.shape == (3, 3, 16, 16) and [i for i, _ in errors] == [1]
    with pytest.raises(ValueError, match="not a readable PNG or JPEG"):
        decode_batch(items, "cpu")
    service = model_service(load_file(rgb_model), decode_on_device=True)()
    service.setup()
    rows = service.predict(items)
    assert isinstance(rows[1], InvalidInputError) and "not a readable PNG or JPEG" in str(rows[1])
    eager = service.predict([decode_image_bytes(d, 3, None) for d in good])
    assert [r["label"] for i, r in enumerate(rows) if i != 1] == [r["label"] for r in eager]
    service.teardown()


def test_place_runs_bf16_close_to_fp32_and_refuses_what_cannot_run(rgb_model, tmp_path):
    x = np.random.default_rng(0).random((5, 3, 16, 16), dtype=np.float32)
    fp32 = load_file(rgb_model).place("cpu", "fp32").predict(x)
    bf16_model = load_file(rgb_model).place("auto", "bf16")
    bf16 = bf16_model.predict(x)
    assert bf16.dtype == np.float32 and bf16_model.precision == "bf16"
    assert 0 < np.abs(bf16 - fp32).max() < 2e-2  # rounded to bf16, so close but not equal
    from kaon.explanation import explain

    attributions = explain(bf16_model, x[:2], method="integrated_gradients").attributions
    assert attributions.shape == (2, 3, 16, 16) and np.isfinite(attributions).all()  # inputs cast to bf16 too
    with pytest.raises(ConfigError, match="precision must be one of"):
        load_file(rgb_model).place("cpu", "int4")
    with pytest.raises(ConfigError, match="torch sees no CUDA GPU"):
        load_file(rgb_model).place("cuda", "fp32")
    with pytest.raises(ConfigError, match="device must be auto, cpu, cuda or cuda:N. Received: 'tpu'"):
        load_file(rgb_model).place("tpu", "fp32")


def test_onnx_model_refuses_a_gpu_or_bf16_with_a_way_out(tmp_path):
    import torch

    net = torch.nn.Linear(4, 2).eval()
    torch.onnx.export(net, (torch.rand(1, 4),), str(tmp_path / "m.onnx"), input_names=["x"], dynamo=False,
                      dynamic_axes={"x": {0: "n"}})
    model = load_file(tmp_path / "m.onnx")
    assert model.place("auto", "fp32") is model
    with pytest.raises(ConfigError, match="runs onnx models on the CPU in fp32.*Serve a torch.export .pt2"):
        model.place("cuda", "fp32")
    with pytest.raises(ConfigError, match="precision='bf16'"):
        model.place("cpu", "bf16")


def test_top_k_indices_match_a_full_sort():
    from kaon.serving.model_service import top_k_indices

    scores = np.random.default_rng(3).random((40, 300)).astype(np.float32)
    for k in (1, 5, 16, 40):
        np.testing.assert_array_equal(top_k_indices(scores, k), np.argsort(-scores, axis=1, kind="stable")[:, :k])


def test_decode_batch_stacks_uint8_decodes_once_in_either_layout(monkeypatch):
    """torchvision's decoder gives uint8 (C, H, W): the batch is converted in one pass (faked here by PIL,
    since nvJPEG needs a GPU)."""
    import torch

    from kaon.serving import images

    def fake_decoder(batch, device):
        rgb = [np.asarray(PILImage.open(io.BytesIO(im.data)).convert("RGB")) for im in batch]
        return [torch.from_numpy(pixels.transpose(2, 0, 1).copy()) for pixels in rgb]

    monkeypatch.setattr(images, "_decode_jpegs", fake_decoder)
    jpegs = [_encode(_rgb(i)) for i in range(3)]
    for last in (False, True):
        got = decode_batch([EncodedImage(j, 3, last) for j in jpegs], "cpu").numpy()
        want = np.stack([as_array(EncodedImage(j, 3, last)) for j in jpegs])
        assert got.shape == want.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_top_k_rows_are_sorted_and_labelled():
    scores = np.array([[0.05, 0.3, 0.1, 0.55], [0.4, 0.3, 0.2, 0.1]], dtype=np.float32)  # probabilities
    rows = rows_to_predictions({"probs": scores}, ["a", "b", "c", "d"], top_k=2)
    def best(*pairs):
        return [{"label": label, "score": pytest.approx(score)} for label, score in pairs]

    assert rows == [{"label": "d", "top_k": best(("d", 0.55), ("b", 0.3))},
                    {"label": "a", "top_k": best(("a", 0.4), ("b", 0.3))}]
    assert len(rows_to_predictions({"probs": scores}, None, top_k=10)[0]["top_k"]) == 4  # k capped at the classes
    full = rows_to_predictions({"probs": scores}, None)
    assert full[0]["label"] == 3 and len(full[0]["probs"]) == 4


@pytest.mark.parametrize("name, shape, labels, labelled", [
    ("logits", (2, 4), None, True), ("output_0", (2, 4), None, True), ("probabilities", (2, 4), None, True),
    ("sentence_embedding", (2, 4), None, False), ("last_hidden_state", (2, 4), None, False),
    ("pooler_output", (2, 4), None, False), ("boxes", (2, 4), None, False), ("regression", (2, 3), None, False),
    ("y", (2, 1), None, False), ("y", (2,), None, False),
    ("features", (2, 4), ["a", "b", "c", "d"], True),  # class names win over the output's name
])
def test_only_class_scores_get_a_label(name, shape, labels, labelled):
    outputs = {name: np.arange(np.prod(shape), dtype=np.float32).reshape(shape)}
    rows = rows_to_predictions(outputs, labels)
    assert ("label" in rows[0]) is labelled and len(rows) == 2


SERVICE = textwrap.dedent('''
    import kaon
    from kaon.serving.images import EncodedImage, decode_batch

    class Pictures(kaon.Service):
        @kaon.endpoint(max_batch_size=16, max_wait_ms=5)
        def predict(self, images: list[kaon.Image(16, 16, channels=3, encoded=True)]) -> list[dict]:
            kinds = [type(x).__name__ for x in images]
            pixels = decode_batch(images, "cpu")
            return [{"kind": k, "mean": float(p.mean())} for k, p in zip(kinds, pixels)]
''')


def test_a_service_gets_jpeg_bodies_encoded_over_http(tmp_path):
    (tmp_path / "pictures.py").write_text(SERVICE)
    server = Server(["serve", f"{tmp_path / 'pictures.py'}:Pictures"], env={"KAON_HOME": str(tmp_path / "home")})
    try:
        server.wait_ready()
        pixels = _rgb(3)
        jpeg, png = _encode(pixels), _encode(pixels, "PNG")
        as_jpeg = httpx.post(server.url + "/predict", content=jpeg, headers={"content-type": "image/jpeg"})
        as_png = httpx.post(server.url + "/predict", content=png, headers={"content-type": "image/png"})
        assert as_jpeg.status_code == as_png.status_code == 200
        assert as_jpeg.json()[0]["kind"] == "EncodedImage" and as_png.json()[0]["kind"] == "ndarray"
        assert as_jpeg.json()[0]["mean"] == pytest.approx(decode_image_bytes(jpeg, 3, None).mean(), abs=1e-6)
        assert as_png.json()[0]["mean"] == pytest.approx(pixels.mean() / 255, abs=1e-6)
        wrong = httpx.post(server.url + "/predict", content=_encode(_rgb(3, size=8)),
                           headers={"content-type": "image/jpeg"})
        broken = httpx.post(server.url + "/predict", content=b"\xff\xd8\xff" + b"x" * 50,
                            headers={"content-type": "image/jpeg"})
        cut = httpx.post(server.url + "/predict", content=jpeg[: len(jpeg) // 3],
                         headers={"content-type": "image/jpeg"})
        for answer, words in ((wrong, "expected an image of 16x16 pixels. Received: 8x8"),
                              (broken, "not a readable PNG or JPEG")):
            assert 400 <= answer.status_code < 500 and words in answer.text
        assert cut.status_code == 500  # this Service's own decode_batch raised: its error, not kaon's
        assert httpx.get(server.url + "/readyz").status_code == 200  # still serving
    finally:
        assert server.stop() == 0


def test_serve_cli_refuses_a_gpu_that_is_not_there(tmp_path, rgb_model):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "kaon.cli", "serve", str(rgb_model), "--device", "cuda"],
                          capture_output=True, text=True, timeout=120, env={**__import__("os").environ,
                                                                             "KAON_HOME": str(tmp_path)})
    assert done.returncode != 0
    assert "torch sees no CUDA GPU" in done.stdout + done.stderr and "--device cpu" in done.stdout + done.stderr


def _png_16_bit(pixels: np.ndarray, color_type: int, rows: int | None = None) -> bytes:
    """A PNG of 16 bits per channel written by hand (PIL writes 16-bit greyscale only): pixels (H, W, C)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width = pixels.shape[:2] if rows is None else (rows, pixels.shape[1])
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)
    ihdr = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _grey_16(seed: int = 0) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(1, 65535, (16, 16), dtype=np.uint16)
    pixels[0, :3] = (0, 255, 65535)  # dark (all of these were 1.0 once), black and white
    return pixels


def test_a_16_bit_greyscale_png_is_scaled_by_65535_not_saturated():
    import pydantic

    pixels = _grey_16()
    png = _encode(pixels, "PNG")  # numpy uint16 -> PIL "I;16" -> a 16-bit PNG, opened again as "I;16"
    assert PILImage.open(io.BytesIO(png)).mode == "I;16"
    want = pixels.astype(np.float32) / 65535
    grey = decode_image_bytes(png, 1, (16, 16))
    assert grey.shape == (1, 16, 16) and grey.dtype == np.float32
    np.testing.assert_allclose(grey[0], want, atol=1e-6)
    assert grey[0, 0, 1] == pytest.approx(255 / 65535)  # not 1.0
    rgb = decode_image_bytes(png, 3, (16, 16))  # greyscale to RGB: the same value in each channel
    assert rgb.shape == (3, 16, 16)
    np.testing.assert_allclose(rgb, np.broadcast_to(want, (3, 16, 16)), atol=1e-6)
    from kaon.serving.tensors import Tensor

    channels_last = pydantic.TypeAdapter(Tensor((16, 16, 3), "float32", image=True)).validate_python(png)
    np.testing.assert_allclose(channels_last, np.broadcast_to(want[..., None], (16, 16, 3)), atol=1e-6)


def test_a_16_bit_greyscale_png_opened_as_mode_i_is_scaled_too(monkeypatch):
    """Older Pillow opens a 16-bit greyscale PNG as 32-bit mode "I"; this Pillow is made to do the same."""
    from PIL import PngImagePlugin

    monkeypatch.setitem(PngImagePlugin._MODES, (16, 0), ("I", "I;16B"))
    pixels = _grey_16(1)
    png = _encode(pixels, "PNG")
    assert PILImage.open(io.BytesIO(png)).mode == "I"
    np.testing.assert_allclose(decode_image_bytes(png, 1, (16, 16))[0], pixels / 65535, atol=1e-6)


def test_a_16_bit_rgb_png_is_scaled_to_0_1():
    pixels = np.random.default_rng(2).integers(0, 65536, (16, 16, 3), dtype=np.uint16)
    pixels[0, 0] = (0, 255, 65535)
    got = decode_image_bytes(_png_16_bit(pixels, color_type=2), 3, (16, 16))
    assert got.shape == (3, 16, 16)
    # PIL keeps the top 8 bits of each channel: within 1/255 of the 16-bit value, never saturated
    np.testing.assert_allclose(got, pixels.transpose(2, 0, 1) / 65535, atol=1 / 255)
    assert got[:, 0, 0].tolist() == [0.0, 0.0, 1.0]
    grey = decode_image_bytes(_png_16_bit(pixels[..., :1], color_type=0), 1, (16, 16))
    np.testing.assert_allclose(grey[0], pixels[..., 0] / 65535, atol=1e-6)


@pytest.mark.parametrize("pixels, mode", [
    (np.arange(256, dtype=np.int32).reshape(16, 16) * 1000, "I"),  # 32-bit integers: no known full scale
    (np.linspace(-1, 2, 256, dtype=np.float32).reshape(16, 16), "F"),
])
def test_an_image_mode_kaon_cannot_scale_is_refused_saying_how_to_fix_it(pixels, mode):
    import pydantic

    tiff = _encode(pixels, "TIFF")
    assert PILImage.open(io.BytesIO(tiff)).mode == mode
    words = rf"expected a PNG or JPEG of 8 or 16 bits.*Received: .* mode '{mode}'.*Convert it"
    for channels in (1, 3):
        with pytest.raises(ValueError, match=words):
            decode_image_bytes(tiff, channels, (16, 16))
    with pytest.raises(pydantic.ValidationError, match=rf"mode '{mode}'"):  # a 4xx over HTTP
        pydantic.TypeAdapter(Image(16, 16, channels=1)).validate_python(tiff)


def test_a_huge_image_is_refused_by_its_header_without_pils_warning():
    import warnings

    from kaon.serving.images import EncodedImage

    big = _png_16_bit(np.zeros((1, 10000, 1), dtype=np.uint16), color_type=0, rows=10000)  # 10^8 pixels
    huge = _png_16_bit(np.zeros((1, 30000, 1), dtype=np.uint16), color_type=0, rows=30000)  # 9 x 10^8
    with warnings.catch_warnings():
        warnings.simplefilter("error", PILImage.DecompressionBombWarning)
        for data, size in ((big, "10000x10000"), (huge, "30000x30000")):
            with pytest.raises(ValueError, match=f"expected an image of 16x16 pixels. Received: {size}"):
                decode_image_bytes(data, 1, (16, 16))
        # the size the endpoint asks for, but past PIL's hard limit (2 x 89 M pixels): still refused, clearly
        with pytest.raises(ValueError, match=r"900,000,000 pixels.*more than .* can be decoded"):
            decode_image_bytes(huge, 1, (30000, 30000))
        jpeg = _encode(_rgb(0))
        frame = jpeg.index(b"\xff\xc0") + 5  # the start-of-frame's height and width
        huge_jpeg = jpeg[:frame] + (30000).to_bytes(2, "big") * 2 + jpeg[frame + 4:]
        with pytest.raises(ValueError, match="expected an image of 16x16 pixels. Received: 30000x30000"):
            EncodedImage.check(huge_jpeg, 3, (16, 16), False)
    with pytest.warns(PILImage.DecompressionBombWarning):  # PIL's own protection is still on for the rest
        PILImage.open(io.BytesIO(big)).close()
