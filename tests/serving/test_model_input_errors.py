"""Values a model cannot take (a token id past the embedding's table) are the request's fault: a 422 naming the
fix, from an ONNX file and an exported torch program alike (the .pt2 answered 500, 'index out of range')."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import kaon
from kaon.errors import InvalidInputError


class Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids).mean(dim=1))


@pytest.fixture(scope="module")
def tagger_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tagger")
    torch.manual_seed(0)
    model = Tagger().eval()
    ids = torch.zeros(2, 6, dtype=torch.long)
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.export.save(torch.export.export(model, (ids,), dynamic_shapes=({0: batch},)), folder / "tagger.pt2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (ids,), str(folder / "tagger.onnx"), input_names=["ids"], output_names=["logits"],
                          dynamic_axes={"ids": {0: "batch"}}, dynamo=False)
    return {"pt2": folder / "tagger.pt2", "onnx": folder / "tagger.onnx"}


@pytest.mark.parametrize("kind", ["pt2", "onnx"])
def test_a_token_id_past_the_vocabulary_is_the_inputs_fault(tagger_files, kind):
    model = kaon.load(tagger_files[kind])
    name = model.signature.inputs[0].name
    good = model.run({name: np.array([[1, 2, 3, 4, 5, 6]], dtype=np.int64)})
    assert next(iter(good.values())).shape == (1, 3)
    with pytest.raises(InvalidInputError, match="token ids within its vocabulary"):
        model.run({name: np.array([[100, 2, 3, 4, 5, 6]], dtype=np.int64)})


def test_a_zip_that_is_not_a_program_is_one_line_naming_the_reason_not_torchs_traceback(tmp_path, capfd):
    """torch.export.load logged a 30-line traceback (W... lines) and raised 'check the warnings above'."""
    import logging
    import zipfile

    from kaon.errors import ModelLoadError

    with zipfile.ZipFile(tmp_path / "other.pt2", "w") as archive:
        archive.writestr("notes.txt", "not a program")
    torch_export_log = logging.getLogger("torch.export")
    handlers = torch_export_log.handlers[:]
    with pytest.raises(ModelLoadError, match=r"could not be loaded as a torch.export program \(.pt2\): RuntimeError"):
        kaon.load(tmp_path / "other.pt2")
    assert "Traceback" not in capfd.readouterr().err
    assert torch_export_log.handlers == handlers  # torch's own logging is left as it was


def test_numbers_past_float32_are_a_422_and_no_warning_in_the_servers_log(models_dir, probe):
    """A client's 1e39 (infinite as float32) or 1e200 (its square past float64) is refused; numpy's overflow
    warnings about them would be lines in the server's log that any client can write, without a request id."""
    import httpx

    from tests.servers import Server

    x, _ = probe
    server = Server(["serve", str(models_dir / "digits.onnx")], env={"KAON_HOME": str(models_dir / "home-warn")})
    try:
        server.wait_ready()
        for big in (1e39, 1e200, -1e300):
            answer = httpx.post(server.url + "/predict", json={"inputs": np.full(x[:2].shape, big).tolist()})
            assert answer.status_code == 422, answer.text
            assert "finite" in answer.json()["error"]["message"]
    finally:
        server.stop()
    assert "RuntimeWarning" not in server.output() and "overflow" not in server.output()
