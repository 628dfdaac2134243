"""The batch runner and the dataset job without Ray or ComfyUI: job lists, input hashes, the results
file (append, torn lines, resume set), the API patches of a job, identity sampling, the embeddings files
the dataset writes (read back by the pack's own loader), and the message when Ray is missing."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from visage.runner import batch, cli, dataset

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WF = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "t"}},
}
OBJECT_INFO = {
    "LoadImage": {
        "input": {"required": {"image": [["x.png", "y.png"], {"image_upload": True}]}},
        "output_node": False,
    },
    "ImageInvert": {"input": {"required": {"image": ["IMAGE"]}}, "output_node": False},
    "SaveImage": {
        "input": {"required": {"images": ["IMAGE"], "filename_prefix": ["STRING", {"default": "ComfyUI"}]}},
        "output_node": True,
    },
    "KSampler": {"input": {"required": {"seed": ["INT", {}], "steps": ["INT", {}]}}, "output_node": False},
}


def _jobs_file(tmp_path, rows):
    (tmp_path / "wf.json").write_text(json.dumps(WF))
    (tmp_path / "a.png").write_bytes(b"\x89PNG first")
    p = tmp_path / "jobs.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n# a comment\n\n")
    return str(p)


def test_jobs_read_relative_to_the_list_and_hash_what_decides_the_result(tmp_path):
    p = _jobs_file(
        tmp_path,
        [
            {"id": "a", "workflow": "wf.json", "images": {"1": "a.png"}},
            {"id": "b", "workflow": "wf.json", "images": {"1": "a.png"}},
            {"id": "c", "workflow": "wf.json", "images": {"1": "a.png"}, "set": {"3.filename_prefix": "z"}},
        ],
    )
    jobs = batch.load_jobs(p)
    assert [j["id"] for j in jobs] == ["a", "b", "c"]
    assert jobs[0]["images"]["1"] == ("a.png", b"\x89PNG first")
    assert jobs[0]["hash"] == jobs[1]["hash"]  # the id is not an input
    assert jobs[2]["hash"] != jobs[0]["hash"]  # an override is
    before = jobs[0]["hash"]
    (tmp_path / "a.png").write_bytes(b"\x89PNG second")  # so are the image's bytes
    assert batch.load_jobs(p)[0]["hash"] != before
    (tmp_path / "a.png").write_bytes(b"\x89PNG first")
    (tmp_path / "wf.json").write_text(json.dumps(WF, indent=1))  # and the workflow file's bytes
    assert batch.load_jobs(p)[0]["hash"] != before


@pytest.mark.parametrize(
    "rows, msg",
    [
        ([{"id": "../x", "workflow": "wf.json"}], "the id '../x'"),
        ([{"id": "a", "workflow": "wf.json"}, {"id": "a", "workflow": "wf.json"}], "more than one job"),
        ([{"id": "a", "workflow": "absent.json"}], "workflow file not found"),
        ([{"id": "a", "workflow": "wf.json", "images": {"1": "absent.png"}}], "image file not found"),
        ([{"id": "a", "workflow": "wf.json", "seed": "7"}], "'seed' must be an integer"),
        ([{"id": "a", "workflow": "wf.json", "sets": {}}], "unknown keys"),
        ([{"id": "a", "workflow": {"x": 1}}], "neither a UI-format"),
    ],
)
def test_bad_job_lists_are_refused_with_the_job_named(tmp_path, rows, msg):
    with pytest.raises(cli.RunError) as e:
        batch.load_jobs(_jobs_file(tmp_path, rows))
    assert msg in str(e.value) and e.value.code == cli.EXIT_BAD_INPUT


def test_results_file_appends_whole_lines_and_survives_a_torn_line(tmp_path):
    p = str(tmp_path / "r.jsonl")
    out = batch.ResultsFile(p)
    out.append({"id": "a", "hash": "h1", "status": "ok"})
    out.append({"id": "b", "hash": "h2", "status": "failed"})
    out.close()
    with open(p, "a") as f:
        f.write('{"id": "c", "hash": "h3", "sta')  # a driver killed in the middle of a line
    assert [r["id"] for r in batch.read_results(p)] == ["a", "b"]
    assert batch.completed(p) == {("a", "h1")}
    out = batch.ResultsFile(p)  # the next run starts on a fresh line
    out.append({"id": "c", "hash": "h3", "status": "ok"})
    out.close()
    assert batch.completed(p) == {("a", "h1"), ("c", "h3")}
    assert batch.completed(str(tmp_path / "absent.jsonl")) == set()


def test_build_prompt_sets_images_seed_and_patches():
    job = batch.make_jobs(
        [
            {
                "id": "j",
                "workflow": dict(WF, **{"9": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 3}}}),
                "images": {},
                "set": {"3.filename_prefix": "out/x"},
                "seed": 42,
                "add_nodes": {"n": {"class_type": "LoadImage", "inputs": {"image": "y.png"}}},
                "links": {"ImageInvert.image": ["n", 0]},
            }
        ]
    )[0]
    job["seed"] = None
    prompt = batch.build_prompt(job, OBJECT_INFO, upload=lambda name, data: "never")
    # node 1 no longer feeds an output and the unconnected KSampler neither: both pruned
    assert set(prompt) == {"n", "2", "3"}
    assert prompt["2"]["inputs"]["image"] == ["n", 0]
    assert prompt["3"]["inputs"]["filename_prefix"] == "out/x"
    job["add_nodes"], job["links"], job["seed"] = {}, {}, 42
    uploads = []
    job["images"] = {"1": ("a.png", b"bytes")}
    prompt = batch.build_prompt(job, OBJECT_INFO, upload=lambda name, data: uploads.append((name, data)) or "up.png")
    assert prompt["1"]["inputs"]["image"] == "up.png" and uploads == [("a.png", b"bytes")]
    assert prompt["9"]["inputs"]["seed"] == 42
    job["workflow"] = WF  # a seed without a seed input is a mistake, not silently ignored
    with pytest.raises(cli.RunError, match="no seed input"):
        batch.build_prompt(job, OBJECT_INFO, upload=lambda n, d: "up.png")


def test_identities_keep_the_minimum_angle_and_are_reproducible():
    v = dataset.sample_identities(12, 80.0, seed=3)
    assert v.shape == (12, 512)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    g = v @ v.T
    worst = math.degrees(math.acos(g[~np.eye(12, dtype=bool)].max()))
    assert worst >= 80.0 - 1e-3
    assert np.array_equal(v, dataset.sample_identities(12, 80.0, seed=3))
    with pytest.raises(cli.RunError, match="lower --min-angle"):
        dataset.sample_identities(5, 120.0, seed=0, max_tries=200)  # > 90 deg for 5 vectors: impossible


def test_identities_around_references_sit_at_the_spread_angle():
    refs = dataset.sample_identities(2, 60.0, seed=1).astype(np.float64)
    v = dataset.sample_identities(4, 20.0, seed=2, around=refs, spread=30.0)
    for i in range(4):
        ang = math.degrees(math.acos(float(np.clip(v[i] @ refs[i % 2], -1, 1))))
        assert abs(ang - 30.0) < 1e-2


def test_dataset_embeds_load_with_the_pack_loader(tmp_path):
    from visage.nodes.face.embeds_io import load_embeds

    v = dataset.sample_identities(1, 0.0, seed=5)[0]
    p = str(tmp_path / "id.safetensors")
    dataset.write_embeds(v, p)
    e = load_embeds(p)
    assert e.encoder == "arcface" and e.count == 1 and e.dim == 512
    assert np.allclose(e.normed.numpy()[0], v, atol=1e-6)
    assert np.allclose(dataset.read_recognizer_rows(p)[0], v, atol=1e-6)
    with pytest.raises(ValueError, match="no glintr100 embeddings"):
        dataset.read_recognizer_rows(p, "glintr100")


def test_render_jobs_rewire_the_identity_to_saved_embeds():
    jobs = dataset.render_jobs("wf.json", ["idA", "idB"], 3, ["photo of a id person", "a id person smiling"], {}, 0)
    assert len(jobs) == 6 and len({j["seed"] for j in jobs}) == 6
    j = jobs[4]
    assert j["add_nodes"][dataset.EMBEDS_NODE]["inputs"]["name"] == "idB.safetensors"
    assert j["links"] == {"VisageArc2FaceEncode.embeds": [dataset.EMBEDS_NODE, 0], "VisageArc2FaceEncode.faces": None}
    assert j["set"]["VisageArc2FaceEncode.prompt"] == "a id person smiling"


def test_without_ray_the_subcommands_say_how_to_install_it(tmp_path):
    p = _jobs_file(tmp_path, [{"id": "a", "workflow": "wf.json"}])
    code = (
        "import sys; sys.modules['ray'] = None\n"  # an import of ray now fails as if it were not installed
        "from visage.runner import cli\n"
        f"sys.exit(cli.main(['batch', {p!r}, '--workers', '1']))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == cli.EXIT_NO_COMFY, r.stderr
    assert "pip install 'visage[batch]'" in r.stderr and "requirements-batch.txt" in r.stderr
    # and the plain runner never imports it
    code = "import sys, visage.runner.cli, visage.runner.batch; assert 'ray' not in sys.modules"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
