"""`kaon.Client.predict` / `.call` with images: bytes and PIL images are sent as base64 PNG/JPEG, on a real server."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image as PILImage

import kaon
from kaon.errors import InvalidInputError
from tests.servers import Server

SERVICE = textwrap.dedent('''
    import pydantic
    import kaon

    Image8 = kaon.Image(8, 8)

    class Item(pydantic.BaseModel):
        image: Image8
        scale: float

    class Pixels(kaon.Service):
        @kaon.endpoint(max_batch_size=8)
        def predict(self, images: list[Image8]) -> list[list[float]]:
            return [image.reshape(-1).tolist() for image in images]   # the pixels the server decoded

        @kaon.endpoint
        def weigh(self, items: list[Item]) -> list[float]:
            return [float(item.image.sum()) * item.scale for item in items]

        @kaon.endpoint
        def describe(self, image: Image8, label: str) -> dict[str, float]:
            return {label: float(image.sum())}
''')


@pytest.fixture(scope="module")
def pixels_server(tmp_path_factory):
    path = tmp_path_factory.mktemp("svc") / "pixels_service.py"
    path.write_text(SERVICE)
    server = Server(["serve", f"{path}:Pixels"]).wait_ready()
    yield server
    server.stop()


@pytest.fixture()
def image():
    """One 8x8 grayscale image as PNG bytes, a PIL image and the nested array the server decodes them to."""
    pixels = np.random.default_rng(3).integers(0, 256, (8, 8), dtype=np.uint8)
    pil = PILImage.fromarray(pixels)
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    return buffer.getvalue(), pil, (pixels / 255.0).tolist()


def test_bytes_and_pil_images_give_the_answer_of_the_nested_array(pixels_server, image):
    png, pil, nested = image
    with kaon.Client(pixels_server.url) as client:
        expected = client.predict([nested])[0]
        got = client.predict([png, bytearray(png), pil, nested])
        assert client.predict(images=[pil, png]) == [got[2], got[0]]
        np.testing.assert_allclose(got, [expected] * 4, atol=1e-6)

        weighed = client.call("weigh", items=[{"image": png, "scale": 2.0}, {"image": pil, "scale": 2.0},
                                              {"image": nested, "scale": 2.0}])
        np.testing.assert_allclose(weighed, [weighed[2]] * 3, rtol=1e-6)
        assert client.call("describe", image=pil, label="sum") == client.call("describe", image=nested, label="sum")

    async def scenario():
        async with kaon.AsyncClient(pixels_server.url) as client:
            return await client.predict([png, pil]), await client.call("weigh", items=[{"image": pil, "scale": 1}])

    predicted, weighed_async = asyncio.run(scenario())
    np.testing.assert_allclose(predicted, [expected] * 2, atol=1e-6)
    np.testing.assert_allclose(weighed_async, [weighed[2] / 2], rtol=1e-6)


def test_a_value_json_cannot_carry_is_a_kaon_error_naming_its_type_and_place(pixels_server, image):
    png, _, _ = image

    class Thumbnail:
        pass

    with kaon.Client(pixels_server.url) as client:
        with pytest.raises(InvalidInputError, match=r"inputs\[1\] is of type .*Thumbnail, which the client cannot "
                                                    r"send as JSON\. Send .*bytes .*PIL images"):
            client.predict([png, Thumbnail()])
        with pytest.raises(InvalidInputError, match=r"items\[0\]\['image'\] is of type .*Thumbnail"):
            client.call("weigh", items=[{"image": Thumbnail(), "scale": 1.0}])
        with pytest.raises(InvalidInputError, match=r"mode 'F' cannot be written as PNG.*convert"):
            client.predict([PILImage.new("F", (8, 8))])
        # bytes that are not an image have no agreed JSON form: base64 would reach a `bytes` parameter as text
        with pytest.raises(InvalidInputError, match=r"only when they are a PNG or JPEG file.*Received: 5 bytes"):
            client.call("weigh", items=[{"image": b"hello", "scale": 1.0}])
        with pytest.raises(InvalidInputError, match=r"numpy.ndarray of dtype complex128"):
            client.predict([np.ones((8, 8), dtype=complex)])
    pixels = memoryview(png)[::1]  # a memoryview of an image is its bytes
    with kaon.Client(pixels_server.url) as client:
        assert client.predict([pixels]) == client.predict([png])


def test_the_client_does_not_import_pil():
    code = ("import sys, kaon\n"
            "from kaon.sdk.client import _Base\n"
            "body = _Base('http://127.0.0.1:1')._predict_body(([b'\\x89PNG', [[0.5]]],), {})\n"
            "assert body == b'{\"inputs\":[\"iVBORw==\",[[0.5]]]}', body\n"
            "assert 'PIL' not in sys.modules, 'PIL imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
