"""Models that take more than one shape, and inputs a model rejects, served by a real `kaon serve` on loopback."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from tests.servers import Server


def _save(graph_nodes, inputs, outputs, initializers, path) -> str:
    import onnx
    from onnx import helper

    graph = helper.make_graph(graph_nodes, path.stem, inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture(scope="module")
def shape_models(tmp_path_factory):
    """seq.onnx: x [n, seq, 4] -> its sum over seq, y [n, 4]; emb.onnx: ids [n, 2] int64 -> the sum of two rows
    of a 10 x 3 table, y [n, 3] (an id outside 0..9 fails the whole call in onnxruntime)."""
    from onnx import TensorProto, helper, numpy_helper

    folder = tmp_path_factory.mktemp("shapes")
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    seq = _save([helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)],
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "seq", 4])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], [axes], folder / "seq.onnx")
    table = numpy_helper.from_array(np.arange(30, dtype=np.float32).reshape(10, 3), "table")
    emb = _save([helper.make_node("Gather", ["table", "ids"], ["rows"]),
                 helper.make_node("ReduceSum", ["rows", "axes"], ["y"], keepdims=0)],
                [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", 2])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], [table, axes],
                folder / "emb.onnx")
    # pair.onnx, two inputs as a text model has them: ids [n, seq] int64 and a mask [n, seq] whose name is not a
    # Python identifier; y [n, 2] = (sum of ids * mask, sum of mask) per row
    pair = _save([helper.make_node("Cast", ["ids"], ["ids_f"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", ["ids_f", "attention.mask"], ["kept"]),
                  helper.make_node("ReduceSum", ["kept", "axes"], ["total"], keepdims=1),
                  helper.make_node("ReduceSum", ["attention.mask", "axes"], ["count"], keepdims=1),
                  helper.make_node("Concat", ["total", "count"], ["y"], axis=1)],
                 [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", "seq"]),
                  helper.make_tensor_value_info("attention.mask", TensorProto.FLOAT, ["n", "seq"])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])], [axes], folder / "pair.onnx")
    # fixed.onnx: exported without a dynamic batch axis, x [1, 4] -> its row sum y [1, 1]
    fixed = _save([helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])], [axes], folder / "fixed.onnx")
    return {"seq": seq, "emb": emb, "pair": pair, "fixed": fixed, "home": str(folder / "home")}


def _concurrently(url: str, bodies: list[dict]) -> list[httpx.Response]:
    async def scenario():
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(*(client.post(url, json=body) for body in bodies))

    return asyncio.run(scenario())


def _batches(server: Server, endpoint: str) -> tuple[float, float]:
    """(forward passes, inputs) the server's batch-size histogram has counted for `endpoint`."""
    lines = httpx.get(server.url + "/metrics").text.splitlines()

    def value(kind: str) -> float:
        prefix = f'kaon_batch_size_{kind}{{endpoint="{endpoint}"}} '
        return float(next(line for line in lines if line.startswith(prefix)).split()[-1])

    return value("count"), value("sum")


def test_inputs_of_several_sequence_lengths_share_batches_and_each_gets_its_own_answer(shape_models):
    server = Server(["serve", shape_models["seq"], "--max-wait-ms", "50"],
                    env={"KAON_HOME": shape_models["home"]}).wait_ready()
    try:
        rng = np.random.default_rng(0)
        items = [rng.random((length, 4)).round(3) for length in (3, 5, 2, 7) * 4]
        answers = _concurrently(server.url + "/predict", [{"inputs": [x.tolist()]} for x in items])
        assert [a.status_code for a in answers] == [200] * len(items), answers[0].text
        for x, answer in zip(items, answers, strict=True):
            np.testing.assert_allclose(answer.json()[0]["y"], x.sum(axis=0), rtol=1e-5)
        passes, inputs = _batches(server, "predict")
        assert inputs == len(items) and passes < len(items)  # batched together, several lengths in a batch

        ragged = httpx.post(server.url + "/predict", json={"inputs": [items[0].tolist(), items[1].tolist()]})
        assert ragged.status_code == 200
        rows = ragged.json()
        assert len(rows) == 2
        for row, x in zip(rows, items[:2], strict=True):
            np.testing.assert_allclose(row["y"], x.sum(axis=0), rtol=1e-5)

        v2 = [{"inputs": [{"name": "x", "shape": [1, *x.shape], "datatype": "FP32", "data": x.ravel().tolist()}]}
              for x in items[:8]]
        answers = _concurrently(server.url + "/v2/models/seq/infer", v2)
        assert [a.status_code for a in answers] == [200] * 8, answers[0].text
        for x, answer in zip(items, answers, strict=False):
            np.testing.assert_allclose(answer.json()["outputs"][0]["data"], x.sum(axis=0), rtol=1e-5)
    finally:
        server.stop()


def test_an_input_the_model_rejects_fails_alone_with_422(shape_models):
    server = Server(["serve", shape_models["emb"], "--max-wait-ms", "50"],
                    env={"KAON_HOME": shape_models["home"]}).wait_ready()
    try:
        ids = [[i, (i + 1) % 10] for i in range(9)]
        bodies = [{"inputs": [pair]} for pair in ids]
        bodies.insert(4, {"inputs": [[1, 50]]})  # id 50: the table has 10 rows
        answers = _concurrently(server.url + "/predict", bodies)
        statuses = [a.status_code for a in answers]
        assert statuses == [200] * 4 + [422] + [200] * 5, [a.text for a in answers]
        error = answers[4].json()["error"]
        assert error["code"] == "invalid_input" and "idx=50" in error["message"]
        table = np.arange(30, dtype=np.float32).reshape(10, 3)
        good = [a for i, a in enumerate(answers) if i != 4]
        for (a, b), answer in zip(ids, good, strict=True):
            np.testing.assert_allclose(answer.json()[0]["y"], table[a] + table[b])
        passes, _ = _batches(server, "predict")
        assert passes < len(bodies)  # the bad request shared a batch with good ones

        v2 = httpx.post(server.url + "/v2/models/emb/infer",
                        json={"inputs": [{"name": "ids", "shape": [1, 2], "datatype": "INT64", "data": [1, 50]}]})
        assert v2.status_code == 422 and "idx=50" in v2.json()["error"]
    finally:
        server.stop()


def test_a_model_with_two_inputs_is_served_on_predict_with_named_inputs(shape_models):
    server = Server(["serve", shape_models["pair"], "--max-wait-ms", "50"],
                    env={"KAON_HOME": shape_models["home"]}).wait_ready()
    try:
        rng = np.random.default_rng(0)
        bodies, expected = [], []
        for length in (3, 5, 3, 7, 5, 3):
            ids = rng.integers(0, 100, (2, length))
            mask = (rng.random((2, length)) > 0.3).astype(np.float32)
            rows = zip(ids.tolist(), mask.tolist(), strict=True)
            bodies.append({"inputs": [{"ids": i, "attention.mask": m} for i, m in rows]})
            expected.append(np.stack([(ids * mask).sum(1), mask.sum(1)], axis=1))
        responses = _concurrently(server.url + "/predict", bodies)
        assert [r.status_code for r in responses] == [200] * 6, [r.text for r in responses]
        for response, want in zip(responses, expected, strict=True):
            np.testing.assert_allclose([row["y"] for row in response.json()], want, rtol=1e-6)
        passes, inputs = _batches(server, "predict")
        assert inputs == 12 and passes < 6  # requests of the same length shared forward passes

        missing = httpx.post(server.url + "/predict", json={"inputs": [{"ids": [1, 2]}]})
        assert missing.status_code == 422 and "attention.mask" in missing.text
        unknown = httpx.post(server.url + "/predict",
                             json={"inputs": [{"ids": [1], "attention.mask": [1.0], "token_type_ids": [0]}]})
        assert unknown.status_code == 422 and "token_type_ids" in unknown.text
        schema = httpx.get(server.url + "/openapi.json").json()["components"]["schemas"]
        assert set(schema["PairInputs"]["properties"]) == {"ids", "attention.mask"}
        v2 = httpx.post(server.url + "/v2/models/pair/infer", json={"inputs": [
            {"name": "ids", "shape": [1, 2], "datatype": "INT64", "data": [4, 5]},
            {"name": "attention.mask", "shape": [1, 2], "datatype": "FP32", "data": [1, 0]}]})
        assert v2.status_code == 200 and v2.json()["outputs"][0]["data"] == [4.0, 1.0]
    finally:
        server.stop()


def test_a_model_exported_with_a_fixed_batch_of_one_answers_many_rows(shape_models):
    """torch.onnx.export without dynamic axes gives a batch of 1: two rows were a 422 'expected shape (1, 4)',
    and requests batched together failed and were re-run one by one."""
    server = Server(["serve", shape_models["fixed"]], env={"KAON_HOME": shape_models["home"]}).wait_ready()
    try:
        rows = np.arange(12, dtype=np.float32).reshape(3, 4)
        response = httpx.post(server.url + "/predict", json={"inputs": rows.tolist()})
        assert response.status_code == 200, response.text
        assert [r["y"] for r in response.json()] == [[6.0], [22.0], [38.0]]
        v2 = httpx.post(server.url + "/v2/models/fixed/infer", json={"inputs": [
            {"name": "x", "shape": [3, 4], "datatype": "FP32", "data": rows.ravel().tolist()}]})
        assert v2.status_code == 200 and v2.json()["outputs"][0]["data"] == [6.0, 22.0, 38.0]
        metadata = httpx.get(server.url + "/v2/models/fixed").json()  # says what a request may send: any rows
        assert [t["shape"] for t in metadata["inputs"] + metadata["outputs"]] == [[-1, 4], [-1, 1]]
        together = _concurrently(server.url + "/predict", [{"inputs": [row.tolist()]} for row in rows])
        assert [r.json()[0]["y"] for r in together] == [[6.0], [22.0], [38.0]]
    finally:
        server.stop()
    assert "fixed batch of 1" in server.output()
