"""Arrays read from a user's .npy / .npz file: plain arrays only, and one clear error for a file numpy cannot read."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from kaon.errors import InvalidInputError


def load_arrays(path: Path, what: str) -> Any:
    """`np.load(path)` of a .npy (an array) or .npz (a dict of arrays, read now), pickles refused. `what` names the
    file in the error, e.g. "the --input file"."""
    try:
        with open(path, "rb"):
            pass
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                return {key: loaded[key] for key in loaded.files}
        return loaded
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InvalidInputError(
            f"{what} {str(path)!r} is not a readable {path.suffix or 'numpy'} file of plain arrays ({exc}). "
            f"Write one with numpy.save(path, x), or numpy.savez(path, x=inputs, y=labels)."
        ) from exc
