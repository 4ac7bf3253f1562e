"""Trainer: Keras-style fit/evaluate/predict for any torch.nn.Module (and Keras 3 models on torch).

    >>> from kaon.training import Trainer
    >>> from kaon.training.data import load_digits
    >>> from kaon.training.models import DigitsCNN
    >>> x_train, y_train, x_test, y_test = load_digits()
    >>> trainer = Trainer(DigitsCNN(), metrics=["accuracy"], seed=0, track=False)
    >>> history = trainer.fit(x_train, y_train, epochs=2, verbose=False)
    >>> sorted(trainer.evaluate(x_test, y_test))
    ['accuracy', 'loss']

Progressive disclosure: call fit(); override train_step (and test_step) for custom logic, using
compute_loss and compute_metrics; or write your own loop around the same model.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import nn

from kaon.errors import ConfigError, InvalidInputError, KaonError
from kaon.training import _catalog, _diagnose
from kaon.training._callback_list import CallbackList, check_callbacks, check_logged
from kaon.training._data import Batches, Inputs, LoaderBatches, make_batches, split_validation, validation_pair
from kaon.training._logs import ADVERSARIAL_PREFIX, LiveLogs, LossMean
from kaon.training._progress import make_progress
from kaon.training._tracking import RunTracker, run_params, run_summary
from kaon.training._weights import final_activation, input_count, is_keras_model, last_module, parameters
from kaon.training.callbacks import Callback
from kaon.training.distributed import Backend, WorkerSync, check_backend, fit_distributed
from kaon.training.history import History
from kaon.training.losses import ClassWeighted, Loss, check_class_weight
from kaon.training.metrics import Metric
from kaon.training.privacy import (
    SPENT_ATTRIBUTE,
    SPENT_METADATA_KEY,
    DifferentialPrivacy,
    PrivateTraining,
    make_private,
    quiet_opacus,
)

Precision = Literal["fp32", "bf16", "fp16"]
_CHECK_LOSS_EVERY = 64  # steps between NaN checks; each check waits for the device once


class Trainer:
    """Fit a model on arrays, a Dataset or a DataLoader; record the run in the registry.

    `optimizer` is a name ('adam', 'adamw', 'sgd', 'rmsprop', built with `lr`), an optimizer, or a
    function params -> optimizer. `loss` is a name (see kaon.training.losses.LOSSES) or a function
    (y_pred, y) -> scalar tensor; named losses read logits, or probabilities when the model ends in a softmax or
    sigmoid (nn.Softmax / nn.Sigmoid last in an nn.Sequential, or a Keras final activation), and so do the named
    metrics. `metrics` defaults to ['accuracy'] for a classification loss. `precision` 'bf16'/'fp16' autocasts
    on CUDA (fp32 elsewhere). `seed` makes training reproducible (shuffling, dropout, privacy noise); the
    starting weights are the model's as you built it, so call torch.manual_seed(seed) before building it too.
    `track` records each fit as a Run in the registry (KAON_HOME).
    `backend='ray'` runs fit on `num_workers` Ray Train workers (DDP; `pip install 'kaon[ray]'`), on the
    cluster at `address` (HOST:PORT) or on a Ray started here; see kaon.training.distributed.
    """

    # Learned state, set by the first fit/evaluate/predict (names end in _ as in scikit-learn).
    device_: torch.device
    optimizer_: torch.optim.Optimizer
    loss_fn_: Callable[[torch.Tensor, torch.Tensor], Any]
    metrics_: list[Metric]
    logs_: LiveLogs
    # Set on each worker of a distributed fit (kaon.training.distributed): averages logs, shares decisions.
    _sync: WorkerSync | None = None
    # True while fit's validation runs with `adversarial`: test_step scores the attacked copies too (val_adv_*).
    _attacking_validation = False

    def __init__(
        self,
        model: nn.Module,
        optimizer: _catalog.OptimizerSpec = "adam",
        loss: _catalog.LossSpec = "cross_entropy",
        metrics: Sequence[_catalog.MetricSpec] | None = None,
        lr: float = 1e-3,
        device: str | None = None,
        precision: Precision = "fp32",
        seed: int | None = None,
        privacy: DifferentialPrivacy | None = None,
        run_name: str | None = None,
        track: bool = True,
        adversarial: Adversary | None = None,
        backend: Backend = "local",
        num_workers: int = 1,
        address: str | None = None,
    ) -> None:
        _check_adversary(adversarial, privacy)
        check_backend(backend, num_workers, address)
        metrics = _catalog.check_arguments(model=model, optimizer=optimizer, loss=loss, metrics=metrics, lr=lr,
                                           device=device, precision=precision, seed=seed, privacy=privacy)
        self.model = model
        self.optimizer = optimizer
        self.loss = loss
        self.metrics = list(metrics)
        self.lr = float(lr)
        self.device = device
        self.precision = precision
        self.seed = seed
        self.privacy = privacy
        self.run_name = run_name
        self.track = track
        self.adversarial = adversarial
        self.backend = backend
        self.num_workers = num_workers
        self.address = address
        self.stop_training = False  # a callback sets it to end fit after the current epoch
        self._built = False
        self.private_: PrivateTraining | None = None  # the Opacus objects while a private fit runs
        self._class_weight: dict[int, float] | None = None  # fit(class_weight=...), for this fit's training loss
        self._weighted_loss: ClassWeighted | None = None

    # ---- the steps: override these ------------------------------------------------------------

    def train_step(self, batch: Any) -> Mapping[str, float | torch.Tensor]:
        """One optimization step on `batch` ((x, y) tensors on the device); return the logs so far.

        With `adversarial`, the step trains on the batch and its attacked copy together, and logs them apart: 'loss'
        and the metrics are the clean batch's (as without it, and as val_* are), 'adv_loss' and 'adv_<metric>' the
        attacked copy's (as val_adv_* are). The loss trained on is their mean (for a loss that averages over samples).
        """
        x, y = _unpack(batch)
        if x.shape[0] == 0:  # Poisson sampling (privacy) can draw an empty batch
            return self.logs_
        num_clean: int | None = None
        if self.adversarial is not None:
            # Clean and adversarial examples side by side: keeps clean accuracy, costs one more forward pass.
            x_adv = self._attack(x, y)
            num_clean = int(x.shape[0])
            x, y = torch.cat([x, x_adv]), torch.cat([y, y])
        with self._autocast():
            y_pred = self._forward(x)
            loss = self.compute_loss(y_pred, y)
            halves = None if num_clean is None else self._half_losses(y_pred, y, num_clean)
        self.optimizer_.zero_grad(set_to_none=True)
        if self._scaler is not None:
            self._scaler.scale(loss).backward()
            self._scaler.step(self.optimizer_)
            self._scaler.update()
        else:
            loss.backward()
            self.optimizer_.step()
        if halves is None:
            return self.compute_metrics(loss, y_pred, y)
        clean_loss, adversarial_loss = halves
        self.compute_metrics(clean_loss, y_pred[:num_clean], y[:num_clean])
        return self._compute_adversarial_metrics(adversarial_loss, y_pred[num_clean:], y[num_clean:])

    def _half_losses(self, y_pred: torch.Tensor, y: torch.Tensor,
                     num_clean: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss of the clean samples and that of their attacked copies (the first `num_clean` and the rest), for
        the logs: the loss trained on, over both, would mix a clean figure with an adversarial one."""
        with torch.no_grad():
            return (self.compute_loss(y_pred[:num_clean], y[:num_clean]),
                    self.compute_loss(y_pred[num_clean:], y[num_clean:]))

    def _compute_adversarial_metrics(self, loss: torch.Tensor, y_pred: torch.Tensor,
                                     y: torch.Tensor) -> Mapping[str, torch.Tensor]:
        """compute_metrics for the attacked copies: into adv_loss and adv_<metric>."""
        assert self._adversarial_loss is not None
        self._adversarial_loss.update(loss.detach(), int(y_pred.shape[0]))
        y_pred = y_pred.detach()
        for metric in self._adversarial_metrics:
            metric.update(y_pred, y)  # the clean copy of each metric has just read outputs of this shape
        return self.logs_

    def test_step(self, batch: Any) -> Mapping[str, float | torch.Tensor]:
        """Loss and metrics on one batch, without gradients; return the logs so far.

        In fit's validation with `adversarial`, the batch's attacked copy is scored too, into val_adv_loss and
        val_adv_<metric>: attacked by the training's attack with the model as it is evaluated, in eval mode, and
        without updating it. evaluate() scores the data as given.
        """
        x, y = _unpack(batch)
        with self._autocast():
            y_pred = self._forward(x)
            loss = self.compute_loss(y_pred, y)
        logs = self.compute_metrics(loss, y_pred, y)
        if not self._attacking_validation:
            return logs
        x_adv = self._attack(x, y)
        with self._autocast():
            y_pred = self._forward(x_adv)
            loss = self.compute_loss(y_pred, y)
        return self._compute_adversarial_metrics(loss, y_pred, y)

    def _attack(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The attacked copy of `x`. Gradients are on for the attack even where the caller turned them off (the
        validation's torch.no_grad): an attack follows the loss's gradient w.r.t. the inputs."""
        assert self.adversarial is not None
        if isinstance(x, Inputs):
            raise ConfigError(f"adversarial training perturbs a model's one input. Received: {x.describe()}; "
                              "train without adversarial=, or combine the inputs into one tensor.")
        if isinstance(x, torch.Tensor) and not x.is_floating_point():  # else torch's bare 'can require gradients'
            raise ConfigError(
                "adversarial training moves each input by up to epsilon along the loss's gradient, so the input must "
                f"be floating point. Received: x of dtype {str(x.dtype).removeprefix('torch.')} (token ids or other "
                "integers have no gradient). Train without adversarial=, or perturb the embeddings in a train_step "
                "of your own.")
        with torch.enable_grad():
            return _within_data_range(self.adversarial, x).perturb(self.model, x, y, self.compute_loss)

    def compute_loss(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._loss_in_use(y_pred, y)

    def compute_metrics(self, loss: torch.Tensor, y_pred: torch.Tensor,
                        y: torch.Tensor) -> Mapping[str, torch.Tensor]:
        """Add this batch to the running loss and metrics; return the live logs (read = device sync)."""
        self._loss_mean.update(loss.detach(), int(y_pred.shape[0]))
        y_pred = y_pred.detach()
        for metric in self.metrics_:
            try:
                metric.update(y_pred, y)
            except RuntimeError as exc:  # not the model's input: the metric does not fit these outputs
                raise _diagnose.metric_error(metric.name, y_pred, y, exc) from exc
        return self.logs_

    # ---- public entry points -------------------------------------------------------------------

    def fit(self, x: Any, y: Any = None, *, epochs: int = 1, batch_size: int = 32,
            validation_data: Any = None, validation_split: float | None = None,
            class_weight: dict[int, float] | None = None, callbacks: Sequence[Callback] = (), shuffle: bool = True,
            verbose: bool | None = None, initial_epoch: int = 0) -> History:
        """Train for `epochs` passes over (x, y), a Dataset or a DataLoader; return the History.

        `validation_data` ((x, y), a Dataset or a DataLoader) is evaluated after each epoch into
        val_* values (with `adversarial`, its attacked copy into val_adv_* too); or `validation_split` (arrays
        only) holds out the last fraction of (x, y) for it, as Keras does (taken before shuffling).
        `class_weight` ({class: weight}) scales each training sample's loss by its class's weight (validation
        losses stay unweighted, as in Keras). `shuffle` applies to arrays and Datasets; a DataLoader keeps its
        own sampler.
        `verbose`: None or True prints a live bar on a terminal and a line per epoch elsewhere;
        False prints nothing. On an error the exception carries the History so far as `.history`.
        `initial_epoch` resumes a run, as in Keras: epochs initial_epoch+1 .. epochs are trained, e.g.
        `fit(x, y, epochs=10, initial_epoch=trainer.load_weights("ckpt/05.safetensors"))`.
        """
        _check_count("epochs", epochs)
        _check_count("batch_size", batch_size)
        if isinstance(initial_epoch, bool) or not isinstance(initial_epoch, int) or not 0 <= initial_epoch < epochs:
            raise ConfigError(f"initial_epoch is the number of epochs already trained, from 0 to epochs - 1 "
                              f"({epochs - 1}). Received: initial_epoch={initial_epoch!r}.")
        if initial_epoch and self.backend != "local":
            raise ConfigError(f"initial_epoch resumes local fits. Received: backend={self.backend!r}.")
        if validation_split is not None:
            if validation_data is not None:
                raise InvalidInputError(
                    "pass validation_data or validation_split, not both: validation_split holds out part of x "
                    "for validation, validation_data is a separate set.")
            x, y, validation_data = split_validation(x, y, validation_split, input_count(self.model))
        self._class_weight = None if class_weight is None else check_class_weight(class_weight)
        if self._class_weight is not None and (self.privacy is not None or self.backend != "local"):
            raise ConfigError("class_weight applies to local fits without privacy. Received: class_weight with "
                              f"privacy={self.privacy!r}, backend={self.backend!r}.")
        if self.backend != "local":
            return fit_distributed(self, x, y, epochs=epochs, batch_size=batch_size, validation_data=validation_data,
                                   callbacks=callbacks, shuffle=shuffle, verbose=verbose)
        self._build()
        self._weighted_loss = None
        if self._class_weight is not None:  # built once per fit; _train_epoch trains with it
            if not isinstance(self.loss_fn_, Loss):
                raise ConfigError(f"class_weight needs a named loss (it weighs each sample's loss), such as "
                                  f"'cross_entropy'. Received: loss={self.loss!r}.")
            self._weighted_loss = ClassWeighted(self.loss_fn_, self._class_weight)
        train = self._batches(x, y, batch_size, shuffle=shuffle, name="x")
        val = None
        if validation_data is not None:
            vx, vy = validation_pair(validation_data)
            val = self._batches(vx, vy, batch_size, shuffle=False, name="validation_data")
        check_callbacks(callbacks)
        self._check_logged(callbacks, validation=val is not None)
        private = None
        if self.privacy is not None:
            self._set_training(True)  # Opacus validates a model in training mode
            private, train = make_private(self.privacy, model=self.model, optimizer=self.optimizer_,
                                          loss_fn=self.loss_fn_, train=train, batch_size=batch_size,
                                          epochs=epochs - initial_epoch)
            self.optimizer_ = private.optimizer  # clips and noises; the plain one is back when fit ends
        self.private_ = private  # for callbacks (a checkpoint keeps the privacy spent so far)
        history = History()
        history.params = run_params(self, epochs=epochs, batch_size=batch_size, num_samples=train.num_samples)
        progress = make_progress(verbose, epochs=epochs, steps=_steps(train))
        chain = CallbackList([*callbacks, history, *([progress] if progress else [])], self)
        tracker = None
        if self.track:
            tracker = RunTracker(self.run_name or type(self.model).__name__, history.params)
            history.run_id = tracker.run_id
        self.stop_training = False
        started, error = time.perf_counter(), None
        try:
            with quiet_opacus() if private is not None else contextlib.nullcontext():
                self._run_epochs(train, val, range(initial_epoch, epochs), chain, private, history, tracker)
        except BaseException as exc:
            error = exc
            with contextlib.suppress(AttributeError):
                exc.history = history  # type: ignore[attr-defined]
            raise
        finally:
            problems = chain.close()
            self.private_ = None
            if private is not None:
                private.close()
                self.optimizer_ = private.original_optimizer
                self._loss_in_use = self.loss_fn_
            if tracker is not None:
                summary = run_summary(history, stopped_early=self.stop_training, private=private,
                                      duration_s=time.perf_counter() - started, error=error, problems=problems)
                tracker.finish(history, summary, error=error)
            if problems and error is None:
                warnings.warn("closing callbacks failed: " + "; ".join(problems), RuntimeWarning, stacklevel=2)
        return history

    def _check_logged(self, callbacks: Sequence[Callback], *, validation: bool) -> None:
        """A monitor= or path field that names no value fit will log fails now, not after the first epoch."""
        logged = self._epoch_log_names(validation=validation)
        if logged is not None:
            check_logged(callbacks, logged)

    def _epoch_log_names(self, *, validation: bool) -> list[str] | None:
        """The names of the values fit will log each epoch, before callbacks add theirs; None when a subclass's own
        steps decide them."""
        steps = ("train_step", "test_step", "compute_metrics")
        if any(getattr(type(self), step) is not getattr(Trainer, step) for step in steps):
            return None
        clean = ["loss", *(metric.name for metric in self.metrics_)]
        names = list(clean)
        if self.adversarial is not None:
            names += [f"{ADVERSARIAL_PREFIX}{name}" for name in clean]
        if validation:  # the attacked copies too, with adversarial
            names += [f"val_{name}" for name in names]
        if self.privacy is not None:
            names.append("epsilon")
        return names

    def evaluate(self, x: Any, y: Any = None, *, batch_size: int = 256) -> dict[str, float]:
        """Loss and metrics over (x, y), a Dataset or a DataLoader, in eval mode."""
        _check_count("batch_size", batch_size)
        self._build()
        return self._evaluate(self._batches(x, y, batch_size, shuffle=False, name="x"))

    def predict(self, x: Any, *, batch_size: int = 256) -> np.ndarray:
        """The model's outputs for x (arrays, a Dataset or a DataLoader of (x, ...)), as a numpy array."""
        _check_count("batch_size", batch_size)
        self._build()
        batches = self._batches(x, None, batch_size, shuffle=False, name="x")
        self._set_training(False)
        outputs = []
        with torch.no_grad():
            for step, batch in enumerate(batches):
                inputs = batch[0] if isinstance(batch, tuple | list) else batch
                try:
                    with self._autocast():
                        outputs.append(self._forward(inputs).float())
                except (RuntimeError, ValueError) as exc:
                    raise self._explain(exc, inputs, f"predict, batch {step + 1}") from exc
        return torch.cat(outputs).cpu().numpy()

    # ---- the loop ------------------------------------------------------------------------------

    def _run_epochs(self, train: Batches, val: Batches | None, epochs: range, chain: CallbackList,
                    private: PrivateTraining | None, history: History, tracker: RunTracker | None) -> None:
        logs: dict[str, float] = {}
        chain.on_train_begin({})
        for epoch in epochs:
            chain.on_epoch_begin(epoch, {})
            logs = self._average(self._train_epoch(train, epoch, chain, private), train)
            if val is not None:
                val_logs = self._evaluate(val, attack=self.adversarial is not None)
                logs.update({f"val_{k}": v for k, v in self._average(val_logs, val).items()})
            if private is not None:
                logs["epsilon"] = history.epsilon = private.epsilon()
            chain.on_epoch_end(epoch, logs)
            if tracker is not None:
                tracker.log(epoch, logs)
            if self._sync is not None:
                self._sync.share_decisions(self)
            if self.stop_training:
                break
        chain.on_train_end(logs)

    def _average(self, logs: dict[str, float], batches: Batches) -> dict[str, float]:
        """On one of several workers, the logs averaged over all of them; else the logs."""
        return logs if self._sync is None else self._sync.average(logs, batches.num_samples)

    def _train_epoch(self, batches: Batches, epoch: int, chain: CallbackList,
                     private: PrivateTraining | None) -> dict[str, float]:
        self._set_training(True)
        self._reset_logs()
        self._loss_in_use = private.loss_fn if private is not None else self.loss_fn_
        if self._weighted_loss is not None:
            self._loss_in_use = self._weighted_loss
        train_step, batch_end = self.train_step, chain.wants_batch_end
        logs: Mapping[str, Any] = self.logs_
        step = -1
        for step, batch in enumerate(batches):
            try:
                logs = train_step(batch)
            except (RuntimeError, ValueError, IndexError) as exc:
                raise self._explain(exc, batch, f"epoch {epoch + 1}, step {step + 1}") from exc
            if batch_end:
                chain.on_train_batch_end(step, logs)
            if step % _CHECK_LOSS_EVERY == _CHECK_LOSS_EVERY - 1:
                self._check_loss(epoch, None)
        if step < 0:
            raise InvalidInputError("the training data yielded no batches. Received: an empty dataset or "
                                    "DataLoader; check its length and drop_last.")
        return self._check_loss(epoch, {k: float(v) for k, v in logs.items()})

    def _evaluate(self, batches: Batches, *, attack: bool = False) -> dict[str, float]:
        """The logs over `batches` in eval mode; with `attack` (fit's validation in adversarial training), of their
        attacked copies too, as adv_*."""
        self._set_training(False)
        self._reset_logs()
        self._loss_in_use = self.loss_fn_
        logs: Mapping[str, Any] = self.logs_
        self._attacking_validation = attack
        try:
            with torch.no_grad(), self._own_random_numbers(attack):
                for step, batch in enumerate(batches):
                    try:
                        logs = self.test_step(batch)
                    except (RuntimeError, ValueError, IndexError) as exc:
                        raise self._explain(exc, batch, f"evaluation, batch {step + 1}") from exc
        finally:
            self._attacking_validation = False
        return {k: float(v) for k, v in logs.items()}

    def _own_random_numbers(self, enabled: bool) -> contextlib.AbstractContextManager[Any]:
        """torch's random state put back afterwards: an attack that draws from it (PGD's random start) in validation
        must not change what the training draws next (dropout, its own attacks), or validation data would change
        the trained weights."""
        if not enabled:
            return contextlib.nullcontext()
        if self.device_.type != "cuda":
            return torch.random.fork_rng(devices=[])
        index = self.device_.index
        return torch.random.fork_rng(devices=[index if index is not None else torch.cuda.current_device()])

    def _check_loss(self, epoch: int, logs: dict[str, float] | None) -> dict[str, float]:
        """Stop on a NaN/inf loss (clean or, in adversarial training, adversarial), naming the first bad step when
        the default step tracked it."""
        means = [self._loss_mean, *([self._adversarial_loss] if self._adversarial_loss is not None else [])]
        bad = [(step, float(mean.losses[step])) for mean in means if (step := mean.first_non_finite()) is not None]
        bad_step: int | None = None
        loss = logs.get("loss") if logs is not None else None
        if bad:
            bad_step, loss = min(bad, key=lambda found: found[0])
        if bad_step is not None or (loss is not None and not np.isfinite(loss)):
            lr = float(self.optimizer_.param_groups[0]["lr"])
            raise _diagnose.non_finite_loss(epoch, bad_step, float(loss if loss is not None else "nan"), lr)
        return logs or {}

    # ---- setup ---------------------------------------------------------------------------------

    def _build(self) -> None:
        """Resolve names into objects once, at the first fit/evaluate/predict."""
        if self._built:
            return
        model = self.model
        self._is_keras = is_keras_model(model)
        params = parameters(model)
        if not params:
            raise ConfigError(f"the model has no trainable parameters. Received: {type(model).__name__} "
                              "(for a Keras model, give it an Input so that it is built)")
        if self._is_keras:  # Keras placed its variables itself
            self.device_ = params[0].device
            self._forward_train: Callable[..., Any] = partial(model, training=True)
            self._forward_eval: Callable[..., Any] = partial(model, training=False)
        else:
            self.device_ = torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
            if self.device_.type == "cuda" and not torch.cuda.is_available():
                raise ConfigError(f"device={self.device!r} but this torch has no CUDA device. "
                                  "Received: torch.cuda.is_available()=False; pass device='cpu' or None.")
            model.to(self.device_)
            params = parameters(model)
            self._forward_train = self._forward_eval = model
        # several inputs (fit([x1, x2], y) or a dict) arrive as Inputs: model(x1, x2), or one list/dict for Keras
        self._forward_train = _taking_inputs(self._forward_train, self._is_keras)
        self._forward_eval = _taking_inputs(self._forward_eval, self._is_keras)
        self._forward: Callable[..., Any] = self._forward_train
        self._final_activation = _check_final_activation(model, self.loss)
        from_logits = self._final_activation not in ("softmax", "sigmoid")  # else the outputs are probabilities
        self._outputs_checked = False
        self.optimizer_ = _catalog.build_optimizer(self.optimizer, params, self.lr)
        self.loss_fn_ = _catalog.build_loss(self.loss, from_logits=from_logits)
        self._loss_in_use = self.loss_fn_
        self.metrics_ = _catalog.build_metrics(self.metrics, from_logits=from_logits)
        self._loss_mean = LossMean()
        self._adversarial_loss: LossMean | None = None
        self._adversarial_metrics: list[Metric] = []
        if self.adversarial is not None:  # the attacked copies' figures, apart from the clean batch's
            self._adversarial_loss = LossMean()
            self._adversarial_metrics = [copy.deepcopy(metric) for metric in self.metrics_]
        self.logs_ = LiveLogs(self._loss_mean, self.metrics_, None if self._adversarial_loss is None
                              else (self._adversarial_loss, self._adversarial_metrics))
        self._autocast_dtype = None
        self._scaler = None
        if self.precision != "fp32":
            if self.device_.type == "cuda":
                self._autocast_dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
                if self.precision == "fp16":
                    self._scaler = torch.amp.GradScaler("cuda")
            else:
                warnings.warn(f"precision={self.precision!r} applies on CUDA only; training on "
                              f"{self.device_} in fp32.", RuntimeWarning, stacklevel=3)
        self._generator = None
        if self.seed is not None:
            torch.manual_seed(self.seed)
            self._generator = torch.Generator().manual_seed(self.seed)
            if self._is_keras:
                import keras

                keras.utils.set_random_seed(self.seed)
        self._built = True

    def load_weights(self, path: str | Path) -> int:
        """Load weights saved by ModelCheckpoint (safetensors) into the model; return the epoch they were saved
        after (0 if the file does not say), for fit(..., initial_epoch=...). The optimizer's state (Adam's moments
        and step counts) comes from the `.optimizer` file ModelCheckpoint wrote with it, when there is one; the
        learning rate stays this Trainer's. The privacy a private fit spent comes from the file's metadata."""
        from safetensors import SafetensorError, safe_open

        from kaon.training._weights import (
            CHECKPOINT_ID_KEY,
            OPTIMIZER_SUFFIX,
            is_optimizer_state,
            mismatch,
            optimizer_file,
            restore,
        )

        source = Path(path)
        if not source.is_file():
            raise InvalidInputError(f"no weights file at {str(source)!r}. Pass a .safetensors file ModelCheckpoint "
                                    f"wrote, e.g. ModelCheckpoint('ckpt/{{epoch:02d}}.safetensors').")
        try:
            with safe_open(str(source), framework="pt") as handle:
                weights = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
                metadata = handle.metadata() or {}
        except (SafetensorError, OSError) as exc:
            raise InvalidInputError(f"{str(source)!r} is not a readable safetensors file ({exc}).") from exc
        if is_optimizer_state(metadata):
            weights_file = source.with_name(source.name.removesuffix(OPTIMIZER_SUFFIX))
            raise InvalidInputError(
                f"{str(source)!r} is the optimizer state file that ModelCheckpoint writes beside the weights, not "
                f"weights. Load the weights file instead: load_weights({str(weights_file)!r}) (it loads this "
                "optimizer state with them).")
        try:
            restore(self.model, weights, metadata)
        except (RuntimeError, KeyError) as exc:
            detail = mismatch(self.model, weights) or _error_text(exc)
            raise ConfigError(f"the weights in {str(source)!r} do not fit {type(self.model).__name__}: {detail}. "
                              "Build the model as it was when they were saved.") from exc
        if optimizer_file(source).is_file():
            self._load_optimizer(optimizer_file(source), metadata.get(CHECKPOINT_ID_KEY))
        if SPENT_METADATA_KEY in metadata:  # a private fit resumed from here counts what was spent before
            spent = [(float(n), float(q), int(k)) for n, q, k in json.loads(metadata[SPENT_METADATA_KEY])]
            setattr(self.model, SPENT_ATTRIBUTE, spent)
        epoch = metadata.get("epoch", "0")
        return int(epoch) if epoch.isdigit() else 0

    def _load_optimizer(self, path: Path, checkpoint_id: str | None) -> None:
        """The optimizer's state (Adam's moments, step counts) from beside a checkpoint; the learning rate stays
        this Trainer's (fine-tuning at a new one is the common reason to load weights)."""
        from safetensors import SafetensorError

        from kaon.training._weights import optimizer_from_safetensors

        self._build()
        try:
            saved, saved_id, state = optimizer_from_safetensors(path)
        except (SafetensorError, OSError, KeyError, ValueError) as exc:
            raise InvalidInputError(f"{str(path)!r} is not an optimizer state ModelCheckpoint wrote ({exc}). "
                                    "Delete it to resume with a fresh optimizer.") from exc
        if saved_id != checkpoint_id:
            warnings.warn(f"{str(path)!r} was not saved with these weights (another save left it): the optimizer "
                          "starts afresh.", RuntimeWarning, stacklevel=3)
            return
        optimizer = self.optimizer_
        if saved != type(optimizer).__name__:
            warnings.warn(f"{str(path)!r} holds the state of an optimizer of class {saved}, and this Trainer uses "
                          f"{type(optimizer).__name__}: the optimizer starts afresh.", RuntimeWarning, stacklevel=3)
            return
        rates = [group["lr"] for group in optimizer.param_groups]
        try:
            optimizer.load_state_dict(state)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise ConfigError(f"the optimizer state in {str(path)!r} does not fit this model's parameters "
                              f"({exc}). Build the model as it was when it was saved, or delete the file to "
                              "resume with a fresh optimizer.") from exc
        saved_rates = [group["lr"] for group in optimizer.param_groups]
        for group, rate in zip(optimizer.param_groups, rates, strict=True):
            group["lr"] = rate
        if saved_rates != rates:
            warnings.warn(f"the checkpoint's optimizer ran at lr={saved_rates[0]:g} (ReduceLROnPlateau may have "
                          f"lowered it); this Trainer's lr={rates[0]:g} is kept. Build the Trainer with "
                          f"lr={saved_rates[0]:g} to resume at the checkpoint's rate.", RuntimeWarning, stacklevel=3)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self._autocast_dtype)

    def _set_training(self, training: bool) -> None:
        self.model.train(training)
        self._forward = self._forward_train if training else self._forward_eval

    def _reset_logs(self) -> None:
        self._loss_mean.reset()
        if self._adversarial_loss is not None:
            self._adversarial_loss.reset()
        for metric in [*self.metrics_, *self._adversarial_metrics]:
            metric.reset()

    def _batches(self, x: Any, y: Any, batch_size: int, *, shuffle: bool, name: str) -> Batches:
        dtype = parameters(self.model)[0].dtype
        reads_indices = any(isinstance(m, nn.Embedding | nn.EmbeddingBag) for m in self.model.modules())
        batches = make_batches(x, y, batch_size=batch_size, shuffle=shuffle, device=self.device_,
                               dtype=dtype, generator=self._generator, name=name, integer_x=reads_indices,
                               input_count=input_count(self.model))
        self._probe(batches, name)
        return batches

    def _probe(self, batches: Batches, name: str) -> None:
        """Run two samples through the model first: a clear error for a wrong shape or bad labels."""
        sample = batches.sample(2)
        if sample is None or not isinstance(sample, tuple | list):
            return
        x = sample[0]
        self._set_training(False)
        try:
            with torch.no_grad(), self._autocast():
                y_pred = self._forward(x)
        except (RuntimeError, ValueError) as exc:
            raise self._explain(exc, x, f"the first batch of {name}") from exc
        if len(sample) < 2 or sample[1] is None or not isinstance(y_pred, torch.Tensor):
            return
        if not self._outputs_checked:  # once per Trainer: the first batch it is given with targets
            self._check_outputs(x, y_pred)
            self._outputs_checked = True
        loss = _catalog.loss_name(self.loss)
        labels = batches.labels()
        if labels is not None:
            _diagnose.check_targets(labels, y_pred, loss, where=f"in {'y' if name == 'x' else name}")
        elif isinstance(batches, LoaderBatches):
            def check(batch: Any, step: int) -> None:
                if isinstance(batch, tuple | list) and len(batch) > 1 and isinstance(batch[1], torch.Tensor):
                    _diagnose.check_targets(batch[1], y_pred, loss, where=f"{name} batch {step + 1}")

            batches.check = check

    def _check_outputs(self, x: Any, y_pred: torch.Tensor) -> None:
        """Outputs that are probabilities while the loss reads logits: a softmax or sigmoid the model's structure
        does not show (torch.sigmoid in forward) trains badly without an error, so say so."""
        if self._final_activation == "softmax" and y_pred.ndim == 2 and y_pred.shape[1] == 1:
            raise ConfigError(
                "the model ends in a softmax over one output, which is always 1: it cannot learn anything. "
                "Received: outputs of shape (N, 1) through a final softmax. For two classes, end in "
                "nn.Sigmoid() with loss='binary_crossentropy', or give the model 2 outputs.")
        last = last_module(self.model)
        dim = getattr(last, "dim", None) if isinstance(last, (nn.Softmax, nn.LogSoftmax)) else None
        if isinstance(dim, int) and y_pred.ndim >= 2 and dim % y_pred.ndim != 1:
            raise ConfigError(
                f"the model ends in {last!r}, which normalizes its outputs of shape {tuple(y_pred.shape)} over axis "
                f"{dim % y_pred.ndim}, not over the classes (axis 1, as the losses read them). Use dim=1, or drop "
                "it: the named losses apply the softmax themselves.")
        seen = _diagnose.probability_outputs(self.loss_fn_, y_pred)
        if seen is None:
            return
        made_by = _diagnose.final_operation(self._forward, x, autocast=self._autocast())
        if made_by is not None and made_by not in ("sigmoid", "softmax"):
            return  # logits that happen to lie in [0, 1]: the last operation is no sigmoid or softmax
        warnings.warn(_diagnose.probabilities_warning(self.loss_fn_, seen, made_by, ends_in=self._final_activation,
                                                      keras=self._is_keras), RuntimeWarning, stacklevel=5)

    def _explain(self, exc: BaseException, batch: Any, where: str) -> BaseException:
        if isinstance(exc, KaonError):
            return exc
        x = batch[0] if isinstance(batch, tuple | list) else batch
        return _diagnose.forward_error(exc, self.model, x, where=where)


def _check_final_activation(model: nn.Module, loss: _catalog.LossSpec) -> str | None:
    """The model's final activation (see final_activation), refused where the named loss cannot read its outputs."""
    activation = final_activation(model)
    last = last_module(model)
    if isinstance(last, nn.Softmax) and last.dim == 0:
        raise ConfigError(f"the model ends in {last!r}, which normalizes over the samples of a batch, not over the "
                          "classes. Use nn.Softmax(dim=-1), or drop it: the named losses apply the softmax themselves.")
    if activation in ("log_softmax", "log_sigmoid") and _catalog.loss_name(loss) == "binary_crossentropy":
        raise ConfigError(
            "binary_crossentropy reads logits or probabilities (a final sigmoid), not log-probabilities. Received: "
            f"loss='binary_crossentropy' with a model that ends in {activation}. Remove that last layer (the loss "
            "applies the sigmoid itself), or end the model in nn.Sigmoid().")
    return activation


def _error_text(exc: BaseException, limit: int = 600) -> str:
    """An exception's message on one line, without the punctuation it ends in, cut at `limit` characters (a
    KeyError's message without the quotes str() adds)."""
    raw = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
    text = " ".join(line.strip() for line in str(raw).splitlines() if line.strip())
    if len(text) > limit:
        text = text[:limit].rstrip() + " ..."
    return text.rstrip(".:; ") or type(exc).__name__


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1. Received: {name}={value!r}")


def _steps(batches: Batches) -> int | None:
    try:
        return len(batches)
    except TypeError:
        return None


def _unpack(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, tuple | list) and len(batch) >= 2 and batch[1] is not None:
        return batch[0], batch[1]
    raise InvalidInputError(
        "the default train_step and test_step need targets: batches of (x, y). Received: "
        + (f"a {type(batch).__name__} of {len(batch)}" if isinstance(batch, tuple | list) else type(batch).__name__)
        + (" with y=None" if isinstance(batch, tuple | list) and len(batch) >= 2 else "")
        + ". Pass y=..., or override train_step for training without targets."
    )


class Adversary(Protocol):
    """What `Trainer(adversarial=...)` needs, e.g. kaon.PGD(epsilon=0.1): adversarial inputs for a batch.

    fit calls it on each training batch and, with validation data, on each validation batch (the model in eval
    mode, gradients enabled): it should take gradients w.r.t. the inputs only (torch.autograd.grad, as kaon's
    attacks do), leaving the weights' gradients as they are.
    """

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor: ...


def _taking_inputs(forward: Callable[..., Any], keras: bool) -> Callable[..., Any]:
    def call(x: Any) -> Any:
        return x.call(forward, as_one_argument=keras) if isinstance(x, Inputs) else forward(x)

    return call


def _within_data_range(adversary: Adversary, x: torch.Tensor) -> Adversary:
    """The attack with its clip range widened to cover `x`: kaon's attacks clip to [0, 1] (pixels) by default,
    which on standardized data would move every input far more than epsilon (as kaon.audit does, the range is
    [min(0, x.min()), max(1, x.max())])."""
    low, high = getattr(adversary, "clip_min", None), getattr(adversary, "clip_max", None)
    if low is None or high is None or not dataclasses.is_dataclass(adversary) or x.numel() == 0:
        return adversary
    x_low, x_high = float(x.min()), float(x.max())
    if x_low >= low and x_high <= high:
        return adversary
    return dataclasses.replace(adversary, clip_min=min(low, x_low), clip_max=max(high, x_high))  # type: ignore[type-var]


def _check_adversary(adversarial: object, privacy: object) -> None:
    if adversarial is None:
        return
    if not callable(getattr(adversarial, "perturb", None)):
        raise ConfigError("adversarial must have a perturb(model, x, y, loss_fn) method, e.g. kaon.PGD(epsilon=0.1). "
                          f"Received: adversarial={adversarial!r}")
    if privacy is not None:
        raise ConfigError("adversarial training cannot be combined with privacy: Opacus would record the attack's "
                          "forward passes. Received: adversarial and privacy both set; drop one.")
