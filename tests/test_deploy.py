"""The policy server: its codecs, request checks and batcher as pure functions, then one server
process over real sockets: OpenVLA-style REST requests (json_numpy, encoded, base64 PNG, paths under
--image_root, the full form), openpi-style websocket frames, refused requests, and 32 concurrent
requests that each get the answer the policy gives them alone."""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time

import jax
import json_numpy
import msgpack
import numpy as np
import pytest
import requests
from bundles import write_action_bundle
from conftest import REPO_ROOT
from PIL import Image
from websockets.exceptions import ConnectionClosedError
from websockets.sync.client import connect

from latent_pretraining.actions.spec import ACTION_NAMES, ACTION_UNITS
from latent_pretraining.core.sharding import make_mesh
from latent_pretraining.deploy import codecs
from latent_pretraining.deploy.batching import Answer, Batcher, batch_sizes
from latent_pretraining.deploy.protocol import RequestError, action, frame, parse_query
from latent_pretraining.policy.policy import Act, Policy

TASK = "push the cube"
TASKS = (TASK, "pick up the red cube and put it on the blue ball", "go left", "push the green triangle")
MAX_BODY = 1_000_000


def _image(seed: int, shape=(64, 64, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _payload(seed: int, task: str = TASK, **fields) -> dict:
    return {"image": _image(seed), "instruction": task, **fields}


def _png(image: np.ndarray, format: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format=format)
    return out.getvalue()


# openpi-client's msgpack_numpy, as its WebsocketClientPolicy packs and unpacks frames
def _openpi_pack(value) -> bytes:
    def default(obj):
        if isinstance(obj, np.ndarray):
            return {
                b"__ndarray__": True,
                b"data": obj.tobytes(),
                b"dtype": obj.dtype.str,
                b"shape": obj.shape,
            }
        return obj

    return msgpack.packb(value, default=default)


def _openpi_unpack(data: bytes):
    def hook(obj):
        if b"__ndarray__" in obj:
            return np.ndarray(buffer=obj[b"data"], dtype=np.dtype(obj[b"dtype"]), shape=obj[b"shape"])
        return obj

    return msgpack.unpackb(data, object_hook=hook)


# -- codecs ------------------------------------------------------------------------------------
def test_json_numpy_arrays_round_trip_and_malformed_ones_are_refused():
    image = _image(0, (5, 7, 3))
    decoded = codecs.loads_json(json_numpy.dumps({"image": image, "instruction": TASK}))
    assert decoded["instruction"] == TASK and decoded["image"].dtype == np.uint8
    np.testing.assert_array_equal(decoded["image"], image)
    actions = np.linspace(-1, 1, 7)
    np.testing.assert_array_equal(json_numpy.loads(codecs.dumps_json(actions)), actions)

    good = json.loads(json_numpy.dumps(image))
    for change, message in [
        ({"__numpy__": "not base64!"}, "not base64"),
        ({"dtype": "|O"}, "not a number type"),
        ({"dtype": "no such dtype"}, "not a number type"),
        ({"shape": [5, 7, 4]}, r"105 bytes do not fill shape \[5, 7, 4\]"),
        ({"shape": "5x7x3"}, "not a list of sizes"),
    ]:
        with pytest.raises(ValueError, match=message):
            codecs.loads_json(json.dumps({**good, **change}))
    with pytest.raises(ValueError, match="nested too deeply"):
        codecs.loads_json("[" * 100_000 + "]" * 100_000)


def test_base64_images_are_told_from_paths_and_decoded():
    image = _image(1, (6, 9, 3))
    png = _png(image)
    assert codecs.image_bytes(base64.b64encode(png).decode()) == png
    assert codecs.image_bytes("data:image/png;base64," + base64.b64encode(png).decode()) == png
    for path in ("images/frame.png", "/abs/frame.jpg", "aGVsbG8="):  # the last: base64 of "hello"
        assert codecs.image_bytes(path) is None
    with pytest.raises(ValueError, match="no valid base64"):
        codecs.image_bytes("data:image/png;base64,@@@")

    np.testing.assert_array_equal(codecs.decode_image(png), image)  # PNG is lossless
    assert codecs.decode_image(_png(image, "JPEG")).shape == (6, 9, 3)
    assert codecs.decode_image(_png(image[..., 0])).shape == (6, 9)  # greyscale stays [H, W]
    for data in (png[:40], b"\x89PNG\r\n\x1a\n garbage", _png(image, "GIF")):
        with pytest.raises(ValueError, match="not a readable PNG or JPEG"):
            codecs.decode_image(data)


def test_msgpack_frames_match_openpi_client():
    observation = {"observation/image": _image(2, (4, 4, 3)), "prompt": TASK, "state": np.arange(3.0)}
    decoded = codecs.unpack_frame(_openpi_pack(observation))
    assert decoded["prompt"] == TASK
    np.testing.assert_array_equal(decoded["observation/image"], observation["observation/image"])
    np.testing.assert_array_equal(decoded["state"], observation["state"])
    reply = _openpi_unpack(
        codecs.pack_frame({"actions": np.ones((1, 7)), "server_timing": {"infer_ms": 1.5}})
    )
    assert reply["actions"].shape == (1, 7) and reply["actions"].dtype == np.float64
    assert reply["server_timing"] == {"infer_ms": 1.5}
    assert codecs.unpack_frame(codecs.pack_frame({"x": np.float32(2.5)})) == {"x": 2.5}

    bad_array = {b"__ndarray__": True, b"data": b"\x00" * 8, b"dtype": "|O", b"shape": (1,)}
    for data, message in [
        (b"\xc1", "not a msgpack-numpy frame"),
        (msgpack.packb({"image": bad_array}), "not a number type"),
        (msgpack.packb({"image": {**bad_array, b"dtype": "<f4", b"shape": (3,)}}), "8 bytes do not fill"),
    ]:
        with pytest.raises(ValueError, match=message):
            codecs.unpack_frame(data)


# -- requests and answers ------------------------------------------------------------------------
def test_queries_name_what_is_wrong(tmp_path):
    image = _image(3)
    query = parse_query({"observation": {"image": image[..., :1]}, "prompt": TASK, "return": "full"}, None)
    assert query.image.shape == (64, 64, 3) and query.instruction == TASK and query.form == "full"
    assert parse_query({"observation/image": image, "instruction": TASK}, None).form == "action"
    for payload, status, message in [
        ([1, 2], 400, "expected a JSON object"),
        ({"image": image}, 400, "missing 'instruction'"),
        ({"image": image, "instruction": "  "}, 400, "instruction: expected a task description"),
        ({"instruction": TASK}, 400, "missing 'image'"),
        ({"image": image, "instruction": TASK, "return": "all"}, 400, "'return' is 'all'"),
        ({"image": image.astype(np.int64), "instruction": TASK}, 400, "expected uint8 pixels, got int64"),
        ({"image": image[None], "instruction": TASK}, 400, r"got \(1, 64, 64, 3\)"),
        ({"image": image[..., :2], "instruction": TASK}, 400, r"got \(64, 64, 2\)"),
        ({"image": [[1, 2]], "instruction": TASK}, 400, "got list"),
        ({"image": "frame.png", "instruction": TASK}, 400, "without --image_root"),
    ]:
        with pytest.raises(RequestError, match=message) as caught:
            parse_query(payload, None)
        assert caught.value.status == status

    root, outside = tmp_path / "root", tmp_path / "outside.png"
    root.mkdir()
    outside.write_bytes(_png(image))
    (root / "frame.png").write_bytes(_png(image))
    (root / "escape.png").symlink_to(outside)
    for path in ("frame.png", str(root / "frame.png")):
        np.testing.assert_array_equal(parse_query({"image": path, "instruction": TASK}, root).image, image)
    for path, status in (("../outside.png", 403), (str(outside), 403), ("escape.png", 403), ("no.png", 404)):
        with pytest.raises(RequestError) as caught:
            parse_query({"image": path, "instruction": TASK}, root)
        assert caught.value.status == status, path


def test_a_latent_only_policy_never_answers_a_made_up_action():
    latent = Answer(None, np.array([1, 2, 3, 4]), None, {"generation": 0.1, "queue": 0.0}, 1)
    with pytest.raises(RequestError, match="latent codes only") as caught:
        action(latent)
    assert caught.value.status == 409
    with pytest.raises(RequestError, match="latent codes only"):
        frame(latent, "action", 0.2)
    reply = frame(latent, "full", 0.2)
    assert "actions" not in reply and reply["latent"].tolist() == [[1, 2, 3, 4]]
    assert reply["server_timing"] == {"infer_ms": 200.0, "generation_ms": 100.0, "queue_ms": 0.0}


# -- batching --------------------------------------------------------------------------------------
class FakePolicy:
    """``Policy.act`` in miniature: the action is the image's first pixel and the instruction's length;
    an instruction "bad" fails its whole batch."""

    def __init__(self):
        self.calls: list[int] = []

    def act(self, images, instructions):
        self.calls.append(len(images))
        if "bad" in instructions:
            raise ValueError("bad instruction")
        actions = np.array(
            [[im[0, 0, 0], len(task)] + [0] * 5 for im, task in zip(images, instructions, strict=True)]
        )
        return Act(actions.astype(float), None, actions.astype(int), {"generation": 0.01})


def test_batch_sizes():
    assert batch_sizes(1) == (1,) and batch_sizes(8) == (1, 2, 4, 8) and batch_sizes(6) == (1, 2, 4, 6)
    with pytest.raises(ValueError):
        batch_sizes(0)


def test_batcher_pads_to_compiled_sizes_splits_answers_and_isolates_failures():
    fake = FakePolicy()
    batcher = Batcher(fake.act, max_batch=4, wait_s=0.2)
    ready = concurrent.futures.Future()
    batcher.start(np.zeros((2, 2, 3), np.uint8), "warm up", ready.set_result)
    assert ready.result(timeout=5) is None and batcher.ready.is_set()
    assert fake.calls == [1, 2, 4]  # the warm-up, at every batch size
    fake.calls.clear()
    jobs = [(np.full((2, 2, 3), i, np.uint8), "x" * (i + 1)) for i in range(3)]
    futures = [batcher.submit(*job) for job in jobs]
    answers = [f.result(timeout=5) for f in futures]
    assert fake.calls == [4]  # three requests in one call, padded to 4
    for i, answer in enumerate(answers):
        assert answer.actions[:2].tolist() == [i, i + 1] and answer.batch == 3
        assert answer.timing["generation"] == 0.01 and answer.timing["queue"] >= 0

    fake.calls.clear()
    good, bad = batcher.submit(jobs[0][0], "fine"), batcher.submit(jobs[1][0], "bad")
    assert good.result(timeout=5).actions[1] == 4
    with pytest.raises(ValueError, match="bad instruction"):
        bad.result(timeout=5)
    assert fake.calls == [2, 1, 1]  # the batch failed, then each request ran alone

    # a failure after the policy's answer (here: splitting it into rows) fails that batch only
    batcher.act = lambda images, tasks: Act(np.zeros((0, 7)), None, None, {})
    with pytest.raises(IndexError):
        batcher.submit(jobs[0][0], "fine").result(timeout=5)
    batcher.act = fake.act
    assert batcher.submit(jobs[0][0], "fine").result(timeout=5).actions[1] == 4  # the worker lives on
    batcher.close()


# -- the server ------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory, sp_model):
    return write_action_bundle(tmp_path_factory.mktemp("deploy"), sp_model)[0].directory


@pytest.fixture(scope="module")
def server(bundle_dir):
    """One server process for the module: its URL, image root, log and the /healthz codes it gave."""
    port, root = _free_port(), bundle_dir.parent / "images"
    root.mkdir()
    (bundle_dir.parent / "outside.png").write_bytes(_png(_image(9)))
    (root / "escape.png").symlink_to(bundle_dir.parent / "outside.png")
    log = bundle_dir.parent / "server.log"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu"}
    command = [sys.executable, "-m", "latent_pretraining.deploy", "--policy", str(bundle_dir)]
    command += ["--port", str(port), "--image_root", str(root), "--max_body_bytes", str(MAX_BODY)]
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url, codes, early, deadline = f"http://127.0.0.1:{port}", [], None, time.monotonic() + 120
    try:
        while not codes or codes[-1] != 200:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the server did not come up:\n{log.read_text()}")
            with contextlib.suppress(requests.ConnectionError):
                codes.append(requests.get(f"{url}/healthz", timeout=5).status_code)
                if codes[-1] == 503 and early is None:  # an /act while it warms up
                    early = requests.post(f"{url}/act", data=json_numpy.dumps(_payload(0)), timeout=5)
            time.sleep(0.1)
        yield {"url": url, "port": port, "root": root, "log": log, "codes": codes, "early": early}
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def reference(bundle_dir):
    """The in-process answer (``Policy.act`` for one request) to an image and instruction."""
    policy = Policy.from_pretrained(bundle_dir, mesh=make_mesh("1,1,1,1", devices=jax.devices()[:1]))
    cache = {}

    def act(seed: int, task: str = TASK) -> Act:
        if (seed, task) not in cache:
            cache[seed, task] = policy.act([_image(seed)], [task])
        return cache[seed, task]

    assert np.array_equal(act(0).actions, policy.sample_action([_image(0)], [TASK]))
    return act


def _act(server, body, **kwargs) -> requests.Response:
    return requests.post(f"{server['url']}/act", data=body, timeout=60, **kwargs)


def test_the_server_warms_up_before_it_is_healthy(server):
    assert server["codes"][0] == 503 and server["codes"][-1] == 200
    assert server["early"].status_code == 503 and "warming up" in server["early"].json()["error"]
    assert f"serving {server['root'].parent / 'policy'} on {server['url']}" in server["log"].read_text()


def test_rest_answers_as_openvla_and_equals_the_policy(server, reference):
    payload = _payload(0)
    expected = reference(0).actions[0]
    answer = json_numpy.loads(_act(server, json_numpy.dumps(payload)).text)
    assert answer.shape == (7,) and answer.dtype == np.float64 and np.isfinite(answer).all()
    np.testing.assert_array_equal(answer, expected)

    encoded = requests.post(f"{server['url']}/act", json={"encoded": json_numpy.dumps(payload)}, timeout=60)
    assert isinstance(encoded.json(), str)  # the answer, json_numpy text in a JSON string
    np.testing.assert_array_equal(json_numpy.loads(encoded.json()), expected)

    png = {"image": base64.b64encode(_png(_image(0))).decode(), "instruction": TASK}
    np.testing.assert_array_equal(json_numpy.loads(_act(server, json.dumps(png)).text), expected)


def test_the_full_form(server, reference):
    payload = _payload(1, TASKS[1], **{"return": "full"})
    answer = _act(server, json_numpy.dumps(payload)).json()
    expected = reference(1, TASKS[1])
    assert answer["action"] == expected.actions[0].tolist()
    assert answer["action_tokens"] == expected.action_tokens[0].tolist() and answer["latent"] is None
    assert answer["action_names"] == list(ACTION_NAMES) and answer["units"] == list(ACTION_UNITS)
    timing = answer["timing"]
    assert set(timing) == {"preprocess", "image_tokenizer", "generation", "queue", "total"}
    assert all(v >= 0 for v in timing.values()) and timing["total"] >= timing["generation"]


def test_image_paths_only_under_the_image_root(server, reference):
    (server["root"] / "frame.png").write_bytes(_png(_image(0)))
    for path in ("frame.png", str(server["root"] / "frame.png")):
        answer = _act(server, json.dumps({"image": path, "instruction": TASK}))
        np.testing.assert_array_equal(json_numpy.loads(answer.text), reference(0).actions[0])
    for path in ("../outside.png", str(server["root"].parent / "outside.png"), "escape.png"):
        refused = _act(server, json.dumps({"image": path, "instruction": TASK}))
        assert refused.status_code == 403 and "outside the image root" in refused.json()["error"]


@pytest.mark.parametrize(
    "body,status,message",
    [
        (b"{not json", 400, "not JSON"),
        (json.dumps({"encoded": 3}), 400, "'encoded' must be a string"),
        (json_numpy.dumps({"image": _image(0)}), 400, "missing 'instruction'"),
        (json_numpy.dumps({"image": _image(0), "instruction": ""}), 400, "expected a task description"),
        (json.dumps({"instruction": TASK}), 400, "missing 'image'"),
        (json_numpy.dumps({"image": np.zeros((8, 8, 3), np.float32), "instruction": TASK}), 400, "uint8"),
        (json_numpy.dumps({"image": np.zeros((8, 8), np.uint16), "instruction": TASK}), 400, "uint8"),
        (json_numpy.dumps({"image": np.zeros((2, 8, 8, 3), np.uint8), "instruction": TASK}), 400, "got"),
        (
            json.dumps({"image": {"__numpy__": "@@", "dtype": "|u1", "shape": [1]}, "instruction": TASK}),
            400,
            "base64",
        ),
        (
            json.dumps({"image": base64.b64encode(b"\x89PNG\r\n\x1a\nxx").decode(), "instruction": TASK}),
            400,
            "PNG",
        ),
        (json.dumps({"image": "no/such.png", "instruction": TASK}), 404, "no file"),
        (b"x" * (MAX_BODY + 1), 413, "longer than 1000000 bytes"),
    ],
)
def test_bad_requests_are_answered_and_the_server_keeps_serving(server, body, status, message):
    answer = _act(server, body)
    assert answer.status_code == status and message in answer.json()["error"]
    assert requests.get(f"{server['url']}/healthz", timeout=5).status_code == 200


def test_metadata_reset_and_unknown_routes(server, bundle_dir):
    meta = requests.get(f"{server['url']}/metadata", timeout=5).json()
    assert meta["action"]["names"] == list(ACTION_NAMES) and meta["action"]["gripper_convention"] == "01"
    assert meta["image"] == {"resolution": 64, "mode": "center_crop"} and meta["provenance"]["step"] == 7
    assert meta["bins"]["edges"][-1] == [-0.5, 0.5, 1.5] and meta["model"]["action_vocab_size"] == 64
    assert meta["batching"]["batch_sizes"] == [1, 2, 4, 8]
    assert requests.post(f"{server['url']}/reset", timeout=5).json()["reset"] is True
    wrong = requests.get(f"{server['url']}/act", timeout=5)
    assert wrong.status_code == 405 and "error" in wrong.json()


def test_websocket_speaks_openpi(server, reference):
    with connect(f"ws://127.0.0.1:{server['port']}", compression=None, max_size=None) as ws:
        meta = _openpi_unpack(ws.recv())  # openpi's client reads the metadata first
        assert meta["action"]["names"] == list(ACTION_NAMES)
        for observation in (
            {"observation/image": _image(0), "prompt": TASK},
            {"observation": {"image": _image(0)}, "prompt": TASK},
        ):
            ws.send(_openpi_pack(observation))
            reply = _openpi_unpack(ws.recv())
            assert reply["actions"].shape == (1, 7) and reply["server_timing"]["infer_ms"] > 0
            np.testing.assert_array_equal(reply["actions"][0], reference(0).actions[0])

    with connect(f"ws://127.0.0.1:{server['port']}", compression=None, max_size=None) as ws:
        ws.recv()
        ws.send(_openpi_pack({"observation/image": _image(0).astype(np.float32), "prompt": TASK}))
        problem = ws.recv()
        assert isinstance(problem, str) and "expected uint8 pixels, got float32" in problem
        with pytest.raises(ConnectionClosedError) as closed:
            ws.recv()
        assert closed.value.rcvd.code == 1011  # openpi's server closes after the error frame
    assert requests.get(f"{server['url']}/healthz", timeout=5).status_code == 200


def test_concurrent_requests_are_batched_and_each_equals_its_own_answer(server, reference):
    distinct = [(0, TASKS[0]), (1, TASKS[0]), (3, TASKS[3]), (4, TASKS[2])]
    assert len({tuple(reference(*case).action_tokens[0]) for case in distinct}) >= 3  # a mix-up shows
    cases = distinct * 8

    def post(case):
        payload = _payload(*case, **{"return": "full"})
        return _act(server, json_numpy.dumps(payload)).json()

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(post, cases))
    for (seed, task), answer in zip(cases, answers, strict=True):
        assert answer["action"] == reference(seed, task).actions[0].tolist()
    assert max(a["batch"] for a in answers) > 1  # some requests shared a model call


def test_the_client_and_the_evaluator_get_the_policys_answers_through_the_server(server, bundle_dir, capsys):
    from latent_pretraining.deploy.client import ServerError, ServerPolicy, wait_until_ready
    from latent_pretraining.deploy.client import main as client_main
    from latent_pretraining.evaluate import BundlePolicy, run_all
    from latent_pretraining.policy.inputs import BUILT_IN_FRAME, BUILT_IN_INSTRUCTION
    from sim.env import EnvConfig, TabletopEnv

    policy = Policy.from_pretrained(bundle_dir, mesh=make_mesh("1,1,1,1", devices=jax.devices()[:1]))
    client_main(["--url", server["url"]])
    printed = json.loads(capsys.readouterr().out)
    frame = np.asarray(Image.open(BUILT_IN_FRAME).convert("RGB"))
    expected = policy.sample_action([frame], [BUILT_IN_INSTRUCTION])[0]
    assert printed["instruction"] == BUILT_IN_INSTRUCTION and list(printed["action"]) == list(ACTION_NAMES)
    np.testing.assert_array_equal(list(printed["action"].values()), expected)
    assert wait_until_ready(server["url"], 0)["action"]["names"] == list(ACTION_NAMES)
    with pytest.raises(ServerError, match=r"answered 400: .*instruction"):
        ServerPolicy(server["url"]).act(frame, " ")
    with pytest.raises(SystemExit, match="did not answer 200 within 0 s"):
        client_main(["--url", f"http://127.0.0.1:{_free_port()}"])

    env = TabletopEnv(EnvConfig(max_steps=6))
    both = {"remote": ServerPolicy(server["url"]), "local": BundlePolicy(policy)}
    results = run_all(both, env, 1, ("push",), 0, None, 0)["policies"]
    assert results["remote"]["overall"] == results["local"]["overall"]
    assert results["remote"]["overall"]["mean_length"] > 0
