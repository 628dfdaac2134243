"""``visage-run batch JOBS.jsonl --workers N``: many workflows over a pool of ComfyUI workers, with Ray.

Ray (the optional extra ``pip install visage[batch]``, or requirements-batch.txt) is imported only here,
inside :func:`main` / :class:`Pool`: the node pack and ``visage-run WORKFLOW`` never need it.

* A job is one JSON object per line of JOBS.jsonl::

      {"id": "shot-001", "workflow": "workflows/face_analysis.json",
       "set": {"Load Image.image": "x.png"}, "images": {"Source": "photos/a.jpg"}, "seed": 7}

  ``workflow``: a UI- or API-format file (relative paths are read from the folder of JOBS.jsonl) or the
  workflow itself (a JSON object); ``set``: ``{"NODE.input": value}`` as ``--set NODE.input=VALUE``;
  ``images``: ``{"NODE" | "NODE.input": image file}`` as ``--image``; ``seed``: every ``seed`` /
  ``noise_seed`` input of the workflow. Two more keys patch the API prompt after conversion (the dataset
  job uses them): ``add_nodes`` ``{id: {"class_type", "inputs"}}`` and ``links`` ``{"NODE.input":
  [source node, output slot] | null}``; nodes no output depends on are then left out.
* Each worker is a Ray actor that starts and owns one ComfyUI (``--cpu``, or one GPU per worker when the
  cluster has GPUs), in its own temporary folders, started so that it dies with the actor (Linux:
  PR_SET_PDEATHSIG; plus a kill at exit). The driver hands each idle worker one job at a time; the worker
  runs it with the headless client (:mod:`visage.runner.cli`) and returns a result; outputs are written
  to ``--outputs/<id>/`` (on a cluster: a folder every node sees).
* Only the driver writes the results file: one JSON line per job (id, hash, status, files, timings,
  error, attempts), appended with a single write + flush + fsync. Re-running the same command skips every
  job whose (id, hash) is recorded "ok". A worker that dies mid-job (the actor or its ComfyUI) is replaced;
  its job is retried on another worker, up to ``--max-retries`` attempts in all, and recorded once.

Exit code: 0 when every job is done, 1 when any job failed, 2 bad input, 3 no Ray / no ComfyUI.
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from typing import Any, Dict, Iterable, List, Optional, Tuple

from . import cli

log = logging.getLogger("visage.runner.batch")

RESULTS_VERSION = 1
SEED_INPUTS = ("seed", "noise_seed")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
RAY_MISSING = (
    "visage-run {cmd} needs Ray, an optional extra of Visage: pip install 'visage[batch]' "
    "(or pip install -r requirements-batch.txt)"
)


# ============================================================================ jobs


class Job(dict):
    """One job, normalised: id, workflow (the JSON itself), set, images ({key: (file name, bytes)}),
    seed, add_nodes, links, hash."""


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canon(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()


def load_jobs(path: str) -> List[Job]:
    """Read JOBS.jsonl (blank lines and lines starting with # are skipped); raises cli.RunError."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            lines = f.readlines()
    except OSError as e:
        raise cli.RunError(f"cannot read the job list {path} ({e.strerror or e})")
    base = os.path.dirname(os.path.abspath(path))
    raw = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            raw.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise cli.RunError(f"{path} line {n}: not JSON ({e})")
    return make_jobs(raw, base, where=path)


def make_jobs(raw: Iterable[dict], base: str = ".", where: str = "job list") -> List[Job]:
    """Normalise job dicts (see the module doc); file paths are read now, so workers need no shared files."""
    jobs: List[Job] = []
    seen = set()
    wf_cache: Dict[str, Tuple[dict, str]] = {}
    for k, j in enumerate(raw, 1):
        if not isinstance(j, dict):
            raise cli.RunError(f"{where}: job {k} is not a JSON object")
        jid = j.get("id")
        if not isinstance(jid, str) or not _ID_RE.match(jid):
            raise cli.RunError(
                f"{where}: job {k} has the id {jid!r}; an id is 1-128 letters, digits, '.', '_' or '-' "
                f"(it names the job's output folder)"
            )
        if jid in seen:
            raise cli.RunError(f"{where}: the id {jid!r} is used by more than one job")
        seen.add(jid)
        unknown = set(j) - {"id", "workflow", "set", "images", "seed", "add_nodes", "links", "meta"}
        if unknown:
            raise cli.RunError(f"{where}: job {jid!r} has unknown keys {sorted(unknown)}")
        wf = j.get("workflow")
        if isinstance(wf, str):
            p = wf if os.path.isabs(wf) else os.path.join(base, wf)
            if p not in wf_cache:
                try:
                    with open(p, "rb") as f:
                        data = f.read()
                except OSError:
                    raise cli.RunError(f"{where}: job {jid!r}: workflow file not found: {p}")
                try:
                    wf_cache[p] = (json.loads(data), _sha(data))
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise cli.RunError(f"{where}: job {jid!r}: {p} is not a JSON workflow ({e})")
            workflow, wf_hash = wf_cache[p]
        elif isinstance(wf, dict):
            workflow, wf_hash = wf, _sha(_canon(wf))
        else:
            raise cli.RunError(f"{where}: job {jid!r} needs 'workflow': a file path or the workflow object")
        cli.detect_format(workflow, f"job {jid!r} workflow")
        sets = j.get("set") or {}
        if not isinstance(sets, dict) or any("." not in str(key) for key in sets):
            raise cli.RunError(f"{where}: job {jid!r}: 'set' must be {{\"NODE.input\": value}}")
        images: Dict[str, Tuple[str, bytes]] = {}
        for key, ipath in (j.get("images") or {}).items():
            p = ipath if os.path.isabs(ipath) else os.path.join(base, ipath)
            try:
                with open(p, "rb") as f:
                    images[str(key)] = (os.path.basename(p), f.read())
            except OSError:
                raise cli.RunError(f"{where}: job {jid!r}: image file not found: {p}")
        seed = j.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise cli.RunError(f"{where}: job {jid!r}: 'seed' must be an integer")
        job = Job(
            id=jid,
            workflow=workflow,
            set={str(a): b for a, b in sets.items()},
            images=images,
            seed=seed,
            add_nodes=j.get("add_nodes") or {},
            links=j.get("links") or {},
            meta=j.get("meta"),
        )
        job["hash"] = job_hash(job, wf_hash)
        jobs.append(job)
    return jobs


def job_hash(job: Job, wf_hash: str) -> str:
    """A hash of everything that decides a job's result: the workflow's bytes, the overrides, the images'
    bytes, the seed and the prompt patches (not the id)."""
    return _sha(
        _canon(
            {
                "workflow": wf_hash,
                "set": job["set"],
                "images": {k: _sha(v[1]) for k, v in job["images"].items()},
                "seed": job["seed"],
                "add_nodes": job["add_nodes"],
                "links": job["links"],
            }
        )
    )[:32]


# ============================================================================ results file


def read_results(path: str) -> List[dict]:
    """Every complete JSON line of the results file (a torn last line, from a driver killed while writing,
    is ignored)."""
    out = []
    try:
        with open(path, "r", encoding="utf-8") as f:
            for line in f:
                if not line.endswith("\n"):
                    break
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict) and "id" in rec:
                    out.append(rec)
    except FileNotFoundError:
        pass
    return out


def completed(path: str) -> set:
    """{(id, hash)} of the jobs recorded as done."""
    return {(r["id"], r.get("hash")) for r in read_results(path) if r.get("status") == "ok"}


class ResultsFile:
    """The results file, appended by the driver only: one line per job, one os.write + fsync each."""

    def __init__(self, path: str):
        self.path = path
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        # a torn last line (a driver killed mid-write) would glue onto ours: start on a fresh line
        size = os.fstat(self.fd).st_size
        if size:
            with open(path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    os.write(self.fd, b"\n")

    def append(self, record: dict) -> None:
        line = (json.dumps(record, sort_keys=True, default=str) + "\n").encode()
        n = os.write(self.fd, line)
        if n != len(line):  # pragma: no cover - a full disk
            raise OSError(f"short write to {self.path} ({n} of {len(line)} bytes)")
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# ============================================================================ one job on one ComfyUI


def build_prompt(job: Job, object_info: dict, upload) -> dict:
    """The API prompt of a job: convert, --set, images (``upload(name, bytes) -> input name``), seed,
    then the patches (add_nodes, links) and the pruning of nodes no output needs."""
    fmt, wf = cli.detect_format(job["workflow"], f"job {job['id']!r} workflow")
    primitives: dict = {}
    prompt = cli.ui_to_api(wf, object_info, primitives) if fmt == "ui" else json.loads(json.dumps(wf))
    for nid, node in (job.get("add_nodes") or {}).items():
        if not isinstance(node, dict) or "class_type" not in node:
            raise cli.RunError(f"job {job['id']!r}: add_nodes[{nid!r}] needs a class_type")
        prompt[str(nid)] = {"class_type": node["class_type"], "inputs": dict(node.get("inputs") or {})}
    for key, src in (job.get("links") or {}).items():
        node_key, name = key.rsplit(".", 1)
        nid = cli.find_node(prompt, node_key)
        if src is None:
            prompt[nid].setdefault("inputs", {}).pop(name, None)
        else:
            prompt[nid].setdefault("inputs", {})[name] = [str(src[0]), int(src[1])]
    if job.get("add_nodes") or job.get("links"):
        prompt = prune(prompt, object_info)
    cli.check_api(prompt, object_info)
    for key, value in job["set"].items():
        cli.apply_set(
            prompt, object_info, f"{key}={value if isinstance(value, str) else json.dumps(value)}", primitives
        )
    for key, (fname, data) in job["images"].items():
        k, name, _ = cli.parse_image_arg(f"{key}={fname}")
        nid = cli.find_node(prompt, k)
        node = prompt[nid]
        name = name or cli.image_input_name(object_info.get(node["class_type"], {}), node)
        node.setdefault("inputs", {})[name] = upload(fname, data)
    if job.get("seed") is not None:
        hit = 0
        for node in prompt.values():
            for s in SEED_INPUTS:
                if s in (node.get("inputs") or {}) and not isinstance(node["inputs"][s], list):
                    node["inputs"][s] = int(job["seed"])
                    hit += 1
        if not hit:
            raise cli.RunError(f"job {job['id']!r} gives a seed, but its workflow has no seed input")
    return prompt


def prune(prompt: dict, object_info: dict) -> dict:
    """Only the output nodes and what they depend on (what ComfyUI would run)."""
    outputs = [nid for nid, n in prompt.items() if (object_info.get(n.get("class_type")) or {}).get("output_node")]
    keep, stack = set(), list(outputs)
    while stack:
        nid = stack.pop()
        if nid in keep or nid not in prompt:
            continue
        keep.add(nid)
        for v in (prompt[nid].get("inputs") or {}).values():
            if isinstance(v, list) and len(v) == 2 and isinstance(v[1], int):
                stack.append(str(v[0]))
    return {nid: n for nid, n in prompt.items() if nid in keep}


def run_job(comfy: "cli.Comfy", object_info: dict, job: Job, out_dir: str, timeout: float) -> dict:
    """Run one job on ``comfy``; returns {status, files, timings, error, code} (never raises RunError)."""
    t0 = time.time()
    tmp = tempfile.mkdtemp(prefix="visage_job_")
    timings: Dict[str, float] = {}
    files: List[str] = []
    prompt_id = None
    try:
        shutil.rmtree(out_dir, ignore_errors=True)  # a retried job starts clean
        os.makedirs(out_dir, exist_ok=True)

        def upload(fname, data):
            p = os.path.join(tmp, fname)
            with open(p, "wb") as f:
                f.write(data)
            return comfy.upload_image(p)

        prompt = build_prompt(job, object_info, upload)
        timings["prepare_s"] = time.time() - t0
        client_id = uuid.uuid4().hex
        ws = cli._open_ws(comfy.url, client_id)
        try:
            t1 = time.time()
            prompt_id = comfy.queue(prompt, client_id)
            entry = cli.follow(comfy, prompt_id, client_id, prompt, time.time() + timeout, True, False, ws)
            timings["run_s"] = time.time() - t1
        finally:
            if ws is not None:
                try:
                    ws.close()
                except Exception:
                    pass
        t2 = time.time()
        files = cli.collect_outputs(comfy, entry, prompt, out_dir)
        timings["download_s"] = time.time() - t2
        cli.check_status(entry, prompt, False)
        status, error, code = "ok", None, cli.EXIT_OK
    except cli.RunError as e:
        status, error, code = "failed", str(e), e.code
        if e.code == cli.EXIT_TIMEOUT and prompt_id:
            try:
                comfy.cancel(prompt_id)
            except Exception:
                pass
    except Exception as e:  # lost connection and the like: the worker checks its server next
        status, error, code = "failed", f"{type(e).__name__}: {getattr(e, 'reason', e)}", cli.EXIT_NO_COMFY
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    timings["job_s"] = time.time() - t0
    rel = [os.path.relpath(p, out_dir) for p in files]
    return {"status": status, "files": rel, "timings": timings, "error": error, "code": code}


# ============================================================================ the worker (a Ray actor)


class Worker:
    """Owns one ComfyUI; ``run(job)`` -> result dict. Made a Ray actor by :class:`Pool`."""

    def __init__(self, cfg: dict):
        logging.basicConfig(level=logging.INFO)
        self.cfg = cfg
        self.comfy: Optional[cli.Comfy] = None
        self.work = tempfile.mkdtemp(prefix="visage_worker_")
        self.starts = 0
        atexit.register(self.stop)
        self._start()

    def _start(self) -> None:
        cfg = self.cfg
        extra = list(cfg.get("extra_args") or [])
        comfy_path = cli.find_comfyui(cfg.get("comfyui"))
        if comfy_path is None:
            raise RuntimeError("no ComfyUI found: give --comfyui PATH or set COMFYUI_PATH on every node")
        if cli.pack_installed_in(comfy_path):
            # a shared ComfyUI install: this worker's own input / output / temp folders
            for flag, sub in (
                ("--input-directory", "input"),
                ("--output-directory", "output"),
                ("--temp-directory", "temp"),
            ):
                os.makedirs(os.path.join(self.work, sub), exist_ok=True)
                extra += [flag, os.path.join(self.work, sub)]
        if cfg.get("embeds_dir"):
            yaml = os.path.join(self.work, "visage_embeds_paths.yaml")
            with open(yaml, "w", encoding="utf-8") as f:
                f.write(f"visage_batch:\n    visage_embeds: {json.dumps(os.path.abspath(cfg['embeds_dir']))}\n")
            extra += ["--extra-model-paths-config", yaml]
        gpu = bool(cfg.get("gpu"))
        self.comfy = cli.Comfy.start(
            comfy_path,
            cfg.get("models"),
            not gpu,
            extra,
            cfg.get("python") or sys.executable,
            float(cfg.get("start_timeout") or 300),
            True,
            die_with_parent=True,
        )
        self.object_info = self.comfy.object_info()
        self.starts += 1

    def alive(self) -> bool:
        return self.comfy is not None and self.comfy.proc is not None and self.comfy.proc.poll() is None

    def pids(self) -> Dict[str, int]:
        """{"actor": this process, "comfyui": its server}: for tests and the driver's log."""
        return {"actor": os.getpid(), "comfyui": self.comfy.proc.pid if self.comfy and self.comfy.proc else -1}

    def run(self, job: Job) -> dict:
        if not self.alive():  # its ComfyUI died (killed, crashed): a new one before the next job
            self.stop()
            self._start()
        out_dir = os.path.join(self.cfg["outputs"], job["id"])
        res = run_job(self.comfy, self.object_info, job, out_dir, float(self.cfg.get("timeout") or 3600))
        res["worker"] = {"host": os.uname().nodename if hasattr(os, "uname") else "", **self.pids()}
        if not self.alive():
            res.update(status="failed", code=cli.EXIT_NO_COMFY, lost=True)
            res["error"] = f"the worker's ComfyUI died during the job ({res.get('error')})"
        return res

    def stop(self) -> None:
        if self.comfy is not None:
            self.comfy.stop()
            self.comfy = None

    def __del__(self):
        try:
            self.stop()
        except Exception:
            pass


# ============================================================================ the driver


def _import_ray(cmd: str = "batch"):
    try:
        import ray
    except ImportError:
        raise cli.RunError(RAY_MISSING.format(cmd=cmd), cli.EXIT_NO_COMFY)
    return ray


class ProgressLine:
    """Jobs done / total, failures, rate and ETA on stderr (one line, redrawn on a terminal)."""

    def __init__(self, total: int, quiet: bool = False):
        self.total, self.quiet = total, quiet
        self.done = self.failed = 0
        self.t0 = time.time()
        self.tty = sys.stderr.isatty()

    def update(self, ok: bool, job_id: str) -> None:
        self.done += 1
        self.failed += 0 if ok else 1
        if self.quiet:
            return
        dt = max(time.time() - self.t0, 1e-9)
        rate = self.done / dt
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        line = (
            f"[batch] {self.done}/{self.total} jobs ({self.failed} failed) {rate:.2f} jobs/s "
            f"eta {eta:.0f}s  last: {job_id}{'' if ok else ' FAILED'}"
        )
        sys.stderr.write(("\r\033[K" + line) if self.tty else line + "\n")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.tty and not self.quiet:
            sys.stderr.write("\n")


class Pool:
    """N workers (Ray actors, one ComfyUI each) and the job loop. ``with Pool(...) as pool: pool.run(jobs,
    results)``; the workers stay up between runs (the dataset job renders, then scores)."""

    def __init__(
        self,
        workers: int,
        address: Optional[str] = None,
        comfyui: Optional[str] = None,
        models: Optional[str] = None,
        outputs: str = "visage_batch_outputs",
        embeds_dir: Optional[str] = None,
        gpus: Optional[float] = None,
        timeout: float = 3600.0,
        start_timeout: float = 300.0,
        extra_args: Optional[List[str]] = None,
        quiet: bool = False,
        ray_init: Optional[dict] = None,
    ):
        self.ray = ray = _import_ray()
        self.n = max(1, int(workers))
        self.quiet = quiet
        self.own_ray = False
        if not ray.is_initialized():
            kw = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
            if address:
                kw["address"] = address
            else:
                kw["num_cpus"] = self.n
            kw.update(ray_init or {})
            try:
                ray.init(**kw)
            except Exception as e:  # no cluster at --address, a version mismatch, ...
                where = f"the Ray cluster at {address}" if address else "a local Ray"
                raise cli.RunError(f"could not start or join {where}: {type(e).__name__}: {e}", cli.EXIT_NO_COMFY)
            self.own_ray = True
        if gpus is None:  # one GPU per worker on a cluster that has GPUs, else CPU workers
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        self.cfg = {
            "comfyui": comfyui or os.environ.get("COMFYUI_PATH"),
            "models": os.path.abspath(models) if models else None,
            "outputs": os.path.abspath(outputs),
            "embeds_dir": os.path.abspath(embeds_dir) if embeds_dir else None,
            "gpu": gpus > 0,
            "timeout": timeout,
            "start_timeout": start_timeout,
            "extra_args": list(extra_args or []),
            "python": sys.executable,
        }
        # the actor class: our own restarts (a dead actor is replaced), no Ray task retries, so a job is
        # never run again behind the driver's back
        self._cls = ray.remote(num_cpus=1, num_gpus=gpus, max_restarts=0, max_task_retries=0)(Worker)
        self.actors: List[Any] = []
        self.replaced = 0
        self.max_replacements = 4 * self.n + 8
        for _ in range(self.n):
            self.actors.append(self._cls.remote(self.cfg))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def pids(self) -> List[Dict[str, int]]:
        return self.ray.get([a.pids.remote() for a in self.actors], timeout=600)

    def _replace(self, k: int) -> None:
        try:
            self.ray.kill(self.actors[k], no_restart=True)
        except Exception:
            pass
        self.replaced += 1
        if self.replaced > self.max_replacements:
            raise cli.RunError(
                f"{self.replaced} workers died; stopping (does ComfyUI start on the nodes? see the Ray logs)",
                cli.EXIT_NO_COMFY,
            )
        self.actors[k] = self._cls.remote(self.cfg)

    def run(
        self, jobs: List[Job], results_path: str, max_retries: int = 3, on_result=None, stop_after: Optional[int] = None
    ) -> Dict[str, Any]:
        """Run ``jobs`` (skipping those recorded "ok" with the same hash), appending one line each to
        ``results_path``. Returns {"ran", "skipped", "failed": [records], "results": {id: record}}.
        ``stop_after``: return after this many jobs are recorded (tests: a driver stopped midway)."""
        ray = self.ray
        done = completed(results_path)
        todo = [j for j in jobs if (j["id"], j["hash"]) not in done]
        skipped = len(jobs) - len(todo)
        if skipped and not self.quiet:
            cli.say(f"batch: {skipped} job(s) already done in {results_path}; {len(todo)} to run")
        out = ResultsFile(results_path)
        prog = ProgressLine(len(todo), self.quiet)
        attempts: Dict[str, int] = {}
        history: Dict[str, List[str]] = {}
        pending = list(reversed(todo))  # pop() from the end = job order
        running: Dict[Any, Tuple[int, Job, float]] = {}  # ref -> (actor index, job, start)
        idle = list(range(len(self.actors)))
        records: Dict[str, dict] = {}
        failed: List[dict] = []
        recorded = 0

        def record(job: Job, res: dict, t_start: float) -> None:
            nonlocal recorded
            rec = {
                "v": RESULTS_VERSION,
                "id": job["id"],
                "hash": job["hash"],
                "status": res["status"],
                "files": [os.path.join(job["id"], f) for f in res.get("files") or []],
                "timings": dict(res.get("timings") or {}, wall_s=round(time.time() - t_start, 3)),
                "error": res.get("error"),
                "attempts": attempts[job["id"]],
                "errors": history.get(job["id"], []),
                "worker": res.get("worker"),
                "meta": job.get("meta"),
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            out.append(rec)
            records[job["id"]] = rec
            if rec["status"] != "ok":
                failed.append(rec)
            prog.update(rec["status"] == "ok", job["id"])
            recorded += 1
            if on_result is not None:
                on_result(rec)

        first_start: Dict[str, float] = {}
        try:
            while pending or running:
                while idle and pending:
                    k = idle.pop(0)
                    job = pending.pop()
                    attempts[job["id"]] = attempts.get(job["id"], 0) + 1
                    first_start.setdefault(job["id"], time.time())
                    running[self.actors[k].run.remote(job)] = (k, job, time.time())
                ready, _ = ray.wait(list(running), num_returns=1, timeout=5.0)
                for ref in ready:
                    k, job, _t = running.pop(ref)
                    try:
                        res = ray.get(ref)
                    except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as e:
                        # the worker died mid-job (its process was killed, or its node went away)
                        res = {
                            "status": "failed",
                            "error": f"worker lost: {type(e).__name__}",
                            "code": cli.EXIT_NO_COMFY,
                            "lost": True,
                        }
                        if not self.quiet:
                            cli.say(f"batch: a worker died during job {job['id']}; starting a new one")
                        self._replace(k)
                    except ray.exceptions.RayTaskError as e:  # a bug in the worker: its message, no retry loop
                        res = {"status": "failed", "error": f"worker error: {e}", "code": cli.EXIT_FAILED}
                    idle.append(k)
                    n = attempts[job["id"]]
                    if res["status"] != "ok":
                        history.setdefault(job["id"], []).append(res.get("error") or "")
                        # a rejected workflow (bad input) fails the same way every time: no retry
                        retry = res.get("code") != cli.EXIT_BAD_INPUT and n < max_retries
                        if retry:
                            pending.append(job)
                            continue
                    record(job, res, first_start[job["id"]])
                    if stop_after is not None and recorded >= stop_after:
                        return {"ran": recorded, "skipped": skipped, "failed": failed, "results": records}
        finally:
            prog.finish()
            out.close()
        return {"ran": recorded, "skipped": skipped, "failed": failed, "results": records}

    def close(self) -> None:
        for a in self.actors:
            try:
                self.ray.get(a.stop.remote(), timeout=60)
            except Exception:
                pass
            try:
                self.ray.kill(a, no_restart=True)
            except Exception:
                pass
        self.actors = []
        if self.own_ray:
            self.ray.shutdown()
            self.own_ray = False


# ============================================================================ command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="visage-run batch",
        description="Run a list of workflows (JOBS.jsonl) on N ComfyUI workers with Ray (docs/BATCH.md).",
        epilog="exit codes: 0 every job done, 1 some job failed, 2 bad input, 3 no Ray / no ComfyUI",
    )
    add_pool_args(p)
    p.add_argument("jobs", help="JSON lines: {id, workflow, set, images, seed} per line")
    p.add_argument(
        "--results", help="results file (JSON lines, appended; default JOBS.results.jsonl beside the job list)"
    )
    return p


def add_pool_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", "-n", type=int, default=1, help="ComfyUI workers (Ray actors); default 1")
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray with --workers CPUs)")
    p.add_argument("--comfyui", metavar="PATH", help="ComfyUI checkout on every node (default $COMFYUI_PATH)")
    p.add_argument(
        "--models",
        metavar="DIR",
        default=os.environ.get("VISAGE_MODELS_DIR"),
        help="ComfyUI-style models/ folder for the workers (default $VISAGE_MODELS_DIR, else ComfyUI's own)",
    )
    p.add_argument(
        "--outputs",
        default="visage_batch_outputs",
        help="folder of the outputs, one sub-folder per job id (on a cluster: storage every node sees)",
    )
    p.add_argument(
        "--max-retries", type=int, default=3, help="attempts per job in all, worker deaths included (default 3)"
    )
    p.add_argument("--gpus-per-worker", type=float, help="default: 1 when the Ray cluster has GPUs, else 0 (--cpu)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per job (default 3600)")
    p.add_argument("--start-timeout", type=float, default=300.0, help="seconds for a worker's ComfyUI to start")
    p.add_argument(
        "--extra-arg",
        dest="extra_args",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for each worker's ComfyUI main.py (repeatable)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress line")


def pool_from_args(args, embeds_dir: Optional[str] = None) -> Pool:
    return Pool(
        args.workers,
        address=args.address,
        comfyui=args.comfyui,
        models=args.models,
        outputs=args.outputs,
        embeds_dir=embeds_dir,
        gpus=args.gpus_per_worker,
        timeout=args.timeout,
        start_timeout=args.start_timeout,
        extra_args=args.extra_args,
        quiet=args.quiet,
    )


def report_failures(failed: List[dict]) -> None:
    if not failed:
        return
    cli.say(f"{len(failed)} job(s) failed:")
    for r in failed:
        first = (r.get("error") or "").strip().splitlines()
        cli.say(f"  - {r['id']} after {r['attempts']} attempt(s): {first[0] if first else '?'}")


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _import_ray()
        jobs = load_jobs(args.jobs)
        results = args.results or os.path.splitext(args.jobs)[0] + ".results.jsonl"
        if args.max_retries < 1:
            raise cli.RunError("--max-retries must be at least 1")
        with pool_from_args(args) as pool:
            summary = pool.run(jobs, results, max_retries=args.max_retries)
        report_failures(summary["failed"])
        if not args.quiet:
            cli.say(
                f"batch: {summary['ran'] - len(summary['failed'])} done, {len(summary['failed'])} failed, "
                f"{summary['skipped']} skipped (done before); results: {results}; outputs: {args.outputs}"
            )
        return cli.EXIT_FAILED if summary["failed"] else cli.EXIT_OK
    except cli.RunError as e:
        cli.say(f"error: {e}")
        return e.code
    except KeyboardInterrupt:
        cli.say("interrupted; re-run the same command to resume")
        return cli.EXIT_FAILED
