"""Saves that are whole or absent: a folder is written under a temporary name, flushed to disk, then
renamed into place, so a process killed half-way leaves the previous version (or nothing), never a mix.

A folder saved with a manifest (``manifest.json``: every file's size and sha256, written last) can be
checked when it is loaded: :func:`verify_manifest` names the first file that is missing, truncated or
altered. Replacing an existing folder takes two renames (POSIX renames a folder over an empty one only):
the old version becomes ``NAME.prev`` for an instant, so a reader that finds no ``NAME`` looks for
``NAME.prev`` (:func:`complete_versions`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from textenv.errors import CheckpointError

MANIFEST = "manifest.json"
PREVIOUS_SUFFIX = ".prev"


def _fsync(path: Path) -> None:
    """Flush a file or a folder entry to disk (folders where the platform allows it)."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # some platforms cannot open a folder
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root``, and ``root`` itself."""
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync(Path(folder) / name)
        _fsync(Path(folder))


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Replace the file ``path`` by ``text`` atomically: a temporary file, fsync, rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent)


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    write_text(path, json.dumps(data, indent=1, default=str))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path) -> None:
    """List every file under ``folder`` with its size and sha256 in ``folder/manifest.json``."""
    files = {
        path.relative_to(folder).as_posix(): {"bytes": path.stat().st_size, "sha256": sha256(path)}
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }
    (folder / MANIFEST).write_text(json.dumps({"files": files}, indent=1), encoding="utf-8")


def verify_manifest(folder: str | os.PathLike[str], *, hashes: bool = True) -> dict[str, Any]:
    """Check ``folder`` against its manifest (every file's size, and its sha256 unless ``hashes=False``);
    returns the manifest.

    Raises:
        CheckpointError: naming the manifest when it is missing or unreadable, or the first file that is
            missing or whose size or sha256 differs.
    """
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(
            f"{manifest_path} is missing: {folder} is not a complete save (it was interrupted, or made by "
            "an older version)"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{manifest_path} is damaged: {error}") from None
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing from the save in {folder}")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise CheckpointError(
                f"{path} has {size} bytes, the manifest says {entry['bytes']}: it is truncated"
            )
        if hashes and sha256(path) != entry["sha256"]:
            raise CheckpointError(f"{path} does not match its sha256 in {manifest_path}: it was altered")
    return dict(manifest)


def _is_replaceable(target: Path, marker: str) -> bool:
    return not target.exists() or (
        target.is_dir() and (not any(target.iterdir()) or (target / marker).exists())
    )


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike[str], *, marker: str, manifest: bool = True) -> Iterator[Path]:
    """Write a folder that appears whole at ``target`` or not at all.

    Yields a temporary sibling to write into; when the block ends without an error the files are listed in
    a manifest (``manifest=True``), flushed to disk, and the folder is renamed to ``target``, replacing an
    earlier save there. An error (or a kill) leaves ``target`` as it was; an error also removes the
    temporary folder. ``marker`` is a file every save of this kind has: a non-empty ``target`` without it
    is not overwritten (``FileExistsError``), so a wrong path cannot delete someone's folder.
    """
    target = Path(target)
    if not _is_replaceable(target, marker):
        raise FileExistsError(
            f"{target} exists and is not a save of this kind (it has no {marker}); not replacing it"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        if manifest:
            write_manifest(tmp)
        fsync_tree(tmp)
        previous = target.with_name(target.name + PREVIOUS_SUFFIX)
        if target.exists():
            if previous.exists():
                shutil.rmtree(previous)
            os.rename(target, previous)
        os.rename(tmp, target)
        _fsync(target.parent)
        if previous.exists():
            shutil.rmtree(previous)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def complete_versions(target: str | os.PathLike[str]) -> tuple[list[Path], list[CheckpointError]]:
    """The saves of ``target`` that are complete: ``target`` and, if a replacement was interrupted between
    its two renames, ``target.prev``; with the errors of those that are not. Complete means a manifest and
    every file in it at its size; the hashes are left to the loader, which checks them anyway."""
    target = Path(target)
    good: list[Path] = []
    errors: list[CheckpointError] = []
    for candidate in (target, target.with_name(target.name + PREVIOUS_SUFFIX)):
        if not candidate.exists():
            continue
        try:
            verify_manifest(candidate, hashes=False)
        except CheckpointError as error:
            errors.append(error)
        else:
            good.append(candidate)
    return good, errors
