"""latent_pretraining.core: outputs written together, resumable partials, paths kept under a root."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import latent_pretraining.core.files as files
from latent_pretraining.core.files import OutputPathError, resolve_under, stale_siblings, write_together
from latent_pretraining.core.partial import PartialJsonl, PartialMismatchError


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def _writer(text: str):
    return lambda path: path.write_text(text)


def test_write_together_rolls_back_new_outputs_too(tmp_path, monkeypatch):
    (tmp_path / "a").write_text("old a")  # b has no previous version
    real, calls = os.replace, []

    def failing(src, dst):
        calls.append(dst)
        if len(calls) == 3:  # a is replaced, b placed; the move of c fails
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(files.os, "replace", failing)
    with pytest.raises(OSError, match="No space"):
        write_together([(tmp_path / n, _writer(f"new {n}")) for n in ("a", "b", "c")])
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # b removed again, no temp files
    assert (tmp_path / "a").read_text() == "old a"


def test_write_together_refuses_one_file_under_two_names(tmp_path):
    (tmp_path / "a").write_text("keep")
    (tmp_path / "link").symlink_to(tmp_path / "a")
    for names in (("a", "a"), ("a", "link")):
        with pytest.raises(OutputPathError, match="two outputs name the same file"):
            write_together([(tmp_path / n, _writer("x")) for n in names])
    assert (tmp_path / "a").read_text() == "keep" and (tmp_path / "link").is_symlink()


def test_write_together_recovers_what_a_killed_run_moved_aside(tmp_path):
    dead = _dead_pid()
    (tmp_path / f".a.old-{dead}").write_text("previous a")  # killed between its two renames
    (tmp_path / f".a.tmp-{dead}").write_text("half")
    (tmp_path / f".a.old-{os.getpid()}").write_text("a live run's")  # not ours to touch
    assert stale_siblings(tmp_path / "a", "old") == [tmp_path / f".a.old-{dead}"]
    with pytest.raises(RuntimeError, match="writer fails"):
        write_together([(tmp_path / "a", lambda p: (_ for _ in ()).throw(RuntimeError("writer fails")))])
    assert (tmp_path / "a").read_text() == "previous a"  # put back before anything else happened
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".a.old-{os.getpid()}", "a"]


@pytest.mark.parametrize(
    "root,path,explicit,expected",
    [
        ("/data", "x/1.png", True, "/data/x/1.png"),
        ("/data", "x/../1.png", True, "/data/1.png"),
        ("/data", "../etc/passwd", True, None),
        ("/data", "/etc/passwd", True, None),  # an explicit root holds absolute paths too
        ("/data", "/data/x.png", True, "/data/x.png"),
        ("/data", "/etc/passwd", False, "/etc/passwd"),  # an implicit root only confines relative paths
        ("/data", "../x.png", False, None),
        ("/", "etc/x.png", True, "/etc/x.png"),
        ("/data", "/data2/x.png", True, None),  # a sibling with the root as a prefix is outside
    ],
)
def test_resolve_under(root, path, explicit, expected):
    if expected is None:
        with pytest.raises(ValueError, match="lies outside the image root"):
            resolve_under(path, Path(root), "row 1", explicit_root=explicit)
    else:
        assert resolve_under(path, Path(root), "row 1", explicit_root=explicit) == Path(expected)


def _partial(tmp_path, **provenance) -> PartialJsonl:
    return PartialJsonl(tmp_path / "out.jsonl", {"input": "a", **provenance})


def test_partial_resumes_at_its_record_and_drops_a_cut_line(tmp_path):
    with _partial(tmp_path) as part:
        part.append(['{"row": 0}\n', '{"row": 1}\n'], position=2)
    with open(tmp_path / "out.jsonl.partial", "a") as f:
        f.write('{"row": 2')  # written after the last record
    part = _partial(tmp_path)
    assert part.position == 2
    part.append(['{"row": 2}\n'], position=3)
    part.finish()
    assert (tmp_path / "out.jsonl").read_text() == '{"row": 0}\n{"row": 1}\n{"row": 2}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_partial_record_without_its_partial_is_stale(tmp_path):
    """A kill after ``finish`` renamed the partial (or before anything was written) leaves only
    the record; the next run starts afresh instead of refusing."""
    (tmp_path / "out.jsonl.partial.json").write_text(json.dumps({"version": 1, "bytes": 40, "position": 3}))
    part = _partial(tmp_path)
    assert part.position == 0
    part.close()


def test_partial_refusals_name_the_differences_briefly(tmp_path):
    with _partial(tmp_path, options={"offset": 1, "episodes": ["e"] * 1000}) as part:
        part.append(['{"row": 0}\n'], position=1)
    with pytest.raises(PartialMismatchError) as error:
        _partial(tmp_path, options={"offset": 2, "episodes": ["e"] * 1001})
    message = str(error.value)
    assert "options.offset: 1 -> 2" in message and "options.episodes: ['e', " in message
    assert len(message) < 600
    (tmp_path / "out.jsonl.partial").write_text("")  # shorter than its record says
    with pytest.raises(PartialMismatchError, match="records 11 bytes but the partial holds 0"):
        _partial(tmp_path, options={"offset": 1, "episodes": ["e"] * 1000})
