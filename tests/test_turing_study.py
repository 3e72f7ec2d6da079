"""Visual Turing test (issue 29): study creation, the server's contract and security, the answer log, scoring."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from meddiff.cli.main import main
from meddiff.errors import MeddiffError
from meddiff.tasks.turing import create_study, load_manifest, make_app, rater_order, write_score
from meddiff.tasks.turing.answers import append_answer, read_answers
from meddiff.tasks.turing.server import serve_study

pytest.importorskip("flask", reason="the turing-test server needs the package flask (pip install flask)")


def _real(path, n=12, shape=(24, 24), seed=0):
    rng = np.random.default_rng(seed)
    np.savez(path, images=rng.integers(0, 256, (n, *shape), dtype=np.uint8))
    return path


def _synthetic(folder, n=12, shape=(24, 24), seed=1):
    """A `meddiff sample`-style folder in model space [-1, 1]."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    np.save(folder / "samples.npy", rng.uniform(-1, 1, (n, 1, *shape)).astype(np.float32))
    (folder / "manifest.json").write_text(json.dumps({"files": {"samples": "samples.npy"},
                                                      "intensity_range": "model [-1, 1]"}))
    return folder


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("turing")
    create_study(_real(root / "real.npz"), _synthetic(root / "synth"), root / "study", n=10, seed=3)
    return root / "study"


def test_create_draws_a_balanced_blinded_set(study):
    manifest = load_manifest(study)
    kinds = [item["kind"] for item in manifest["items"]]
    assert sorted(kinds) == ["real"] * 5 + ["synthetic"] * 5
    files = sorted(p.name for p in (study / "images").iterdir())
    assert files == sorted(f"{item['id']}.png" for item in manifest["items"])
    for item in manifest["items"]:  # opaque ids: nothing of the kind, source or index in the name
        assert all(word not in item["id"] for word in ("real", "synth", item["name"]))
        image = Image.open(study / "images" / f"{item['id']}.png")
        assert image.size == (24, 24) and image.mode == "L" and not image.info.get("text") and not image.text
    assert sorted(p.name for p in study.iterdir()) == ["images", "index.html", "manifest.json"]
    # same seed, same draw; the per-rater order is stable and differs between raters
    assert rater_order(manifest, "ann") == rater_order(manifest, "ann") != rater_order(manifest, "bob")


def test_create_refuses_bad_inputs(tmp_path):
    real, synth = _real(tmp_path / "real.npz"), _synthetic(tmp_path / "synth")
    with pytest.raises(MeddiffError, match="--n 9: a balanced study needs an even number"):
        create_study(real, synth, tmp_path / "s", n=9)
    with pytest.raises(MeddiffError, match="--real .*12 images, too few for --n 30"):
        create_study(real, synth, tmp_path / "s", n=30)
    other = _synthetic(tmp_path / "big", shape=(32, 32))
    with pytest.raises(MeddiffError, match=r"--synthetic ones \(1, 32, 32\).*--size 24 24"):
        create_study(real, other, tmp_path / "s", n=10)
    create_study(real, other, tmp_path / "resized", n=10, size=(24, 24))  # --size resamples both
    # the same image in both sets (hash of the pixels raters would see)
    images = np.load(real)["images"]
    copy = tmp_path / "copy.npz"
    np.savez(copy, images=np.concatenate([images[5:6], np.random.default_rng(9).integers(0, 256, (11, 24, 24),
                                                                                       dtype=np.uint8)]))
    with pytest.raises(MeddiffError, match=r"--synthetic .*copy.npz: copy.npz\[0\] is the same image as --real .*real.npz: real.npz\[5\]"):
        create_study(real, copy, tmp_path / "s", n=10)
    with pytest.raises(MeddiffError, match="--window nonsense"):
        create_study(real, synth, tmp_path / "s", n=10, window="nonsense")
    assert not (tmp_path / "s").exists()  # nothing half-written


def test_create_volumes_give_three_planes_and_a_stack(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "real.npy", rng.uniform(0, 1, (6, 1, 8, 12, 10)).astype(np.float32))
    np.save(tmp_path / "fake.npy", rng.uniform(0, 1, (6, 1, 8, 12, 10)).astype(np.float32))
    manifest = create_study(tmp_path / "real.npy", tmp_path / "fake.npy", tmp_path / "s", n=10)
    item = manifest["items"][0]
    assert item["slices"] == 8 and manifest["spatial_dims"] == 3
    assert sorted(p.name for p in (tmp_path / "s" / "images" / item["id"]).iterdir()) == [f"{k}.png" for k in range(8)]
    assert Image.open(tmp_path / "s" / "images" / f"{item['id']}.png").size == (12 + 4 + 10 + 4 + 10, 12)
    client = make_app(tmp_path / "s").test_client()
    assert client.get(f"/image/{item['id']}/7").status_code == 200
    assert client.get(f"/image/{item['id']}/8").status_code == 404
    assert client.get("/api/state?rater=a").get_json()["order"][0]["slices"] == 8


@pytest.fixture
def fresh(study, tmp_path):
    """A copy of the study with an empty log."""
    import shutil

    shutil.copytree(study, tmp_path / "study")
    return tmp_path / "study"


def _answer(client, rater, image_id, label, confidence=3, **extra):
    return client.post("/api/answer", json={"rater": rater, "id": image_id, "label": label,
                                            "confidence": confidence, **extra})


def test_server_logs_answers_and_resumes(fresh):
    client = make_app(fresh).test_client()
    assert b"Visual Turing test" in client.get("/").data
    state = client.get("/api/state?rater=ann").get_json()
    assert state["position"] == 0 and len(state["order"]) == 10 and set(state["order"][0]) == {"id"}
    first, second = state["order"][0]["id"], state["order"][1]["id"]
    assert _answer(client, "ann", first, "real", 4, comment="noise looks odd").get_json() == {"saved": True}
    assert _answer(client, "ann", second, "synthetic", 2).status_code == 200
    assert _answer(client, "ann", first, "synthetic", 5).status_code == 200  # changed mind: both logged
    records, torn = read_answers(fresh / "answers.jsonl")
    assert len(records) == 3 and torn == 0 and records[0]["comment"] == "noise looks odd"
    # a new server (restart) resumes the rater where they were, with the last answer
    state = make_app(fresh).test_client().get("/api/state?rater=ann").get_json()
    assert state["position"] == 2 and state["answers"][first] == {"label": "synthetic", "confidence": 5, "comment": ""}
    assert client.get("/api/state?rater=bob").get_json()["position"] == 0


@pytest.mark.parametrize("payload,message", [
    ({"rater": "a", "id": "nope", "label": "real", "confidence": 3}, "unknown image id"),
    ({"rater": "a", "id": None, "label": "fake", "confidence": 3}, "unknown image id"),
    ({"rater": "a", "label": "maybe", "confidence": 3}, "label must be"),
    ({"rater": "a", "confidence": 6}, "confidence must be"),
    ({"rater": "", "confidence": 3}, "rater: give a name"),
    ({"rater": "a", "confidence": 3, "path": "../x"}, "unknown field"),
])
def test_server_rejects_bad_answers(fresh, payload, message):
    client = make_app(fresh).test_client()
    image_id = client.get("/api/state?rater=a").get_json()["order"][0]["id"]
    payload = {"id": image_id, "label": "real", **payload}
    reply = client.post("/api/answer", json=payload)
    assert reply.status_code == 400 and message in reply.get_json()["error"]
    assert not (fresh / "answers.jsonl").exists()


def test_server_never_serves_the_key_or_paths(fresh):
    app = make_app(fresh, allowed_hosts={"127.0.0.1:8765"})
    client = app.test_client()
    base = {"base_url": "http://127.0.0.1:8765"}
    for url in ("/manifest.json", "/answers.jsonl", "/images/x.png", "/image/..%2Fmanifest.json",
                "/image/../manifest.json", "/image/%2E%2E/manifest.json", "/static/manifest.json", "/index.html"):
        reply = client.get(url, **base)
        assert reply.status_code == 404, url
        assert b"synthetic\"" not in reply.data
    image_id = load_manifest(fresh)["items"][0]["id"]
    reply = client.get(f"/image/{image_id}", **base)
    assert reply.status_code == 200 and reply.mimetype == "image/png" and reply.headers["Cache-Control"] == "no-store"
    assert "Last-Modified" not in reply.headers and "ETag" not in reply.headers
    assert client.get("/", base_url="http://evil.example:8765").status_code == 403  # DNS rebinding
    # a cross-site form post cannot send JSON
    reply = client.post("/api/answer", data={"rater": "a", "id": image_id, "label": "real", "confidence": "3"}, **base)
    assert reply.status_code == 400 and "send JSON" in reply.get_json()["error"]
    assert "manifest" not in json.dumps(client.get("/api/state?rater=a", **base).get_json())


def test_serve_is_loopback_only_unless_asked(fresh):
    with pytest.raises(MeddiffError, match="--host 0.0.0.0: not a loopback address.*--allow-remote"):
        serve_study(fresh, host="0.0.0.0", port=1)


def test_score_two_raters_and_the_report(fresh):
    manifest = load_manifest(fresh)
    truth = {item["id"]: item["kind"] for item in manifest["items"]}
    flip = {"real": "synthetic", "synthetic": "real"}
    log = fresh / "answers.jsonl"
    for i, (image_id, kind) in enumerate(truth.items()):
        append_answer(log, {"rater": "ann", "id": image_id, "label": kind, "confidence": 5})  # always right
        append_answer(log, {"rater": "bob", "id": image_id, "label": kind if i < 5 else flip[kind], "confidence": 1 + i % 5})
    append_answer(log, {"rater": "ann", "id": next(iter(truth)), "label": "real", "confidence": 2})  # re-answer
    with open(log, "ab") as handle:
        handle.write(b'{"rater": "bob", "id": "x')  # a torn last line (crash mid-write)
    result = write_score(fresh)
    first_kind = next(iter(truth.values()))
    ann_correct = 9 + (first_kind == "real")
    assert result["per_rater"]["ann"]["correct"] == ann_correct and result["per_rater"]["bob"]["correct"] == 5
    assert result["pooled"]["n"] == 20 and result["answers_logged"] == 21 and result["torn_lines_skipped"] == 1
    assert result["re_answered"] == [{"rater": "ann", "id": next(iter(truth)), "times": 2}]
    assert result["fleiss_kappa"]["images"] == 10 and result["fleiss_kappa"]["kappa"] is not None
    assert sum(v["n"] for v in result["by_confidence"].values()) == 20
    saved = json.loads((fresh / "score.json").read_text())
    assert saved["pooled"]["accuracy"] == pytest.approx((ann_correct + 5) / 20)
    assert saved["verdict"] == result["verdict"] and not saved["verdict"]["passes"]  # ann saw through it
    html = (fresh / "report.html").read_text()
    assert "Verdict" in html and "Fleiss" in html and "data:image/png;base64" in html


def test_cli_create_score_and_errors(tmp_path, capsys):
    real, synth = _real(tmp_path / "real.npz"), _synthetic(tmp_path / "synth")
    assert main(["turing-test", "create", "--real", str(real), "--synthetic", str(synth), "--n", "10",
                 "--out", str(tmp_path / "s")]) == 0
    assert "never served" in capsys.readouterr().out
    assert main(["turing-test", "score", str(tmp_path / "s")]) == 1
    assert "no answers logged yet" in capsys.readouterr().err
    assert main(["turing-test", "serve", str(tmp_path / "nothing")]) == 1
    assert "not a study folder" in capsys.readouterr().err
    assert main(["turing-test", "serve", str(tmp_path / "s"), "--host", "10.1.2.3"]) == 1
    assert "--allow-remote" in capsys.readouterr().err


def test_answers_survive_a_killed_writer(tmp_path):
    """Each answer is on disk (fsynced) when append_answer returns: a process killed right after loses nothing."""
    log = tmp_path / "answers.jsonl"
    code = ("import os, sys; from meddiff.tasks.turing.answers import append_answer\n"
            "for i in range(5): append_answer(sys.argv[1], {'rater': 'a', 'id': str(i), 'label': 'real', 'confidence': 1})\n"
            "os._exit(9)")  # no clean shutdown, no flush at exit
    subprocess.run([sys.executable, "-c", code, str(log)], check=False, timeout=60)
    records, torn = read_answers(log)
    assert [r["id"] for r in records] == ["0", "1", "2", "3", "4"] and torn == 0


def test_cli_works_without_flask_and_names_it(study):
    """Flask is an optional extra: the CLI imports without it, and `serve` says what to install."""
    code = ("import sys\n"
            "for name in ('flask', 'werkzeug'): sys.modules[name] = None\n"
            "from meddiff.cli.main import main\n"
            f"sys.exit(main(['turing-test', 'serve', {str(study)!r}]))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "pip install 'meddiff[turing]'" in result.stderr, result.stderr[-2000:]
