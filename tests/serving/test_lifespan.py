"""How the ASGI lifespan runs setup(): inside it for any host (Ray Serve, uvicorn --factory, a worker of
--workers N), so a failing setup is reported as startup.failed and nothing is accepted before it is done; in the
background only when `kaon serve` asks for it (one process answering health probes while the model loads)."""

from __future__ import annotations

import asyncio

import kaon
from kaon.config import ServeConfig
from kaon.serving.app import KaonApp


class Broken(kaon.Service):
    def setup(self):
        raise RuntimeError("weights file is corrupt")

    @kaon.endpoint
    def ping(self, n: int) -> int:
        return n


def _lifespan(app: KaonApp) -> list[dict]:
    sent: list[dict] = []

    async def scenario() -> None:
        messages = asyncio.Queue()
        await messages.put({"type": "lifespan.startup"})

        async def send(message: dict) -> None:
            sent.append(message)
            if message["type"] == "lifespan.startup.complete":
                await asyncio.sleep(0.2)  # a background setup runs meanwhile
                await messages.put({"type": "lifespan.shutdown"})

        await app(scope={"type": "lifespan"}, receive=messages.get, send=send)

    asyncio.run(scenario())
    return sent


def test_another_host_is_told_that_setup_failed():
    """A regression of the background setup: under uvicorn --factory (and Ray Serve) a failing setup said
    'startup complete' and the process served 503s forever."""
    sent = _lifespan(KaonApp(Broken, ServeConfig()))
    assert [m["type"] for m in sent] == ["lifespan.startup.failed"]
    assert "weights file is corrupt" in sent[0]["message"]


def test_kaon_serve_sets_up_in_the_background_and_hears_of_a_failure():
    app = KaonApp(Broken, ServeConfig())
    app.background_setup = True
    failures: list[BaseException] = []
    app.on_setup_failed = failures.append
    sent = _lifespan(app)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert len(failures) == 1 and app.setup_error is failures[0]


class Shadowed(kaon.Service):
    def setup(self):
        self.wine = object()  # meant as the model, named as the endpoint

    @kaon.endpoint(max_batch_size=4)
    def wine(self, xs: list[float]) -> list[float]:
        return xs


def test_a_setup_that_hides_an_endpoint_behind_an_attribute_fails_setup_and_says_which():
    """It served, and answered every call with a 500 ('object is not callable')."""
    sent = _lifespan(KaonApp(Shadowed, ServeConfig()))
    assert [m["type"] for m in sent] == ["lifespan.startup.failed"]
    assert "Shadowed.setup() set self.wine (type object), which hides the endpoint 'wine'" in sent[0]["message"]
    assert "self.wine_model" in sent[0]["message"]

    class Timed(kaon.Service):  # a callable that setup() puts over its endpoint (a timer, a compiled call) is fine
        def setup(self):
            inner = self.double
            self.double = lambda xs: inner(xs)

        @kaon.endpoint(max_batch_size=4)
        def double(self, xs: list[float]) -> list[float]:
            return [2 * x for x in xs]

    assert [m["type"] for m in _lifespan(KaonApp(Timed, ServeConfig()))] == ["lifespan.startup.complete",
                                                                             "lifespan.shutdown.complete"]


def test_kaon_serve_prints_the_banner_once_setup_is_done_and_never_after_a_failed_one(tmp_path):
    """The banner ('kaon is serving ... Press Ctrl-C') came before setup(); a failing setup then followed it."""
    import subprocess
    import sys

    from tests.servers import free_port

    (tmp_path / "services.py").write_text(
        "import kaon\n\n"
        "class Broken(kaon.Service):\n"
        "    def setup(self):\n"
        "        raise RuntimeError('weights file is corrupt')\n\n"
        "    @kaon.endpoint\n"
        "    def ping(self, n: int) -> int:\n"
        "        return n\n"
    )
    run = subprocess.run([sys.executable, "-m", "kaon.cli", "serve", "services.py:Broken", "--port",
                          str(free_port())], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert "kaon: setting up 'Broken'" in run.stdout and "weights file is corrupt" in run.stderr
    assert "Press Ctrl-C" not in run.stdout and "kaon is serving" not in run.stdout
