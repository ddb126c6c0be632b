"""Output files (or directories) that never clobber an input and appear all together or not at all."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


class OutputPathError(ValueError):
    """An output path that would overwrite an input, another output or a directory."""


def check_output_paths(inputs: Mapping[str, Path | None], outputs: Mapping[str, Path]) -> None:
    """Refuses, before anything is read, outputs that equal an input or each other (resolved,
    symlinks followed), outputs that are directories, and outputs whose folder is missing.
    Keys are the flag names that the messages use."""
    seen: dict[Path, str] = {}
    for name, path in inputs.items():
        if path is not None:
            seen.setdefault(Path(path).resolve(), name)
    for name, path in outputs.items():
        real = Path(path).resolve()
        if real in seen:
            raise OutputPathError(f"{name} {path} is the same file as {seen[real]}; choose another path")
        if real.is_dir():
            raise OutputPathError(f"{name} {path} is a directory; it must name a file")
        if not real.parent.is_dir():
            raise OutputPathError(f"{name} {path}: folder {real.parent} does not exist")
        seen[real] = name


def write_together(files: Sequence[tuple[Path, Callable[[Path], None]]]) -> None:
    """Writes every ``(path, writer)`` to a temporary file, then moves them all into place.
    A writer may make a directory at the path it is given: it is moved and replaced whole.

    A failure at any point (a writer, a rename) leaves every previous output as it was and
    removes the temporary files: the outputs are replaced all together or not at all."""
    real = [Path(path).resolve() for path, _ in files]
    if len(set(real)) != len(real):
        raise OutputPathError(f"two outputs name the same file: {[str(p) for p, _ in files]}")
    for path, _ in files:
        _recover(path)
    pid = os.getpid()
    temps = [path.with_name(f".{path.name}.tmp-{pid}") for path, _ in files]
    backups = [path.with_name(f".{path.name}.old-{pid}") for path, _ in files]
    moved: list[int] = []  # outputs already renamed to their backup
    placed: list[int] = []  # temps already renamed to their output
    try:
        for tmp, (_, writer) in zip(temps, files, strict=True):
            writer(tmp)
        for i, (path, _) in enumerate(files):
            if path.exists():
                os.replace(path, backups[i])
                moved.append(i)
            os.replace(temps[i], path)
            placed.append(i)
    except BaseException:
        for i in placed:
            remove(Path(files[i][0]))
        for i in moved:
            os.replace(backups[i], files[i][0])
        for tmp in temps:
            remove(tmp)
        raise
    for i in moved:
        remove(backups[i])


def remove(path: Path) -> None:
    """Deletes a file or a whole directory if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _recover(path: Path) -> None:
    """Undoes what a killed ``write_together`` left beside ``path``: its temporary copies go,
    and a previous output it had moved aside comes back if ``path`` is missing."""
    for tmp in stale_siblings(path, "tmp"):
        remove(tmp)
    for old in stale_siblings(path, "old"):
        if path.exists():
            remove(old)
        else:
            os.replace(old, path)


def resolve_under(
    path_text: str, root: Path | None, where: str, explicit_root: bool = True, within: Path | None = None
) -> Path:
    """The file a data row names: relative paths join ``root`` and may not leave ``within``
    (default ``root``) by ``..``; with an ``explicit_root`` (``--image_root``) absolute paths
    must lie inside it too. Symlinks inside the root are followed."""
    path = Path(path_text)
    if root is None:
        return path
    base = Path(os.path.abspath(root))
    fence = base if within is None else Path(os.path.abspath(within))
    if path.is_absolute() and not explicit_root:
        return path
    joined = Path(os.path.normpath(base / path))
    if joined != fence and fence not in joined.parents:
        raise ValueError(f"{where}: image path {path_text!r} lies outside the image root {fence}")
    return joined


def stale_siblings(path: Path, tag: str) -> list[Path]:
    """Leftovers ``.<name>.<tag>-<pid>`` beside ``path`` whose process is gone (a killed run's
    temporary or backup copies; a live process's are left alone)."""
    out = []
    for sibling in Path(path).parent.glob(f".{Path(path).name}.{tag}-*"):
        pid = sibling.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            out.append(sibling)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
