"""A distributed-fit backend without Ray, for the tests: `num_workers` local processes in one gloo group.

It keeps kaon.training.distributed's backend contract (see its docstring), so the DDP, sharding, averaging
and decision-sharing code runs in every CI job; tests/cluster/test_ray_train.py runs the Ray one.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import queue
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kaon.training import Callback, Trainer


def run_in_processes(job: Callable[..., Any], *, num_workers: int, address: str | None = None,
                     use_gpu: bool = False, on_message: Callable[[Any], None] | None = None) -> Any:
    context = mp.get_context("spawn")
    inbox = context.Queue()
    with tempfile.TemporaryDirectory(prefix="kaon-gloo-") as folder:
        store = f"file://{Path(folder) / 'store'}"
        workers = [context.Process(target=_worker, args=(job, rank, num_workers, store, inbox), daemon=True)
                   for rank in range(num_workers)]
        for worker in workers:
            worker.start()
        result: Any = None
        pending = num_workers
        while pending:
            try:
                kind, payload = inbox.get(timeout=120)
            except queue.Empty:
                raise RuntimeError("the workers sent nothing for 120 s") from None
            if kind == "message" and on_message is not None:
                on_message(payload)
            elif kind == "error":
                raise RuntimeError(payload)
            elif kind == "done":
                pending -= 1
                result = pickle.loads(payload) if result is None else result
        for worker in workers:
            worker.join(30)
    return result


def _worker(job: Callable[..., Any], rank: int, world_size: int, store: str, inbox: Any) -> None:
    try:
        torch.distributed.init_process_group("gloo", init_method=store, rank=rank, world_size=world_size)
        result = job(rank, world_size, lambda message: inbox.put(("message", message)))
        inbox.put(("done", pickle.dumps(result)))  # bytes: torch would share tensors with a process that exits
        torch.distributed.destroy_process_group()
    except BaseException:  # noqa: BLE001 - the parent reports it
        inbox.put(("error", f"rank {rank}: {traceback.format_exc()}"))


class StopAndHalveLR(Callback):
    """On rank 0 only: halves the learning rate after epoch 0 and stops after epoch 1."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        assert self.trainer is not None
        for group in self.trainer.optimizer_.param_groups:
            group["lr"] /= 2
        if epoch == 1:
            self.trainer.stop_training = True


class RecordingTrainer(Trainer):
    """A Trainer with its own train_step: each worker appends the learning rate of each step to a file."""

    record_to = ""

    def train_step(self, batch: Any) -> Any:
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        with open(Path(self.record_to) / f"lr-{rank}", "a") as file:
            file.write(f"{self.optimizer_.param_groups[0]['lr']}\n")
        return super().train_step(batch)
