"""``visage-run batch`` / ``dataset`` on a local Ray with 2 CPU workers, each owning a real ComfyUI 0.3.64
with the pack and the test-built models: every job recorded once; a worker killed mid-run (the actor's
process, and another worker's ComfyUI) loses no job; a stopped driver resumes without repeating finished
jobs; a job that fails every time is reported after --max-retries attempts; a killed worker's ComfyUI dies
with it and none is left after the run; the dataset job with K=2, M=2 on the tiny Arc2Face models.

One pool (two ComfyUI servers) serves the whole module, in file order; the last test closes it."""

import json
import os
import signal
import threading
import time

import pytest
from PIL import Image

ray = pytest.importorskip("ray", reason="ray is not installed (pip install -r requirements-batch.txt)")

from visage.runner import batch, dataset  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEEN_COMFY = set()  # every ComfyUI pid the workers ever had


def _state(pid):
    """'R', 'S', ... of a live process; None when gone (or a zombie: dead, only not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None
    return None if st in ("Z", "X") else st


def _wait_gone(pids, timeout=30.0):
    t_end = time.time() + timeout
    while time.time() < t_end:
        alive = [p for p in pids if _state(p)]
        if not alive:
            return []
        time.sleep(0.2)
    return [p for p in pids if _state(p)]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("batch")
    Image.new("RGB", (40, 32), (30, 160, 90)).save(d / "a.png")
    (d / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n this is no image")
    invert = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}},
    }
    (d / "invert.json").write_text(json.dumps(invert))
    return d


@pytest.fixture(scope="module")
def pool(comfy_path, comfy_base, work):
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    p = batch.Pool(
        2,
        comfyui=comfy_path,
        models=comfy_base["models"],
        outputs=str(work / "outputs"),
        embeds_dir=str(work / "embeds"),
        start_timeout=400,
        timeout=300,
        quiet=True,
    )
    for w in p.pids():
        SEEN_COMFY.add(w["comfyui"])
    yield p
    p.close()
    ray.shutdown()


def _arc2face_sets(size=64, steps=2):
    return {
        "EmptyLatentImage.width": size,
        "EmptyLatentImage.height": size,
        "KSampler.steps": steps,
        "KSampler.cfg": 4.0,
        "KSampler.sampler_name": "euler",
        "KSampler.scheduler": "normal",
    }


def _invert_jobs(work, n, prefix):
    return batch.make_jobs(
        [{"id": f"{prefix}{i}", "workflow": "invert.json", "images": {"1": "a.png"}} for i in range(n)], str(work)
    )


def _lines(path):
    return [json.loads(line) for line in open(path)]


def test_two_workers_complete_the_list_each_job_recorded_once(pool, work):
    res = str(work / "two.jsonl")
    summary = pool.run(_invert_jobs(work, 6, "two"), res)
    lines = _lines(res)
    assert sorted(r["id"] for r in lines) == [f"two{i}" for i in range(6)]
    assert all(r["status"] == "ok" and r["attempts"] == 1 for r in lines)
    assert summary["ran"] == 6 and not summary["failed"]
    assert len({r["worker"]["actor"] for r in lines}) == 2  # both workers took jobs
    for r in lines:
        SEEN_COMFY.add(r["worker"]["comfyui"])
        (f,) = [x for x in r["files"] if x.endswith(".png")]
        with Image.open(work / "outputs" / f) as im:  # the inverted image, from the worker's ComfyUI
            px = im.getpixel((3, 3))
            assert im.size == (40, 32) and all(abs(a - b) <= 1 for a, b in zip(px, (225, 95, 165))), px
        assert {"run_s", "job_s", "wall_s"} <= set(r["timings"])


def test_stopped_driver_resumes_without_repeating_finished_jobs(pool, work):
    res = str(work / "resume.jsonl")
    jobs = _invert_jobs(work, 5, "res")
    first = pool.run(jobs, res, stop_after=2)  # the driver stops after two results
    assert first["ran"] == 2 and len(_lines(res)) == 2
    done_first = {r["id"] for r in _lines(res)}
    second = pool.run(jobs, res)  # the same command again
    assert second["skipped"] == 2 and second["ran"] == 3
    lines = _lines(res)
    assert sorted(r["id"] for r in lines) == [f"res{i}" for i in range(5)]  # each once, over both runs
    assert done_first.isdisjoint(second["results"])
    third = pool.run(jobs, res)  # all done: nothing runs
    assert third["ran"] == 0 and third["skipped"] == 5 and len(_lines(res)) == 5


def test_worker_killed_mid_run_loses_no_job(pool, work):
    """After the first result, SIGKILL the other worker's actor process (its ComfyUI must die with it), and
    one second later the ComfyUI of the worker that answered (mid-job: a render takes seconds)."""
    before = {w["actor"]: w["comfyui"] for w in pool.pids()}
    wf = os.path.join(REPO, "workflows", "visage_arc2face.json")
    dataset.write_embeds(dataset.sample_identities(1, 0.0, seed=11)[0], str(work / "embeds" / "killid.safetensors"))
    raw = dataset.render_jobs(wf, ["killid"], 6, [dataset.DEFAULT_PROMPT], _arc2face_sets(96, 4), 0)
    jobs = batch.make_jobs(raw, str(work))
    killed = {}

    def on_result(rec):
        if killed:
            return
        answered = rec["worker"]["actor"]
        other = next(a for a in before if a != answered)
        killed["actor"], killed["its_comfyui"] = other, before[other]
        os.kill(other, signal.SIGKILL)

        def kill_comfy():
            killed["comfyui"] = rec["worker"]["comfyui"]
            try:
                os.kill(rec["worker"]["comfyui"], signal.SIGKILL)
            except ProcessLookupError:
                pass

        threading.Timer(1.0, kill_comfy).start()

    res = str(work / "kill.jsonl")
    summary = pool.run(jobs, res, max_retries=3, on_result=on_result)
    lines = _lines(res)
    assert sorted(r["id"] for r in lines) == [f"killid_img{i:03d}" for i in range(6)], lines  # every job, once
    assert all(r["status"] == "ok" for r in lines), [(r["id"], r["error"], r["errors"]) for r in lines]
    assert not summary["failed"]
    retried = [r for r in lines if r["attempts"] > 1]
    assert retried, "no job was caught by the killed worker"
    assert any("worker lost" in e or "died" in e or "ComfyUI" in e for r in retried for e in r["errors"])
    # the killed actor's ComfyUI went with it (PR_SET_PDEATHSIG), and so did the killed server
    assert _wait_gone([killed["its_comfyui"], killed["comfyui"]]) == []
    now = pool.pids()
    assert killed["actor"] not in {w["actor"] for w in now}  # replaced by a new worker
    for w in now:
        SEEN_COMFY.add(w["comfyui"])
    for r in lines:
        SEEN_COMFY.add(r["worker"]["comfyui"])


def test_job_failing_every_time_is_reported_not_retried_forever(pool, work):
    raw = [
        {"id": "good", "workflow": "invert.json", "images": {"1": "a.png"}},
        {"id": "broken", "workflow": "invert.json", "images": {"1": "bad.png"}},  # fails while running
        {"id": "rejected", "workflow": "invert.json", "set": {"1.image": "absent.png"}},  # refused: no retry
    ]
    res = str(work / "fail.jsonl")
    summary = pool.run(batch.make_jobs(raw, str(work)), res, max_retries=3)
    by_id = {r["id"]: r for r in _lines(res)}
    assert sorted(by_id) == ["broken", "good", "rejected"]
    assert by_id["good"]["status"] == "ok"
    assert by_id["broken"]["status"] == "failed" and by_id["broken"]["attempts"] == 3
    assert len(by_id["broken"]["errors"]) == 3 and "LoadImage" in by_id["broken"]["error"]
    assert by_id["rejected"]["status"] == "failed" and by_id["rejected"]["attempts"] == 1
    assert sorted(r["id"] for r in summary["failed"]) == ["broken", "rejected"]
    # a re-run retries the failed jobs only (the good one is done)
    again = pool.run(batch.make_jobs(raw, str(work)), res, max_retries=1)
    assert again["skipped"] == 1 and again["ran"] == 2


def test_dataset_two_identities_two_images(pool, work):
    out = str(work / "dataset")
    wf = os.path.join(REPO, "workflows", "visage_arc2face.json")
    m = dataset.make_dataset(
        pool,
        out,
        str(work / "embeds"),
        wf,
        2,
        2,
        min_angle=70.0,
        threshold=-1.0,
        prompts=["photo of a id person", "a close-up photo of a id person"],
        sets={k: str(v) for k, v in _arc2face_sets(128, 2).items()},
        seed=7,
    )
    saved = json.load(open(os.path.join(out, "manifest.json")))
    assert saved == json.loads(json.dumps(m))
    assert len(m["identities"]) == 2 and m["closest_pair_deg"] >= 70.0
    seeds = [e["seed"] for ident in m["identities"] for e in ident["images"]]
    assert len(set(seeds)) == 4
    assert {e["prompt"] for ident in m["identities"] for e in ident["images"]} == set(m["prompts"])
    scored = 0
    for ident in m["identities"]:
        assert len(ident["embedding"]) == 512
        assert abs(sum(x * x for x in ident["embedding"]) - 1.0) < 1e-4
        assert os.path.isfile(os.path.join(out, ident["folder"], "identity.safetensors"))
        for e in ident["images"]:
            if "score" not in e:  # the tiny detector found no face: recorded, not kept
                assert not e["kept"] and e["reason"].startswith("no face")
                continue
            scored += 1
            assert -1.0 <= e["score"] <= 1.0 and set(e["scores_others"]) == {
                x["id"] for x in m["identities"] if x is not ident
            }
            # kept exactly when it scores above the threshold and closer to its own identity than another
            assert e["kept"] == (e["score"] > max(e["scores_others"].values()))
            if e["kept"]:
                with Image.open(os.path.join(out, e["file"])) as im:
                    assert im.size == (128, 128)
    assert scored >= 1, m
    assert m["kept_images"] == sum(1 for ident in m["identities"] for e in ident["images"] if e["kept"])
    # the renders used the sampled identity (the Load Face Embeds file), not the workflow's photo
    render = _lines(os.path.join(out, "_work", "render.results.jsonl"))
    assert len(render) == 4 and all(r["status"] == "ok" for r in render)


def test_no_comfyui_left_after_the_run(pool):
    live = [w["comfyui"] for w in pool.pids()]
    SEEN_COMFY.update(live)
    assert all(_state(p) for p in live)
    pool.close()
    assert _wait_gone(sorted(SEEN_COMFY - {-1})) == []
