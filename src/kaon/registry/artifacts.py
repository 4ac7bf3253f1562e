"""Content-addressed artifact files: `<root>/<sha256>`, written durably, checked on every read.

A file is copied to a temp name in the store, fsynced, renamed to its sha256, and the folder is
fsynced, so a crash leaves either no file or the whole file under its hash, never half of one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from kaon._internal.files import atomic_copy, sha256_file
from kaon.errors import IntegrityError, InvalidInputError, NotFoundError

_SHA256 = re.compile(r"[0-9a-f]{64}")
_FILENAME_PART = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}")


def check_filename(value: object, what: str = "file name") -> str:
    """A relative POSIX path such as 'model.onnx' or 'tokenizer/vocab.json', safe to write under a folder."""
    parts = value.split("/") if isinstance(value, str) and len(value) <= 255 else []
    if not parts or not all(_FILENAME_PART.fullmatch(part) for part in parts):
        raise InvalidInputError(
            f"{what} must be a relative path of at most 255 characters, of parts made of A-Z a-z 0-9 . _ - "
            f"(not starting with '.'), such as 'model.onnx' or 'tokenizer/vocab.json'. Received: {value!r}."
        )
    return str(value)


def check_source_file(path: object, what: str = "file") -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidInputError(f"{what} must be a path to a file. Received: {path!r}")
    source = Path(path)
    if not source.is_file():
        raise NotFoundError(
            f"{what} {str(source)!r} does not exist or is not a regular file. "
            "Check the path (relative paths are resolved from the current folder)."
        )
    return source


class ArtifactStore:
    """Files kept under their sha256 in `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def store(self, path: Path) -> str:
        """Copy `path` into the store durably and return its sha256 (storing twice is harmless).

        An intact copy already in the store is kept (nothing written); a missing or damaged one
        is (re)written: temp file, fsync, rename, fsync of the folder.
        """
        source = check_source_file(path)
        sha256 = sha256_file(source)
        target = self.root / sha256
        if target.is_file() and sha256_file(target) == sha256:
            return sha256
        written = atomic_copy(source, target)
        if written != sha256:
            target.unlink(missing_ok=True)
            raise IntegrityError(
                f"{source} changed while it was being stored (sha256 {sha256} before, {written} after). "
                "Store it again once nothing is writing to it."
            )
        return sha256

    def path(self, sha256: str) -> Path:
        """The stored file for `sha256`, after checking that its content still has that hash."""
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
            raise InvalidInputError(
                f"an artifact is named by its sha256: 64 lowercase hex characters. Received: {sha256!r}"
            )
        stored = self.root / sha256
        if not stored.is_file():
            raise NotFoundError(
                f"artifact {sha256} is missing from {self.root}: it was never stored here, or was deleted. "
                "Fix: register the model version again from its original files, or store the file again."
            )
        actual = sha256_file(stored)
        if actual != sha256:
            raise IntegrityError(
                f"artifact {stored} is corrupt: expected sha256 {sha256}, found {actual}. The file was "
                "changed or damaged after it was stored. Fix: register the model version again from its "
                "original files (that stores a good copy), or delete the file and store it again."
            )
        return stored

    def materialize(self, files: dict[str, str], folder: Path) -> Path:
        """Make `folder` hold exactly `files` (filename -> sha256), copying only what is missing or wrong."""
        folder.mkdir(parents=True, exist_ok=True)
        for filename, sha256 in files.items():
            target = folder / check_filename(filename)
            if target.is_file() and sha256_file(target) == sha256:
                continue
            written = atomic_copy(self.path(sha256), target)
            if written != sha256:  # the stored file changed between the check and the copy
                target.unlink(missing_ok=True)
                raise IntegrityError(
                    f"artifact {self.root / sha256} changed while it was copied to {target}: expected "
                    f"sha256 {sha256}, copied {written}. Fix: register the model version again."
                )
        expected = {Path(name) for name in files}
        for existing in folder.rglob("*"):
            # Leave other processes' in-flight temp files (".name.xyz.tmp") alone.
            stray = existing.is_file() and existing.relative_to(folder) not in expected
            if stray and not existing.name.startswith("."):
                existing.unlink(missing_ok=True)
        return folder

