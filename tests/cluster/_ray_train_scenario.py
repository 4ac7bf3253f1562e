"""Run inside `unshare --net --pid --fork --mount-proc` by test_ray_train.py: `Trainer(backend="ray",
num_workers=2)` on the digits, with the Ray that kaon starts for the fit (its own network namespace keeps
it on 127.0.0.1; its own PID namespace ends every Ray process with this script).

Prints one line `RESULT {json}` for the test to check. Usage: python _ray_train_scenario.py EPOCHS
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time


def main() -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    os.environ["KAON_HOME"] = tempfile.mkdtemp(prefix="kaon-home-")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    epochs = int(sys.argv[1])
    import torch

    from kaon.registry import Registry
    from kaon.training import Trainer
    from kaon.training.data import load_digits
    from kaon.training.models import DigitsCNN

    x_train, y_train, x_test, y_test = load_digits()
    torch.manual_seed(0)
    model = DigitsCNN()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    trainer = Trainer(model, lr=3e-3, seed=0, run_name="digits-ray", backend="ray", num_workers=2)
    started = time.perf_counter()
    history = trainer.fit(x_train, y_train, epochs=epochs, validation_data=(x_test, y_test))
    result: dict = {"fit_s": round(time.perf_counter() - started, 2)}
    result["weights_changed"] = any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    result["accuracy"] = trainer.evaluate(x_test, y_test)["accuracy"]
    result["history"] = history.history
    result["epoch"] = history.epoch
    result["params"] = {k: history.params[k] for k in ("backend", "num_workers", "batch_size", "num_samples")}
    with Registry() as registry:
        run = registry.get_run(history.run_id)
        result["run"] = {"status": run.status, "name": run.name,
                         "logged_epochs": [step for step, _ in registry.metric_history(run.id)["loss"]]}
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
