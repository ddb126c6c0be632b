"""Resumable JSONL outputs: ``<out>.partial`` plus a manifest of what produced it.

The manifest (``<out>.partial.json``) records the run's provenance (input files with size
and mtime, checkpoint, options) and, after every appended batch, how many bytes of the
partial are complete and how far into the input they reach. A rerun resumes at that input
position only when its provenance is identical; otherwise it is refused with the fields
that differ (or, when asked to restart, the partial is discarded). The output appears
under its own name only when complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from latent_pretraining.core.trees import flatten

MANIFEST_VERSION = 1


class PartialMismatchError(ValueError):
    """A leftover partial output that another input, model or option set produced."""


def fingerprint(path: str | os.PathLike | None) -> dict[str, Any] | None:
    """Identity of a file or directory for provenance: resolved path, size and mtime (for a
    directory, of every file under it)."""
    if path is None or str(path) == "":
        return None
    real = Path(path).resolve()
    if real.is_dir():
        files = sorted(p for p in real.rglob("*") if p.is_file())
        return {
            "path": str(real),
            "files": {str(p.relative_to(real)): [p.stat().st_size, p.stat().st_mtime_ns] for p in files},
        }
    if not real.exists():
        return {"path": str(real), "missing": True}
    stat = real.stat()
    return {"path": str(real), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every differing leaf (dotted keys), each value cut to 120 characters."""
    before, after = flatten(old), flatten(new)
    short = lambda value: text if len(text := repr(value)) <= 120 else text[:117] + "..."  # noqa: E731
    return [
        f"{key}: {short(before.get(key))} -> {short(after.get(key))}"
        for key in sorted(before.keys() | after.keys())
        if before.get(key) != after.get(key)
    ]


def paths(out: Path) -> dict[str, Path]:
    """The files a resumable output ``out`` uses besides itself, by what they are."""
    return {
        "partial": out.with_name(out.name + ".partial"),
        "record": out.with_name(out.name + ".partial.json"),
    }


class PartialJsonl:
    """Appends finished lines to ``<out>.partial`` and records, atomically, how far they go.

    ``provenance`` is a JSON-able dict; ``restart`` discards any leftover partial instead of
    resuming it (or refusing one whose provenance differs)."""

    def __init__(self, out: Path, provenance: dict[str, Any], restart: bool = False):
        self.out = Path(out)
        self.path, self.manifest_path = paths(self.out)["partial"], paths(self.out)["record"]
        self.provenance = json.loads(json.dumps(provenance))  # as it will read back
        self.position, self.extra = 0, {}
        if restart:
            self.path.unlink(missing_ok=True)
            manifest = None
        else:
            manifest = self._read_manifest()
        if manifest is not None and manifest.get("provenance") != self.provenance:
            diff = _differences(manifest.get("provenance") or {}, self.provenance)
            raise PartialMismatchError(
                f"{self.path} was written by another run ({'; '.join(diff[:6])}); it is kept. "
                "Rerun with the same inputs and options to resume it, or with --restart to discard it"
            )
        self._bytes = 0
        if manifest is not None:
            self._bytes = int(manifest["bytes"])
            self.position = int(manifest["position"])
            self.extra = dict(manifest.get("extra", {}))
            with open(self.path, "r+b") as f:  # drop whatever a killed run wrote past the record
                f.truncate(self._bytes)
        self._write_manifest()  # before the partial exists: a partial is never without its record
        self._file = open(self.path, "ab")  # noqa: SIM115 (held across appends; closed by finish/close)

    def _read_manifest(self) -> dict[str, Any] | None:
        if self.manifest_path.exists() and not self.path.exists():
            # a run killed after finishing (or before writing anything): nothing to resume
            self.manifest_path.unlink()
            return None
        if not self.manifest_path.exists():
            if self.path.exists():
                raise PartialMismatchError(
                    f"{self.path} has no record of what produced it ({self.manifest_path.name} is "
                    "missing); it is kept. Rerun with --restart to discard it"
                )
            return None
        try:
            manifest = json.loads(self.manifest_path.read_text())
            if manifest.get("version") != MANIFEST_VERSION:
                raise ValueError(f"version {manifest.get('version')!r}, expected {MANIFEST_VERSION}")
            size = self.path.stat().st_size
            if int(manifest["bytes"]) > size:
                raise ValueError(f"records {manifest['bytes']} bytes but the partial holds {size}")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise PartialMismatchError(
                f"{self.manifest_path}: unreadable resume record ({e}); rerun with --restart to discard "
                f"{self.path}"
            ) from None
        return manifest

    def _write_manifest(self) -> None:
        record = {
            "version": MANIFEST_VERSION,
            "provenance": self.provenance,
            "bytes": self._bytes,
            "position": self.position,
            "extra": self.extra,
        }
        tmp = self.manifest_path.with_name(self.manifest_path.name + ".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.manifest_path)

    def append(self, lines: Iterable[str], position: int, **extra: Any) -> None:
        """Appends ``lines`` (each ending in a newline), then records that the input is done
        up to ``position`` (and any ``extra`` bookkeeping, e.g. skipped rows)."""
        data = "".join(lines).encode()
        self._file.write(data)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._bytes += len(data)
        self.position = position
        self.extra.update(extra)
        self._write_manifest()

    def finish(self) -> None:
        """Moves the complete partial to its final name and removes the manifest."""
        self._file.close()
        os.replace(self.path, self.out)
        self.manifest_path.unlink(missing_ok=True)

    def close(self) -> None:
        """Closes the partial, leaving it and its manifest for a resume."""
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> PartialJsonl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
