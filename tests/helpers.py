"""Small builders shared by the tests."""

from __future__ import annotations

import numpy as np
from flax import nnx

from latent_pretraining.config import get_model_config
from latent_pretraining.model import Modality, VLAModel


def debug_config(**overrides):
    cfg = get_model_config("debug")
    cfg.vision_vocab_size = 96  # keep the debug heads small on CPU
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def debug_model(seed: int = 0, **overrides) -> VLAModel:
    return VLAModel(debug_config(**overrides), rngs=nnx.Rngs(seed))


def mixed_batch(
    batch: int, seed: int = 0, text: int = 6, vision: int = 8, latent: int = 4, action: int = 7, cfg=None
):
    """Rows laid out as [BOS text vision text latent action EOS] with in-range ids per modality."""
    cfg = cfg or debug_config()
    rng = np.random.default_rng(seed)
    spans = [
        (Modality.TEXT, 1 + text, cfg.text_vocab_size),
        (Modality.VISION, vision, cfg.vision_vocab_size),
        (Modality.TEXT, 2, cfg.text_vocab_size),
        (Modality.LATENT, latent, cfg.latent_vocab_size),
        (Modality.ACTION, action, cfg.action_vocab_size),
        (Modality.TEXT, 1, cfg.text_vocab_size),
    ]
    ids, modality = [], []
    for mod, n, vocab in spans:
        ids.append(rng.integers(3, vocab, size=(batch, n)))
        modality.append(np.full((batch, n), int(mod)))
    ids = np.concatenate(ids, axis=1).astype(np.int32)
    ids[:, 0] = cfg.bos_token_id
    ids[:, -1] = cfg.eos_token_id
    return ids, np.concatenate(modality, axis=1).astype(np.int32)


def lapa_modality(fixture, prefix: str) -> np.ndarray:
    """The modality array of a LAPA fixture input, from its ``<prefix>_{vision,delta,action}_masks.npy``."""
    modality = np.zeros(np.load(fixture / f"{prefix}_input_ids.npy").shape, np.int32)
    for lapa_name, mod in (
        ("vision", Modality.VISION),
        ("delta", Modality.LATENT),
        ("action", Modality.ACTION),
    ):
        path = fixture / f"{prefix}_{lapa_name}_masks.npy"
        if path.exists():
            modality = np.where(np.load(path), int(mod), modality)
    return modality


INSTRUCTION = (
    "<s> You are a helpful assistant. USER: What action should the robot take to `push the cube` ASSISTANT:"
)


def write_latent_jsonl(path, n: int, seed: int = 0, tokens_per_frame: int = 16) -> None:
    """Latent-pretraining rows whose 4 codes are read off image-token positions (learnable)."""
    import json

    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for i in range(n):
            vision = rng.integers(0, 8, tokens_per_frame)
            delta = [str(int(x)) for x in vision[[1, 6, 11, 12]]]
            f.write(
                json.dumps(
                    {
                        "image": f"frame_{i}.png",
                        "vision": vision.tolist(),
                        "instruction": INSTRUCTION,
                        "delta": delta,
                        "fields": "[instruction],[vision],delta",
                    }
                )
                + "\n"
            )


def write_instruction_action_jsonl(path, n: int, seed: int = 0, bins: int = 32) -> None:
    """Finetune rows without images: each of four instructions has its own action bins."""
    import json

    tasks = ["pick up the red cube", "push the green triangle", "put it on the blue ball", "to the left"]
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for i in range(n):
            k = int(rng.integers(len(tasks)))
            action = [(k * 7 + d * 3) % bins for d in range(7)]
            raw = [(a + 0.5) / bins for a in action]
            f.write(
                json.dumps(
                    {
                        "id": i,
                        "instruction": tasks[k],
                        "action": action,
                        "raw_actions": raw,
                        "fields": "[instruction],action",
                    }
                )
                + "\n"
            )


def uniform_bins_csv(path, bins: int = 32, dims: int = 7) -> None:
    edges = np.linspace(0.0, 1.0, bins + 1)
    lines = [",".join(str(i) for i in range(bins + 1))] + [",".join(repr(float(e)) for e in edges)] * dims
    path.write_text("\n".join(lines) + "\n")


def override(config, overrides: dict):
    """Sets dotted ``--config.a.b=value``-style overrides on a ConfigDict; returns it."""
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return config


def run_killed_at_step(monkeypatch, step: int, run) -> None:
    """Runs ``run()`` with the data stream raising KeyboardInterrupt when step ``step`` asks for
    its batch (a kill mid-run), then restores the stream."""
    import pytest

    from latent_pretraining.core.batches import BatchStream

    original = BatchStream.__next__
    calls = {"n": 0}

    def dies(self):
        calls["n"] += 1
        if calls["n"] == step:
            raise KeyboardInterrupt("killed")
        return original(self)

    monkeypatch.setattr(BatchStream, "__next__", dies)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(BatchStream, "__next__", original)


class ReadKeys:
    """Records which fields of a ConfigDict (and its nested blocks) are read while it is active;
    whole-config walks (``to_dict``, ``to_json``, ``items``, ``values``, ``repr``) do not count."""

    WALKS = (
        "to_dict",
        "to_json",
        "to_json_best_effort",
        "items",
        "values",
        "iteritems",
        "__repr__",
        "__str__",
    )

    def __init__(self, config):
        self.paths: dict[int, str] = {}  # id of each block -> its dotted prefix
        self.leaves: set[str] = set()  # every leaf field, dotted
        self.read: set[str] = set()
        self._walking = 0
        self._alive: list = []
        self._index(config, "")

    def _index(self, config, prefix: str, copy: bool = False) -> None:
        """Maps ``config`` and its blocks to their prefixes; a ``copy`` (a FrozenConfigDict made
        from an indexed block) adds no leaves, only the reads made through it."""
        import ml_collections

        self.paths[id(config)] = prefix
        self._alive.append(config)  # keeps ids from being reused by other objects
        for key, value in config._fields.items():
            if isinstance(value, ml_collections.ConfigDict):
                self._index(value, f"{prefix}{key}.", copy)
            elif not copy:
                self.leaves.add(prefix + key)

    def unread(self) -> set[str]:
        return self.leaves - self.read

    def __enter__(self):
        import ml_collections

        cls = ml_collections.ConfigDict
        self._saved = {name: getattr(cls, name) for name in ("__getitem__", *self.WALKS)}
        original_get = self._saved["__getitem__"]

        def getitem(config, key):
            prefix = self.paths.get(id(config))
            if prefix is not None and not self._walking and isinstance(key, str) and "." not in key:
                self.read.add(prefix + key)
            return original_get(config, key)

        def walking(method):
            def walk(config, *args, **kwargs):
                self._walking += 1
                try:
                    return method(config, *args, **kwargs)
                finally:
                    self._walking -= 1

            return walk

        frozen_init = ml_collections.FrozenConfigDict.__init__

        def freeze(frozen, initial_dictionary=None, **kwargs):
            walking(frozen_init)(frozen, initial_dictionary, **kwargs)
            if id(initial_dictionary) in self.paths:  # the model freezes its block: follow the copy
                self._index(frozen, self.paths[id(initial_dictionary)], copy=True)

        cls.__getitem__ = getitem
        for name in self.WALKS:
            setattr(cls, name, walking(self._saved[name]))
        ml_collections.FrozenConfigDict.__init__ = freeze
        self._frozen_init = frozen_init
        return self

    def __exit__(self, *exc) -> None:
        import ml_collections

        for name, method in self._saved.items():
            setattr(ml_collections.ConfigDict, name, method)
        ml_collections.FrozenConfigDict.__init__ = self._frozen_init


RECORDED_ONLY = {"preset"}  # fields a run keeps in its config.json for the record, never reads


def run_reading_every_field(config, run, unread_here: dict[str, str]):
    """``run()``, asserting that it reads every field of ``config`` except ``unread_here`` (field ->
    why this run leaves it unread), and that each of those is indeed unread."""
    with ReadKeys(config) as keys:
        result = run()
    never = sorted(keys.unread() - set(unread_here) - RECORDED_ONLY)
    assert not never, f"fields this run never read: {never}"
    listed = sorted(set(unread_here) - keys.unread())
    assert not listed, f"fields listed as unread that this run read: {listed}"
    return result
