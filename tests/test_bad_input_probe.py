"""The bad-input and fault-injection probe: every case runs a command-line tool in-process on a
broken input and must be *refused*: a non-zero exit whose one-line message names the offending
file (and row or field), with every input byte-for-byte unchanged and no output that looks
complete. ``accepted`` (exit 0) and ``crashed`` (any other exception: a traceback for the user)
fail the case. ``python tests/test_bad_input_probe.py`` prints the tally for BENCHMARKS.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import pickle
import re
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@dataclasses.dataclass
class Case:
    name: str
    build: Callable[[Path], tuple[Callable[[list[str]], None], list[str]]]  # tmp -> (main, argv)
    expect: str  # regex the message must match
    outputs: tuple[str, ...] = ()  # files (relative to tmp) that must not appear


class _Hostile:
    """A pickle payload that runs a command when loaded with plain ``pickle.load``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').write('ran')",))


# ---------------------------------------------------------------------------- inputs


def _finetune_rows(n: int = 6) -> list[dict]:
    return [
        {
            "id": f"r{i}",
            "image": f"{i}.png",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat action should the robot take to `push`"},
                {"from": "gpt", "raw_actions": [0.01 * i, 0.0, 0.0, 0.0, 0.0, 0.0, float(i % 2)]},
            ],
        }
        for i in range(n)
    ]


def _vqgan(tmp: Path) -> Path:
    from flax import nnx

    from latent_pretraining.vqgan.lwm_checkpoint import save_lwm_vqgan
    from latent_pretraining.vqgan.model import VQGAN, get_vqgan_config

    cfg = get_vqgan_config("tiny")
    save_lwm_vqgan(VQGAN(cfg, rngs=nnx.Rngs(0)), tmp / "vqgan")
    (tmp / "vqgan_config.json").write_text(cfg.to_json())
    return tmp / "vqgan"


def _images(tmp: Path, n: int = 3) -> None:
    for i in range(n):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(tmp / f"{i}.png")


def _lam_export(tmp: Path) -> Path:
    from flax import nnx

    from lam.checkpoint import save_lam
    from lam.model import LatentActionModel, get_lam_config

    return save_lam(LatentActionModel(get_lam_config("tiny"), nnx.Rngs(0)), tmp / "lam")


def _frames_jsonl(tmp: Path, n: int = 4) -> Path:
    (tmp / "frames").mkdir()
    for t in range(n):
        Image.fromarray(np.full((64, 64, 3), 20 * t, np.uint8)).save(tmp / "frames" / f"{t}.png")
    path = tmp / "frames" / "frames.jsonl"
    path.write_text(
        "".join(
            json.dumps({"image": f"{t}.png", "episode_id": "e", "t": t, "instruction": "push"}) + "\n"
            for t in range(n)
        )
    )
    return path


# ---------------------------------------------------------------------------- tools


def _finetune(tmp: Path, content: bytes | list, *extra: str, out: str = "out.jsonl", csv: str = "bins.csv"):
    from data.finetune_preprocess import main

    path = tmp / "in.json"
    path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    argv = ["--input_path", str(path), "--output_filename", str(tmp / out), "--csv_filename", str(tmp / csv)]
    return main, [*argv, "--discretize_bins", "4", *extra]


def _finetune_row(mutate: Callable[[dict], None]):
    def build(tmp: Path):
        rows = _finetune_rows()
        mutate(rows[2])
        return _finetune(tmp, rows)

    return build


def _encode(tmp: Path, lines: list[bytes], *extra: str, checkpoint: Path | None = None):
    from latent_pretraining.vqgan.encode import main

    _images(tmp)
    checkpoint = checkpoint or _vqgan(tmp)
    (tmp / "rows.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))
    argv = ["encode", "--checkpoint", str(checkpoint), "--input", str(tmp / "rows.jsonl")]
    return main, [*argv, "--output", str(tmp / "out.jsonl"), "--image_root", str(tmp), *extra]


def _encode_row(line: bytes):
    return lambda tmp: _encode(tmp, [json.dumps({"image": "0.png"}).encode(), line])


def _bad_vqgan(write: Callable[[Path], None]):
    def build(tmp: Path):
        path = tmp / "bad_vqgan"
        write(path)
        return _encode(tmp, [json.dumps({"image": "0.png"}).encode()], checkpoint=path)

    return build


def _truncated_vqgan(path: Path) -> None:
    data = (_vqgan(path.parent)).read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _hostile_vqgan(path: Path) -> None:
    path.write_bytes(pickle.dumps({"params": _Hostile(path.parent / "ran.txt")}))


def _label(tmp: Path, *extra: str, source: Path | None = None):
    from lam.label import main

    lam = _lam_export(tmp)
    source = source or _frames_jsonl(tmp)
    return main, ["--lam", str(lam), "--source", "jsonl", "--path", str(source), *extra]


def _label_resumed_with_another_offset(tmp: Path):
    from lam.label import CodeLabeler

    # batches are rounded up to the 8 devices: 10 frames make two batches
    main, argv = _label(
        tmp, "--out", str(tmp / "latent.jsonl"), "--batch_size", "8", source=_frames_jsonl(tmp, 10)
    )
    real = CodeLabeler.__call__
    calls = []

    def dying(self, frames):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt("killed")
        return real(self, frames)

    CodeLabeler.__call__ = dying
    try:
        with pytest.raises(KeyboardInterrupt):
            main(argv)
    finally:
        CodeLabeler.__call__ = real
    return main, [*argv, "--offset", "2"]


def _evaluate(*argv: str):
    from sim.evaluate import main

    return lambda tmp: (main, list(argv))


def _tabletop(*argv: str):
    from data.make_tabletop import main as make_main

    def main(args: list[str]) -> None:
        saved = sys.argv
        sys.argv = ["make_tabletop", *args]
        try:
            make_main()
        finally:
            sys.argv = saved

    return lambda tmp: (main, ["--out", str(tmp / "ds"), *argv])


def _raw_action(value):
    return _finetune_row(lambda r: r["conversations"][1]["raw_actions"].__setitem__(0, value))


def _train(tmp: Path, preset: str, rows: Callable[[Path], None], edit=None, **overrides):
    """The VLA trainer's command (``run_cli``, what ``python -m latent_pretraining.train`` runs) on
    rows written by ``rows``, the line ``edit`` returns replacing the third."""
    from helpers import override

    from data.train_text_tokenizer import train as train_tokenizer
    from latent_pretraining import train as vla_train
    from latent_pretraining.configs.lapa import get_config
    from latent_pretraining.core.loop import run_cli

    corpus = ["pick up the red cube and put it on the blue ball", "push the green triangle"] * 50
    tokenizer = train_tokenizer(corpus, tmp / "tokenizer.model", vocab_size=160)
    rows(tmp / "train.jsonl")
    if edit is not None:
        lines = (tmp / "train.jsonl").read_bytes().splitlines()
        lines[2] = edit(json.loads(lines[2]))
        (tmp / "train.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    config = get_config(preset)
    settings = {
        "data.train": str(tmp / "train.jsonl"),
        "data.tokenizer": str(tokenizer),
        "data.max_length": 96,
    }
    override(config, {**settings, "run_dir": str(tmp / "run"), "batch_size": 8, **overrides})
    return (lambda argv: run_cli(vla_train.train, config)), []


def _latent_rows(path: Path) -> None:
    from helpers import write_latent_jsonl

    write_latent_jsonl(path, 16)


def _action_rows(path: Path) -> None:
    from helpers import write_instruction_action_jsonl

    write_instruction_action_jsonl(path, 16, bins=32)


def _params_file(tmp: Path, damage: Callable[[bytes], bytes]) -> str:
    """The debug model's LAPA ``params::`` file, damaged by ``damage``."""
    from flax import nnx

    from latent_pretraining.configs.lapa import get_config
    from latent_pretraining.lapa_checkpoint import save_lapa_params
    from latent_pretraining.model import VLAModel

    save_lapa_params(VLAModel(get_config("debug_latent").model, rngs=nnx.Rngs(0)), tmp / "params")
    (tmp / "params").write_bytes(damage((tmp / "params").read_bytes()))
    return f"params::{tmp / 'params'}"


def _cut_after_ln_f(data: bytes) -> bytes:
    """The records up to ``ln_f``: sorted keys put wte, vte and vision_head after it."""
    import msgpack

    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    for record in unpacker:
        if record[0] == ["transformer", "ln_f", "kernel"]:
            return data[: unpacker.tell()]
    raise AssertionError("no ln_f record")


def _flip(data: bytes, at: int = 1) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


def _latent_row(edit):
    return lambda tmp: _train(tmp, "debug_latent", _latent_rows, edit)


def _bins(tmp: Path, bins: int, dims: int = 7) -> str:
    from helpers import uniform_bins_csv

    uniform_bins_csv(tmp / "bins.csv", bins, dims)
    return str(tmp / "bins.csv")


CASES = [
    # finetune_preprocess: outputs never clobber inputs
    Case(
        "finetune: metadata default is the input (bridge.json -> bridge.csv)",
        lambda tmp: _finetune(tmp, _finetune_rows(), csv="in.csv", out="in.jsonl"),
        r"--metadata .*in.json is the same file as --input_path",
    ),
    Case(
        "finetune: --output_filename equals --csv_filename",
        lambda tmp: _finetune(tmp, _finetune_rows(), out="same", csv="same"),
        r"--csv_filename .*same is the same file as --output_filename",
        ("same",),
    ),
    Case(
        "finetune: --metadata is a directory",
        lambda tmp: (
            (tmp / "meta").mkdir(),
            _finetune(tmp, _finetune_rows(), "--metadata", str(tmp / "meta")),
        )[1],
        r"--metadata .*meta is a directory",
        ("out.jsonl", "bins.csv"),
    ),
    Case(
        "finetune: output folder missing",
        lambda tmp: _finetune(tmp, _finetune_rows(), out="no/such/out.jsonl"),
        r"--output_filename .*folder .* does not exist",
    ),
    Case(
        "finetune: input missing",
        lambda tmp: _finetune(tmp, b"[]", "--input_path", str(tmp / "x.json")),
        r"x\.json",
    ),
    Case("finetune: empty list", lambda tmp: _finetune(tmp, b"[]"), r"in.json: the array holds no rows"),
    Case(
        "finetune: an object, not a list",
        lambda tmp: _finetune(tmp, b"{}"),
        r"in.json: expected a JSON array",
    ),
    Case("finetune: cut-off JSON", lambda tmp: _finetune(tmp, b'[{"id": 1,'), r"in.json: unreadable JSON"),
    Case("finetune: not UTF-8", lambda tmp: _finetune(tmp, b'[{"id": "\xff"}]'), r"in.json: not UTF-8 text"),
    Case(
        "finetune: row is a number",
        lambda tmp: _finetune(tmp, b"[5]"),
        r"in.json: row 0 .*expected an object",
    ),
    Case(
        "finetune: row is null", lambda tmp: _finetune(tmp, b"[null]"), r"in.json: row 0 .*expected an object"
    ),
    Case(
        "finetune: row is a string",
        lambda tmp: _finetune(tmp, b'["x"]'),
        r"in.json: row 0 .*expected an object",
    ),
    Case("finetune: raw action true", _raw_action(True), r"row 2 \(id r2\): 'raw_actions' dx is True"),
    Case("finetune: raw action '0.01'", _raw_action("0.01"), r"row 2 \(id r2\): 'raw_actions' dx is '0.01'"),
    Case("finetune: raw action nested", _raw_action([0.1]), r"row 2 \(id r2\): 'raw_actions' dx is \[0.1\]"),
    Case("finetune: raw action null", _raw_action(None), r"row 2 \(id r2\): 'raw_actions' dx is None"),
    Case(
        "finetune: 6 raw actions",
        _finetune_row(lambda r: r["conversations"][1]["raw_actions"].pop()),
        r"row 2 \(id r2\): 'raw_actions' has 6 values",
    ),
    Case(
        "finetune: raw_actions not a list",
        _finetune_row(lambda r: r["conversations"][1].__setitem__("raw_actions", {"dx": 1})),
        r"row 2 \(id r2\): 'raw_actions' has dict values",
    ),
    Case(
        "finetune: gripper outside its convention",
        _finetune_row(lambda r: r["conversations"][1]["raw_actions"].__setitem__(6, 3.0)),
        r"row 2 \(id r2\): gripper 3.0 is outside",
    ),
    Case(
        "finetune: no conversations",
        _finetune_row(lambda r: r.pop("conversations")),
        r"row 2 .*'conversations'",
    ),
    Case(
        "finetune: one conversation turn",
        _finetune_row(lambda r: r["conversations"].pop()),
        r"row 2 .*a human turn and a gpt turn",
    ),
    Case(
        "finetune: image outside --image_root",
        lambda tmp: (
            _vqgan(tmp),
            _finetune(
                tmp,
                [{**r, "image": "../x.png"} for r in _finetune_rows()],
                "--vqgan_checkpoint",
                str(tmp / "vqgan"),
                "--image_root",
                str(tmp),
            ),
        )[1],
        r"row id r0: image path '../x.png' lies outside the image root",
    ),
    # vqgan encode
    Case("encode: row is a number", _encode_row(b"5"), r"rows.jsonl:2: expected a JSON object, got int"),
    Case("encode: row is null", _encode_row(b"null"), r"rows.jsonl:2: expected a JSON object, got NoneType"),
    Case("encode: not UTF-8", _encode_row(b'{"image": "\xff.png"}'), r"rows.jsonl:2: not UTF-8 text"),
    Case("encode: cut-off JSON", _encode_row(b'{"image": '), r"rows.jsonl:2: invalid JSON"),
    Case("encode: no image field", _encode_row(b'{"id": 3}'), r"rows.jsonl:2: field 'image'"),
    Case("encode: image is a number", _encode_row(b'{"image": 3}'), r"rows.jsonl:2: field 'image'"),
    Case(
        "encode: image escapes the root",
        _encode_row(b'{"image": "../0.png"}'),
        r"rows.jsonl:2: .*outside the image root",
    ),
    Case("encode: image missing", _encode_row(b'{"image": "9.png"}'), r"rows.jsonl:2: cannot read image"),
    Case(
        "encode: image not an image",
        _encode_row(b'{"image": "rows.jsonl"}'),
        r"rows.jsonl:2: cannot read image",
    ),
    Case(
        "encode: --output is the --input",
        lambda tmp: (
            lambda m, a: (
                m,
                [*a[: a.index("--output") + 1], str(tmp / "rows.jsonl"), *a[a.index("--output") + 2 :]],
            )
        )(*_encode(tmp, [b'{"image": "0.png"}'])),
        r"--output .*rows.jsonl is the same file as --input",
    ),
    Case(
        "encode: leftover partial without its record",
        lambda tmp: (
            (tmp / "out.jsonl.partial").write_text('{"image": "x"}\n'),
            _encode(tmp, [b'{"image": "0.png"}']),
        )[1],
        r"out.jsonl.partial has no record of what produced it",
        ("out.jsonl",),
    ),
    Case("encode: checkpoint missing", _bad_vqgan(lambda p: None), r"bad_vqgan"),
    Case("encode: checkpoint truncated", _bad_vqgan(_truncated_vqgan), r"bad_vqgan"),
    Case(
        "encode: checkpoint of random bytes",
        _bad_vqgan(lambda p: p.write_bytes(b"\x80\x04junk" * 9)),
        r"bad_vqgan",
    ),
    Case("encode: checkpoint that runs code", _bad_vqgan(_hostile_vqgan), r"bad_vqgan", ("ran.txt",)),
    Case(
        "encode: checkpoint is a list",
        _bad_vqgan(lambda p: p.write_bytes(pickle.dumps([1, 2]))),
        r"bad_vqgan",
    ),
    # lam.label
    Case(
        "label: resumed with another --offset",
        _label_resumed_with_another_offset,
        r"latent.jsonl.partial was written by another run \(.*offset: 1 -> 2",
        ("latent.jsonl",),
    ),
    Case(
        "label: --out is the source",
        lambda tmp: (lambda m, a: (m, [*a, "--out", a[a.index("--path") + 1]]))(*_label(tmp)),
        r"--out .*frames.jsonl is the same file as --path",
    ),
    Case(
        "label: --lam missing",
        lambda tmp: (
            _label(tmp)[0],
            [
                "--lam",
                str(tmp / "nolam"),
                "--source",
                "jsonl",
                "--path",
                str(tmp),
                "--out",
                str(tmp / "o.jsonl"),
            ],
        ),
        r"nolam",
    ),
    Case(
        "label: a frame row escapes the dataset",
        lambda tmp: (
            lambda path: (
                path.write_text('{"image": "../../etc/x.png"}\n'),
                _label(tmp, "--out", str(tmp / "o.jsonl"), source=path),
            )[1]
        )(_frames_jsonl(tmp)),
        r"frames.jsonl:1: image path '../../etc/x.png' lies outside",
    ),
    Case(
        "label: --shard 2/2",
        lambda tmp: (lambda m, a: (m, [*a, "--out", str(tmp / "o.jsonl"), "--shard", "2/2"]))(*_label(tmp)),
        r"--shard '2/2'",
    ),
    # the VLA trainer
    Case(
        "train: latent code 3.7",
        _latent_row(lambda r: json.dumps({**r, "delta": [3.7, 1, 2, 3]}).encode()),
        r"train.jsonl:3: field 'delta': ids must be integers, got 3.7",
    ),
    Case(
        "train: latent code true",
        _latent_row(lambda r: json.dumps({**r, "delta": [True, 1, 2, 3]}).encode()),
        r"train.jsonl:3: field 'delta': ids must be integers, got True",
    ),
    Case(
        "train: vision id 8193",
        _latent_row(lambda r: json.dumps({**r, "vision": [8193] * len(r["vision"])}).encode()),
        r"train.jsonl:3: field 'vision': id 8193 is not an image code",
    ),
    Case("train: row is a number", _latent_row(lambda r: b"5"), r"train.jsonl:3: expected a JSON object"),
    Case("train: row is null", _latent_row(lambda r: b"null"), r"train.jsonl:3: expected a JSON object"),
    Case("train: not UTF-8", _latent_row(lambda r: b'{"fields": "\xff"}'), r"train.jsonl:3: not UTF-8 text"),
    Case(
        "train: action id the bins cannot decode",
        lambda tmp: _train(tmp, "debug_finetune", _action_rows, **{"data.action_bins": _bins(tmp, 16)}),
        r"train.jsonl:\d+: field 'action': dimension \d has id \d+ but its bins are 0..15",
    ),
    Case(
        "train: bins CSV with 6 rows for 7-D actions",
        lambda tmp: _train(tmp, "debug_finetune", _action_rows, **{"data.action_bins": _bins(tmp, 32, 6)}),
        r"bins.csv: 6 rows of bin edges, but actions have 7 dimensions",
    ),
    Case(
        "train: --config.init names a missing run",
        lambda tmp: _train(tmp, "debug_latent", _latent_rows, init=str(tmp / "no_run")),
        r"no_run/checkpoints does not exist",
        ("no_run",),
    ),
    Case(
        "train: init from a params:: file cut after ln_f",
        lambda tmp: _train(tmp, "debug_latent", _latent_rows, init=_params_file(tmp, _cut_after_ln_f)),
        r"params: missing .*transformer/wte/embedding",
    ),
    Case(
        "train: init from a params:: file with a flipped header byte",
        lambda tmp: _train(tmp, "debug_latent", _latent_rows, init=_params_file(tmp, _flip)),
        r"params: record 0",
    ),
    Case(
        "train: tokenizer missing",
        lambda tmp: _train(tmp, "debug_latent", _latent_rows, **{"data.tokenizer": str(tmp / "none.model")}),
        r"none.model does not exist",
    ),
    # sim.evaluate and make_tabletop
    Case("evaluate: --episodes 0", _evaluate("--episodes", "0"), r"--episodes must be >= 1"),
    Case("evaluate: unknown task", _evaluate("--tasks", "fly"), r"--tasks 'fly'"),
    Case("make_tabletop: --episodes 0", _tabletop("--episodes", "0"), r"--episodes must be >= 1", ("ds",)),
    Case("make_tabletop: unknown format", _tabletop("--formats", "mp4"), r"unknown formats", ("ds",)),
]


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def probe(case: Case, tmp: Path) -> tuple[str, str]:
    """Runs one case: ``(outcome, message)`` with outcome refused / accepted / crashed."""
    main, argv = case.build(tmp)
    before = _hashes(tmp)
    stderr = io.StringIO()  # argparse's usage errors go there
    try:
        with contextlib.redirect_stderr(stderr):
            main(argv)
    except SystemExit as e:
        if e.code in (0, None):
            return "accepted", "exit 0"
        message = e.code if isinstance(e.code, str) else stderr.getvalue()
    except Exception as e:  # a traceback for the user
        return "crashed", f"{type(e).__name__}: {e}"
    else:
        return "accepted", "exit 0"
    after = _hashes(tmp)
    changed = [name for name, digest in before.items() if after.get(name) != digest]
    if changed:
        return "crashed", f"refused but changed inputs {changed}: {message}"
    appeared = [name for name in case.outputs if (tmp / name).exists()]
    if appeared:
        return "crashed", f"refused but wrote {appeared}: {message}"
    return "refused", message.strip().splitlines()[-1] if message.strip() else ""


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_with_a_message_naming_it(case, tmp_path):
    outcome, message = probe(case, tmp_path)
    assert outcome == "refused", message
    assert re.search(case.expect, message), message


if __name__ == "__main__":  # the tally: python tests/test_bad_input_probe.py
    import os
    import tempfile

    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout, not an installed copy
    tally: dict[str, int] = {}
    for case in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            outcome, message = probe(case, Path(tmp))
        if outcome == "refused" and not re.search(case.expect, message):
            outcome = "refused, wrong message"
        tally[outcome] = tally.get(outcome, 0) + 1
        print(f"{outcome:<10} {case.name}: {message[:150]}")
    print(json.dumps({"cases": len(CASES), **tally}))
