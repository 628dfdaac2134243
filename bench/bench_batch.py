"""Throughput of ``visage-run batch`` with 1, 2, ... local Ray workers, and the runner's overhead per job
against a bare ``/prompt`` client. Not part of CI, and not a ``run(args)`` module of bench/run.py (it
starts ComfyUI servers and a local Ray): run it by itself::

    .venv/bin/python bench/bench_batch.py [--jobs 24] [--workers 1,2] [--models DIR] [--json out.json]

The job is workflows/api/face_analysis.json (detect, analyse, keypoints, mask, aligned crops; four
SaveImage outputs) on a different image every time (a photo with one pixel changed, so ComfyUI's cache
cannot skip the work). Without --models the models are the test-built ones (tests/builders: tiny networks
with the released signatures): what is measured is then mostly the runner and ComfyUI, not the networks.

1. Overhead: one ComfyUI; N jobs sent by a bare client (upload, POST /prompt, wait on the websocket for
   the end of the prompt, nothing downloaded) and N by the batch worker's own code path
   (:func:`visage.runner.batch.run_job`: convert/patch, upload, queue, follow, download every output, check).
2. Throughput: a Pool of W workers (start-up not counted; one warm-up job per worker first), N jobs,
   jobs per second; the ratio to 1 worker; and, with 1 worker, the wall time per job not spent inside
   run_job on the worker (the driver's and Ray's share: dispatch, result, the results-file line).
The bare client and run_job alternate job by job, so both see the same load on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def _images(dest, n):
    from PIL import Image

    src = None
    try:
        import insightface

        src = os.path.join(os.path.dirname(insightface.__file__), "data", "images", "t1.jpg")
    except ImportError:
        pass
    base = Image.open(src).convert("RGB") if src and os.path.isfile(src) else Image.new("RGB", (640, 480), (90, 90, 90))
    paths = []
    for i in range(n):
        im = base.copy()
        im.putpixel((i % im.width, 0), (i % 256, (7 * i) % 256, 3))
        p = os.path.join(dest, f"img{i:04d}.png")
        im.save(p)
        paths.append(p)
    return paths


def _workflow():
    with open(os.path.join(REPO, "workflows", "api", "face_analysis.json"), encoding="utf-8") as f:
        wf = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    return wf


def bare_client(comfy, prompt_template, images):
    """Per-job seconds of upload + POST /prompt + websocket wait (the floor any client pays)."""
    import websocket

    from visage.runner import cli

    times = []
    for p in images:
        t0 = time.perf_counter()
        prompt = json.loads(json.dumps(prompt_template))
        prompt["1"]["inputs"]["image"] = comfy.upload_image(p)
        client_id = uuid.uuid4().hex
        ws = cli._open_ws(comfy.url, client_id)
        pid = comfy.queue(prompt, client_id)
        t_end = time.time() + 300
        while True:
            if time.time() > t_end:
                raise RuntimeError("bench job did not finish in 300 s")
            try:
                msg = ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            if isinstance(msg, str):
                m = json.loads(msg)
                d = m.get("data") or {}
                if m.get("type") == "executing" and d.get("node") is None and d.get("prompt_id") == pid:
                    break
                if m.get("type") in ("execution_error", "execution_interrupted") and d.get("prompt_id") == pid:
                    raise RuntimeError(f"bench job failed: {d}")
        ws.close()
        times.append(time.perf_counter() - t0)
    return times


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=24)
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    ap.add_argument("--models", help="ComfyUI models/ folder (default: build the test models into a temp folder)")
    ap.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"))
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    import ray

    from visage.runner import batch, cli

    tmp = tempfile.mkdtemp(prefix="visage_bench_batch_")
    try:
        models = args.models
        if not models:
            sys.path.insert(0, os.path.join(REPO, "tests"))
            import comfy_harness as ch
            from builders import build_all

            d = ch.make_base_dir(os.path.join(tmp, "base"))
            build_all(d["models"], d["input"])
            models = d["models"]
        comfy_path = cli.find_comfyui(args.comfyui)
        wf = _workflow()
        n = args.jobs
        imgs = _images(tmp, n * 3 + 8)
        fig = {"jobs": n, "cpus": os.cpu_count(), "workflow": "workflows/api/face_analysis.json"}

        # ---- 1. overhead on one server
        # the same threads as a worker: Ray gives a num_cpus=1 actor OMP_NUM_THREADS=1, which its ComfyUI inherits
        env_threads = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = "1"
        try:
            comfy = cli.Comfy.start(comfy_path, models, not cli.have_gpu(), [], sys.executable, 400, True)
        finally:
            if env_threads is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = env_threads
        try:
            oi = comfy.object_info()
            bare_client(comfy, wf, imgs[:2])  # warm-up: model loads
            jobs = batch.make_jobs(
                [{"id": f"o{i}", "workflow": wf, "images": {"1": p}} for i, p in enumerate(imgs[2 + n : 2 + 2 * n])]
            )
            # interleaved, so both see the same machine (a shared box's load changes by the minute)
            bare, runner, parts = [], [], []
            for p, j in zip(imgs[2 : 2 + n], jobs):
                bare += bare_client(comfy, wf, [p])
                t0 = time.perf_counter()
                r = batch.run_job(comfy, oi, j, os.path.join(tmp, "direct", j["id"]), 300)
                runner.append(time.perf_counter() - t0)
                assert r["status"] == "ok", r
                parts.append(r["timings"])
        finally:
            comfy.stop()
        fig["bare_prompt_ms"] = 1000 * statistics.median(bare)
        fig["run_job_ms"] = 1000 * statistics.median(runner)
        fig["run_job_overhead_ms"] = 1000 * statistics.median(r - b for r, b in zip(runner, bare))
        fig["run_job_parts_ms"] = {
            k: 1000 * statistics.median(p[k] for p in parts) for k in ("prepare_s", "run_s", "download_s")
        }

        # ---- 2. throughput over Ray
        rows = []
        for w in [int(x) for x in args.workers.split(",")]:
            ray.init(num_cpus=w, include_dashboard=False, log_to_driver=False)
            try:
                with batch.Pool(
                    w, comfyui=comfy_path, models=models, outputs=os.path.join(tmp, f"out{w}"), quiet=True
                ) as pool:
                    pool.pids()  # every worker up
                    warm = batch.make_jobs(
                        [{"id": f"warm{k}", "workflow": wf, "images": {"1": imgs[k]}} for k in range(w)]
                    )
                    pool.run(warm, os.path.join(tmp, f"warm{w}.jsonl"))
                    jobs = batch.make_jobs(
                        [
                            {"id": f"t{i}", "workflow": wf, "images": {"1": p}}
                            for i, p in enumerate(imgs[2 + 2 * n : 2 + 3 * n])
                        ]
                    )
                    t0 = time.perf_counter()
                    s = pool.run(jobs, os.path.join(tmp, f"res{w}.jsonl"))
                    dt = time.perf_counter() - t0
                    assert s["ran"] == n and not s["failed"], s["failed"]
                    in_worker = sum(r["timings"]["job_s"] for r in s["results"].values())
            finally:
                ray.shutdown()
            rows.append(
                {
                    "workers": w,
                    "seconds": dt,
                    "jobs_per_s": n / dt,
                    "ms_per_job": 1000 * dt / n,
                    # with one worker the jobs run one after another: the wall time not spent inside
                    # run_job on the worker is the driver + Ray cost per job (dispatch, result, record)
                    "outside_run_job_ms_per_job": 1000 * (dt * w - in_worker) / n,
                }
            )
        base = rows[0]["jobs_per_s"]
        for r in rows:
            r["ratio_to_first"] = r["jobs_per_s"] / base
        fig["throughput"] = rows
        one = [r for r in rows if r["workers"] == 1]
        if one:
            fig["ray_1_worker_ms_per_job"] = one[0]["ms_per_job"]
            fig["ray_overhead_ms_per_job"] = one[0]["outside_run_job_ms_per_job"]

        print(f"bench_batch: {n} face-analysis jobs, {os.cpu_count()} CPUs, ComfyUI {comfy_path}")
        print(f"  bare /prompt client         {fig['bare_prompt_ms']:8.1f} ms/job (median)")
        print(
            f"  batch run_job (one server)  {fig['run_job_ms']:8.1f} ms/job (median; paired difference "
            f"{fig['run_job_overhead_ms']:+.1f} ms; "
            + ", ".join(f"{k[:-2]} {v:.1f}" for k, v in fig["run_job_parts_ms"].items())
            + ")"
        )
        for r in rows:
            print(
                f"  Ray, {r['workers']} worker(s)           {r['ms_per_job']:8.1f} ms/job wall, {r['jobs_per_s']:.2f} jobs/s, "
                f"x{r['ratio_to_first']:.2f} of {rows[0]['workers']} worker(s)"
            )
        if one:
            print(
                f"  Ray driver+actor overhead   {fig['ray_overhead_ms_per_job']:8.1f} ms/job (1 worker: wall - time in run_job)"
            )
        print(f"  load average at the end: {os.getloadavg()}")
        fig["loadavg_end"] = os.getloadavg()
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(fig, f, indent=1)
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
