"""A child for the crash test: writes to the registry forever, printing one line after each commit.

    python _crash_worker.py TAG      # KAON_HOME from the environment
"""

from __future__ import annotations

import hashlib
import sys

from kaon.config import kaon_home
from kaon.registry import Registry


def main(tag: str) -> None:
    registry = Registry()
    print("ready", flush=True)
    for index in range(1_000_000):
        run = registry.create_run(f"crash-{tag}-{index}", params={"index": index})
        print(f"run {run.id}", flush=True)
        registry.log_metrics(run.id, {"loss": 1.0 / (index + 1), "lr": 0.1}, step=index)
        print(f"metric {run.id} {index}", flush=True)
        weights = kaon_home() / "sources" / f"{tag}-{index}.bin"
        weights.parent.mkdir(parents=True, exist_ok=True)
        weights.write_bytes(f"weights {tag} {index} ".encode() * 2000)
        record = registry.register_version("crashy", {"model.bin": weights, "reference.npz": weights},
                                           framework="torch", run_id=run.id)
        print(f"version {record.version} {record.files['model.bin']}", flush=True)
        name = f"tok-{tag}-{index}"
        token_id = hashlib.sha256(name.encode()).hexdigest()[:12]
        registry.tokens.create(name, token_id=token_id, secret_hash="scrypt$1$1$1$x$y", scopes=("predict",))
        print(f"token {name}", flush=True)
        registry.set_alias("crashy", "production", record.version)
        print(f"alias {record.version}", flush=True)
        if index % 2:
            registry.tokens.revoke(name)
            print(f"revoked {name}", flush=True)
        registry.finish_run(run.id)
        print(f"finished {run.id}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
