"""kaon.models._cuda_graphs with a stand-in for the CUDA graph API (this machine has no GPU; the real
capture is checked on a lent GPU by bench/gpu_serving.py, outputs against op-by-op launches).

The stand-in keeps what matters to the runner: a replay recomputes the captured call from the graph's own
input buffers into its own output buffers."""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import pytest
import torch

from kaon.models import _cuda_graphs
from kaon.models._cuda_graphs import BUCKETS, GraphRunner, bucket_for


class _FakeGraph:
    def __init__(self) -> None:
        self.replay_fn = None

    def replay(self) -> None:
        self.replay_fn()

    def pool(self) -> str:
        return "pool"


@pytest.fixture()
def fake_cuda(monkeypatch):
    state = {"graph": None}

    @contextlib.contextmanager
    def graph(g, pool=None, capture_error_mode=None):
        state["graph"] = g
        yield

    monkeypatch.setattr(torch.cuda, "CUDAGraph", _FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", graph)
    class Stream:
        def __init__(self, device=None) -> None:
            pass

        def wait_stream(self, other) -> None:
            pass

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    return state


def _runner(call, fake_cuda):
    runner = GraphRunner(call, channels_last=False)
    original = runner._capture

    def capture(bucket, args):
        entry = original(bucket, args)
        if entry is not None:
            graph, static_inputs, static_output = entry
            graph.replay_fn = lambda: static_output.copy_(call(*static_inputs))
        return entry

    runner._capture = capture
    return runner


def test_bucket_for_picks_the_smallest_bucket_that_holds_the_batch():
    assert bucket_for(1) == 1 and bucket_for(3) == 4 and bucket_for(50) == 64 and bucket_for(256) == 256
    assert bucket_for(257) is None
    assert list(BUCKETS) == sorted(BUCKETS)


def test_a_batch_runs_in_its_bucket_and_padding_rows_never_leak(fake_cuda):
    net = torch.nn.Linear(6, 3)
    calls = []

    def call(x):
        calls.append(x.shape[0])
        with torch.inference_mode():
            return net(x)

    runner = _runner(call, fake_cuda)
    finish = lambda out: out.clone()  # noqa: E731
    big = torch.randn(64, 6)
    np.testing.assert_allclose(runner.run([big], finish), net(big).detach(), atol=1e-6)
    assert [k[0] for k in runner.graphs] == [64] and calls == [64, 64, 64, 64]  # 2 warm-ups, capture, replay
    small = torch.randn(50, 6)  # the same graph, 14 rows left from the batch before
    out = runner.run([small], finish)
    assert out.shape == (50, 3)
    np.testing.assert_allclose(out, net(small).detach(), atol=1e-6)
    assert [k[0] for k in runner.graphs] == [64]
    assert runner.run([torch.randn(300, 6)], finish) is None  # over the largest bucket: the caller runs it


def test_inputs_of_another_shape_get_their_own_graph(fake_cuda):
    def call(x):
        return x.sum(dim=tuple(range(1, x.dim())))

    runner = _runner(call, fake_cuda)
    short, long = torch.randn(3, 5), torch.randn(3, 9)  # e.g. two token counts
    np.testing.assert_allclose(runner.run([short], lambda o: o.clone()), short.sum(1), atol=1e-5)
    np.testing.assert_allclose(runner.run([long], lambda o: o.clone()), long.sum(1), atol=1e-5)
    assert sorted(k[1][0] for k in runner.graphs) == [(5,), (9,)]


def test_a_module_that_cannot_be_captured_runs_eagerly_from_then_on(fake_cuda, caplog):
    def call(x):
        raise RuntimeError("operation not permitted when stream is capturing")

    runner = GraphRunner(call, channels_last=False)
    with caplog.at_level(logging.WARNING, logger="kaon.models"):
        assert runner.run([torch.randn(4, 2)], lambda out: out) is None
    assert runner.disabled and "CUDA graph capture failed" in caplog.text
    assert runner.run([torch.randn(4, 2)], lambda out: out) is None


def test_torch_model_uses_the_runner_only_on_a_gpu_and_warms_every_bucket_up(fake_cuda):
    from kaon.models.torch import TorchModel

    net = torch.nn.Linear(4, 2)
    model = TorchModel.from_module(net, np.zeros((2, 4), np.float32)).place("cpu")
    assert model._graphs is None
    model.warm_up(64)  # nothing to capture off a GPU
    model._graphs = _runner(model._forward, fake_cuda)  # as place() does on a GPU
    model.warm_up(20)
    assert sorted(k[0] for k in model._graphs.graphs) == [b for b in _cuda_graphs.BUCKETS if b <= 24]
    x = np.random.default_rng(0).random((3, 4), dtype=np.float32)
    np.testing.assert_allclose(model.predict(x), net(torch.from_numpy(x)).detach().numpy(), atol=1e-6)
