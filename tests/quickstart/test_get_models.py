"""tools/get_models.py against a local HTTP server serving test-built files: a good file, one with the wrong
sha256, a truncated transfer, a 404, a pack archive (nested like antelopev2.zip), a file with no published
sha256; files already in place are never overwritten; nothing half-written is left behind."""

import hashlib
import importlib.util
import io
import json
import os
import zipfile

import pytest
from qs_helpers import REPO, closed_port, serve

spec = importlib.util.spec_from_file_location("get_models", os.path.join(REPO, "tools", "get_models.py"))
gm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gm)

GOOD = os.urandom(300_000)
OTHER = os.urandom(300_000)
NOSHA = os.urandom(1000)
DET, REC = os.urandom(5000), os.urandom(7000)
PUB = "https://models.example.org/releases"


def _zip(nested):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        pre = "testpack/" if nested else ""
        z.writestr(pre + "det.onnx", DET)
        z.writestr(pre + "rec.onnx", REC)
    return buf.getvalue()


def _entry(name, folder, data, url, sha=True, size=True):
    return {
        "name": name,
        "folder": folder,
        "size": len(data) if size else None,
        "sha256": hashlib.sha256(data).hexdigest() if sha else None,
        "licence": "test",
        "source": "test server",
        "url": url,
    }


@pytest.fixture
def setup(tmp_path):
    entries = [
        _entry("good.onnx", "swapdir", GOOD, f"{PUB}/good.onnx"),
        _entry("badhash.onnx", "swapdir", GOOD, f"{PUB}/badhash.onnx"),
        _entry("trunc.onnx", "swapdir", GOOD, f"{PUB}/trunc.onnx"),
        _entry("gone.onnx", "swapdir", GOOD, f"{PUB}/gone.onnx"),
        _entry("nosha.bin", "other/deep", NOSHA, f"{PUB}/nosha.bin", sha=False),
        _entry("det.onnx", "insightface/models/testpack", DET, f"{PUB}/testpack.zip"),
        _entry("rec.onnx", "insightface/models/testpack", REC, f"{PUB}/testpack.zip", sha=False, size=False),
    ]
    man = tmp_path / "manifest.json"
    man.write_text(json.dumps({"models": entries}))
    files = {
        "/models.example.org/releases/good.onnx": GOOD,
        "/models.example.org/releases/badhash.onnx": OTHER,
        "/models.example.org/releases/trunc.onnx": ("truncate", GOOD),
        "/models.example.org/releases/nosha.bin": NOSHA,
        "/models.example.org/releases/testpack.zip": _zip(nested=True),
    }
    with serve(files) as (base, hits):
        models = tmp_path / "models"
        yield {"man": str(man), "base": base, "hits": hits, "models": models}


def _run(s, *targets, extra=()):
    return gm.main(["--manifest", s["man"], "--base-url", s["base"], "--models", str(s["models"]), *extra, *targets])


def _leftovers(models):
    return [os.path.join(r, f) for r, _d, fs in os.walk(models) for f in fs if ".part" in f or ".visage-" in r + f]


def test_good_file_written_and_never_overwritten(setup, capsys):
    assert _run(setup, "good.onnx") == 0
    dest = setup["models"] / "swapdir" / "good.onnx"
    assert dest.read_bytes() == GOOD
    first = os.stat(dest).st_mtime_ns
    hits = dict(setup["hits"])
    assert _run(setup, "good.onnx") == 0  # already there and matching: kept, not fetched again
    assert os.stat(dest).st_mtime_ns == first and setup["hits"] == hits
    assert "already there" in capsys.readouterr().err
    assert _leftovers(setup["models"]) == []


def test_wrong_hash_refused_nothing_written(setup, capsys):
    assert _run(setup, "badhash.onnx") == 1
    err = capsys.readouterr().err
    assert "sha256" in err and hashlib.sha256(OTHER).hexdigest() in err and "nothing was written" in err
    assert not (setup["models"] / "swapdir" / "badhash.onnx").exists()
    assert _leftovers(setup["models"]) == []


def test_truncated_transfer_refused(setup, capsys):
    assert _run(setup, "trunc.onnx") == 1
    assert "truncated" in capsys.readouterr().err
    assert not (setup["models"] / "swapdir" / "trunc.onnx").exists()
    assert _leftovers(setup["models"]) == []


def test_404_named(setup, capsys):
    assert _run(setup, "gone.onnx") == 1
    err = capsys.readouterr().err
    assert "HTTP 404" in err and "gone.onnx" in err
    assert _leftovers(setup["models"]) == []


def test_no_sha256_accepted_on_size_with_warning(setup, capsys):
    assert _run(setup, "nosha.bin") == 0
    assert (setup["models"] / "other" / "deep" / "nosha.bin").read_bytes() == NOSHA
    assert "warning: accepted on its size" in capsys.readouterr().err


def test_pack_from_nested_archive(setup, capsys):
    assert _run(setup, "testpack") == 0
    d = setup["models"] / "insightface" / "models" / "testpack"
    assert (d / "det.onnx").read_bytes() == DET and (d / "rec.onnx").read_bytes() == REC
    assert not (d / "testpack").exists()  # flattened: the nested folder of the archive is not reproduced
    assert "accepted unchecked" in capsys.readouterr().err  # rec.onnx has neither size nor sha256
    assert _leftovers(setup["models"]) == []


def test_bad_file_in_place_left_alone_unless_asked(setup, capsys):
    dest = setup["models"] / "swapdir" / "good.onnx"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"not the model")
    assert _run(setup, "good.onnx") == 1
    assert dest.read_bytes() == b"not the model" and "--replace-bad" in capsys.readouterr().err
    assert _run(setup, "good.onnx", extra=("--replace-bad",)) == 0
    assert dest.read_bytes() == GOOD


def test_unknown_and_offline(setup, capsys):
    assert _run(setup, "nothing.onnx") == 2
    assert "--list" in capsys.readouterr().err
    port = closed_port()
    rc = gm.main(
        [
            "--manifest",
            setup["man"],
            "--base-url",
            f"http://127.0.0.1:{port}",
            "--models",
            str(setup["models"]),
            "good.onnx",
        ]
    )
    assert rc == 3 and "cannot reach" in capsys.readouterr().err
    assert (
        gm.main(["--manifest", setup["man"], "--base-url", f"http://127.0.0.1:{port}", "--reachable", "testpack"]) == 3
    )
    assert gm.main(["--manifest", setup["man"], "--base-url", setup["base"], "--reachable", "testpack"]) == 0


def test_real_manifest_every_file_has_a_published_url():
    entries = gm.load_manifest()
    assert all(e.get("url", "").startswith("https://") for e in entries), [
        e["name"] for e in entries if not e.get("url")
    ]
    assert {gm.pack_of(e) for e in entries} >= {"buffalo_l", "antelopev2", "buffalo_s"}
    assert [e["name"] for e in gm.select(entries, ["buffalo_l"])] == [
        "det_10g.onnx",
        "w600k_r50.onnx",
        "2d106det.onnx",
        "1k3d68.onnx",
        "genderage.onnx",
    ]
    assert gm.mirrored("https://github.com/a/b.zip", "http://h:1/m/") == "http://h:1/m/github.com/a/b.zip"
