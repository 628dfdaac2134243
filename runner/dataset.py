"""``visage-run dataset``: a synthetic-identity face dataset with Arc2Face, over the batch runner.

1. Sample K identities: unit vectors in the 512-d space of Arc2Face's recognizer (``arcface``), every pair
   at least ``--min-angle`` degrees apart (rejection sampling), optionally around real reference
   embeddings (``--around FILE`` of Save Face Embeds: each identity is a reference turned by ``--spread``
   degrees towards a random direction). Each is written as a Visage embeddings file (the format of
   Save / Load Face Embeds, encoder ``arcface``).
2. Render M images per identity through the batch runner: the Arc2Face workflow with its identity input
   re-wired to a Load Face Embeds node of that identity (the reference photo and its analysis are left
   out), one seed per image and the prompts of ``--prompt`` in turn.
3. Score every image on the workers too, with a small scoring workflow (Load Image -> Analyze Faces ->
   Face Embeds -> Save Face Embeds): the face's ``arcface`` embedding comes back as a file and the driver
   takes its cosine to its own identity and to every other one. Scoring runs as batch jobs (not in the
   driver) so that it uses the workers' GPUs and the same face analysis as the nodes, and the driver needs
   neither torch nor the models.
4. Keep the images whose own-identity score is at least ``--threshold`` and higher than their score to
   any other identity; write ``OUT/identity_XXXX/`` folders and ``OUT/manifest.json`` (embedding, seeds,
   prompts, scores, kept or why not).

Re-running the same command resumes (same ``--seed``: the same identities, the same job hashes).
numpy and safetensors (requirements of the pack) are used here; Ray via :mod:`visage.runner.batch`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
from typing import Dict, List, Optional

from . import batch, cli

RECOGNIZER = "arcface"  # the recognizer Arc2Face was trained on (nodes/adapters/methods/arc2face.py)
DIM = 512
EMBEDS_NODE = "visage_dataset_embeds"
ENCODE_TYPE = "VisageArc2FaceEncode"
DEFAULT_PROMPT = "photo of a id person"  # Arc2Face's published prompt


# ============================================================================ identities


def sample_identities(
    k: int,
    min_angle: float,
    seed: int = 0,
    around=None,
    spread: float = 45.0,
    dim: int = DIM,
    max_tries: int = 100000,
):
    """[k, dim] unit vectors, every pair at least ``min_angle`` degrees apart (rejection sampling).
    ``around``: [R, dim] unit references; identity i is reference i % R turned by ``spread`` degrees
    towards a random orthogonal direction."""
    import numpy as np

    rng = np.random.default_rng(seed)
    cos_max = math.cos(math.radians(min_angle))
    out: List = []
    tries = 0
    while len(out) < k:
        tries += 1
        if tries > max_tries:
            raise cli.RunError(
                f"could not place {k} identities {min_angle} degrees apart in {max_tries} draws (placed "
                f"{len(out)}); lower --min-angle" + (" or raise --spread" if around is not None else "")
            )
        g = rng.standard_normal(dim)
        if around is None:
            v = g
        else:
            r = around[len(out) % len(around)]
            u = g - (g @ r) * r
            u /= np.linalg.norm(u)
            t = math.radians(spread)
            v = math.cos(t) * r + math.sin(t) * u
        v = v / np.linalg.norm(v)
        if out and float(np.max(np.stack(out) @ v)) > cos_max:
            continue
        out.append(v)
    return np.stack(out).astype(np.float32)


def write_embeds(vec, path: str) -> None:
    """One identity (a [dim] unit vector) as a Visage embeddings file (Load Face Embeds reads it)."""
    import numpy as np
    from safetensors.numpy import save_file

    row = np.asarray(vec, dtype=np.float32).reshape(1, -1)
    meta = {
        "format": "visage.embeds",
        "version": "2",
        "encoder": RECOGNIZER,
        "dim": str(row.shape[1]),
        "count": "1",
        "normalised": "normed tensor is L2-normalised; raw is the recognizer output",
        "fusion": "none",
        "sources": "[1]",
        "recognizers": json.dumps([RECOGNIZER]),
        "visage_dataset": "synthetic identity (visage-run dataset)",
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    save_file({"raw": row, "normed": row.copy()}, tmp, metadata=meta)
    os.replace(tmp, path)


def read_recognizer_rows(path: str, recognizer: str = RECOGNIZER):
    """[K, dim] L2-normalised rows of ``recognizer`` from a Visage embeddings file (or ValueError)."""
    import numpy as np
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as f:
        meta = f.metadata() or {}
        keys = set(f.keys())
        if meta.get("encoder") == recognizer and "raw" in keys:
            rows = f.get_tensor("raw")
        elif f"raw.{recognizer}" in keys:
            rows = f.get_tensor(f"raw.{recognizer}")
        else:
            have = [meta.get("encoder", "?")] + [x[4:] for x in keys if x.startswith("raw.")]
            raise ValueError(f"{path} holds no {recognizer} embeddings (it has: {', '.join(have)})")
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, rows.shape[-1])
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


# ============================================================================ jobs


def render_jobs(workflow: str, ids: List[str], m: int, prompts: List[str], sets: Dict[str, str], seed: int):
    jobs = []
    for i, ident in enumerate(ids):
        for j in range(m):
            prompt = prompts[j % len(prompts)]
            jobs.append(
                {
                    "id": f"{ident}_img{j:03d}",
                    "workflow": os.path.abspath(workflow),
                    "set": dict(sets, **{f"{ENCODE_TYPE}.prompt": prompt}),
                    "seed": seed * 1000003 + i * m + j,
                    "add_nodes": {
                        EMBEDS_NODE: {"class_type": "VisageLoadEmbeds", "inputs": {"name": f"{ident}.safetensors"}}
                    },
                    "links": {f"{ENCODE_TYPE}.embeds": [EMBEDS_NODE, 0], f"{ENCODE_TYPE}.faces": None},
                    "meta": {"identity": ident, "image": j, "prompt": prompt},
                }
            )
    return jobs


def scoring_workflow(image_name: str, save_name: str, pack: str, det_threshold: float) -> dict:
    """Load Image -> Analyze Faces (the largest face) -> Face Embeds -> Save Face Embeds."""
    return {
        "load": {"class_type": "LoadImage", "inputs": {"image": image_name}},
        "analyzer": {
            "class_type": "VisageFaceAnalyzerLoader",
            "inputs": {
                "pack": pack,
                "det_size": 640,
                "device": "auto",
                "precision": "auto",
                "det_threshold": det_threshold,
                "engine": "auto",
            },
        },
        "faces": {
            "class_type": "VisageAnalyzeFaces",
            "inputs": {
                "analyzer": ["analyzer", 0],
                "image": ["load", 0],
                "order": "largest",
                "gender": "any",
                "face_index": 0,
                "max_faces": 0,
                "min_score": 0.0,
                "on_no_face": "error",
            },
        },
        "embeds": {
            "class_type": "VisageFaceEmbeds",
            "inputs": {"faces": ["faces", 0], "fusion": "norm_mean", "outlier_threshold": 0.3},
        },
        "save": {
            "class_type": "VisageSaveEmbeds",
            "inputs": {"embeds": ["embeds", 0], "name": save_name, "overwrite": True},
        },
    }


# ============================================================================ the whole job


def make_dataset(
    pool: "batch.Pool",
    out: str,
    embeds_dir: str,
    workflow: str,
    k: int,
    m: int,
    min_angle: float = 60.0,
    around: Optional[str] = None,
    spread: float = 45.0,
    threshold: float = 0.3,
    prompts: Optional[List[str]] = None,
    sets: Optional[Dict[str, str]] = None,
    seed: int = 0,
    score_pack: str = "antelopev2",
    det_threshold: float = 0.5,
    max_retries: int = 2,
) -> dict:
    """Sample, render, score, keep; returns the manifest (also written to OUT/manifest.json). ``pool``'s
    workers must have ``embeds_dir`` as their visage_embeds folder (Pool(embeds_dir=...)) and
    ``OUT/_work/outputs`` (or any folder) as outputs: the rendered files are read from ``pool.cfg``."""
    import numpy as np

    prompts = prompts or [DEFAULT_PROMPT]
    for p in prompts:
        if "id" not in p.split():
            raise cli.RunError(f"--prompt {p!r}: an Arc2Face prompt needs the word 'id' (where the identity goes)")
    refs = None
    if around:
        try:
            refs = read_recognizer_rows(around).astype(np.float64)
        except (OSError, ValueError) as e:
            raise cli.RunError(f"--around {around}: {e}")
    vecs = sample_identities(k, min_angle, seed, refs, spread)
    ids = [f"visage_dataset_s{seed}_id{i:04d}" for i in range(k)]
    for ident, v in zip(ids, vecs):
        write_embeds(v, os.path.join(embeds_dir, f"{ident}.safetensors"))
    work = os.path.join(out, "_work")
    os.makedirs(work, exist_ok=True)
    outputs = pool.cfg["outputs"]

    # ---- render
    rjobs = batch.make_jobs(render_jobs(workflow, ids, m, prompts, sets or {}, seed), ".", "dataset renders")
    pool.run(rjobs, os.path.join(work, "render.results.jsonl"), max_retries=max_retries)
    rendered = _latest_ok(os.path.join(work, "render.results.jsonl"), {j["id"]: j["hash"] for j in rjobs})

    # ---- score (the first image file of each render)
    sjobs_raw, image_of = [], {}
    for j in rjobs:
        rec = rendered.get(j["id"])
        pngs = [f for f in (rec or {}).get("files") or [] if os.path.splitext(f)[1].lower() in cli.IMAGE_EXTS]
        if not pngs:
            continue
        path = os.path.join(outputs, pngs[0])
        image_of[j["id"]] = path
        sjobs_raw.append(
            {
                "id": f"score_{j['id']}",
                "workflow": scoring_workflow("placeholder.png", f"score_{j['id']}", score_pack, det_threshold),
                "images": {"load": path},
            }
        )
    sjobs = batch.make_jobs(sjobs_raw, ".", "dataset scoring")
    pool.run(sjobs, os.path.join(work, "score.results.jsonl"), max_retries=1)
    scored = _latest_ok(os.path.join(work, "score.results.jsonl"), {j["id"]: j["hash"] for j in sjobs})
    score_errors = {r["id"]: r.get("error") for r in batch.read_results(os.path.join(work, "score.results.jsonl"))}

    # ---- keep, lay out
    unit = vecs.astype(np.float64)
    identities = []
    for i, ident in enumerate(ids):
        folder = f"identity_{i:04d}"
        os.makedirs(os.path.join(out, folder), exist_ok=True)
        shutil.copyfile(
            os.path.join(embeds_dir, f"{ident}.safetensors"), os.path.join(out, folder, "identity.safetensors")
        )
        images = []
        for j in [x for x in rjobs if x["meta"]["identity"] == ident]:
            entry = {"job": j["id"], "seed": j["seed"], "prompt": j["meta"]["prompt"], "kept": False, "file": None}
            sid = f"score_{j['id']}"
            if j["id"] not in rendered:
                entry["reason"] = "render failed"
            elif sid not in scored:
                entry["reason"] = f"no face scored ({(score_errors.get(sid) or 'scoring failed').splitlines()[0]})"
            else:
                emb = read_recognizer_rows(os.path.join(embeds_dir, f"{sid}.safetensors"))[0]
                cos = unit @ emb
                others = {ids[o]: round(float(cos[o]), 4) for o in range(k) if o != i}
                entry["score"] = round(float(cos[i]), 4)
                entry["scores_others"] = others
                best_other = max(others.values()) if others else -1.0
                if entry["score"] < threshold:
                    entry["reason"] = f"identity score {entry['score']} < threshold {threshold}"
                elif entry["score"] <= best_other:
                    entry["reason"] = f"closer to another identity ({best_other})"
                else:
                    entry["kept"] = True
                    entry.pop("reason", None)
                    src = image_of[j["id"]]
                    dst = os.path.join(folder, f"img_{j['meta']['image']:03d}{os.path.splitext(src)[1]}")
                    shutil.copyfile(src, os.path.join(out, dst))
                    entry["file"] = dst
            images.append(entry)
        identities.append(
            {
                "id": ident,
                "folder": folder,
                "embedding": [round(float(x), 7) for x in vecs[i]],
                "kept": sum(1 for e in images if e["kept"]),
                "images": images,
            }
        )
    gram = unit @ unit.T
    off = gram[~np.eye(k, dtype=bool)] if k > 1 else np.array([-1.0])
    manifest = {
        "format": "visage.dataset",
        "version": 1,
        "recognizer": RECOGNIZER,
        "dim": int(vecs.shape[1]),
        "identities_requested": k,
        "images_per_identity": m,
        "min_angle_deg": min_angle,
        "closest_pair_deg": round(math.degrees(math.acos(min(1.0, float(off.max())))), 3),
        "around": os.path.abspath(around) if around else None,
        "spread_deg": spread if around else None,
        "threshold": threshold,
        "seed": seed,
        "workflow": os.path.abspath(workflow),
        "prompts": prompts,
        "set": sets or {},
        "kept_images": sum(x["kept"] for x in identities),
        "identities": identities,
    }
    tmp = os.path.join(out, "manifest.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, os.path.join(out, "manifest.json"))
    return manifest


def _latest_ok(results: str, hashes: Dict[str, str]) -> Dict[str, dict]:
    """{job id: its "ok" record} for the jobs of this run (same hash)."""
    return {
        r["id"]: r
        for r in batch.read_results(results)
        if r.get("status") == "ok" and hashes.get(r["id"]) == r.get("hash")
    }


# ============================================================================ command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="visage-run dataset",
        description="Synthetic-identity face dataset: sample identities, render them with Arc2Face on the batch "
        "workers, keep the images that score as their identity (docs/BATCH.md).",
    )
    batch.add_pool_args(p)
    p.add_argument("--identities", "-k", type=int, required=True, help="identities to sample")
    p.add_argument("--images-per-identity", "-m", type=int, required=True, help="images rendered per identity")
    p.add_argument("--workflow", required=True, help="the Arc2Face workflow (e.g. workflows/visage_arc2face.json)")
    p.add_argument("--out", default="visage_dataset", help="dataset folder (default ./visage_dataset)")
    p.add_argument("--min-angle", type=float, default=60.0, help="minimum angle between identities, degrees")
    p.add_argument("--around", metavar="EMBEDS", help="sample around these reference embeddings (Save Face Embeds)")
    p.add_argument("--spread", type=float, default=45.0, help="with --around: angle from the reference, degrees")
    p.add_argument("--threshold", type=float, default=0.3, help="minimum cosine to the own identity to keep an image")
    p.add_argument(
        "--prompt",
        dest="prompts",
        action="append",
        default=[],
        help="prompt(s) with the word 'id', used in turn (default: Arc2Face's 'photo of a id person')",
    )
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="NODE.input=VALUE",
        help="override for every render (e.g. KSampler.steps=30)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the identities and of the renders")
    p.add_argument("--score-pack", default="antelopev2", help="face analysis pack that scores (with arcface.onnx)")
    p.add_argument("--det-threshold", type=float, default=0.5, help="face detection threshold when scoring")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        batch._import_ray("dataset")
        if args.identities < 1 or args.images_per_identity < 1:
            raise cli.RunError("--identities and --images-per-identity must be at least 1")
        if not os.path.isfile(args.workflow):
            raise cli.RunError(f"workflow file not found: {args.workflow}")
        sets = {}
        for s in args.sets:
            if "=" not in s or "." not in s.split("=", 1)[0]:
                raise cli.RunError(f"--set '{s}': expected NODE.input=VALUE")
            key, value = s.split("=", 1)
            sets[key] = value
        out = os.path.abspath(args.out)
        embeds_dir = os.path.join(out, "_work", "embeds")
        if args.outputs == "visage_batch_outputs":
            args.outputs = os.path.join(out, "_work", "outputs")
        os.makedirs(embeds_dir, exist_ok=True)
        with batch.pool_from_args(args, embeds_dir=embeds_dir) as pool:
            manifest = make_dataset(
                pool,
                out,
                embeds_dir,
                args.workflow,
                args.identities,
                args.images_per_identity,
                min_angle=args.min_angle,
                around=args.around,
                spread=args.spread,
                threshold=args.threshold,
                prompts=args.prompts,
                sets=sets,
                seed=args.seed,
                score_pack=args.score_pack,
                det_threshold=args.det_threshold,
                max_retries=args.max_retries,
            )
        total = args.identities * args.images_per_identity
        cli.say(
            f"dataset: {manifest['kept_images']}/{total} images kept over {args.identities} identities "
            f"(closest pair {manifest['closest_pair_deg']} deg); {os.path.join(out, 'manifest.json')}"
        )
        return cli.EXIT_OK if manifest["kept_images"] else cli.EXIT_FAILED
    except cli.RunError as e:
        cli.say(f"error: {e}")
        return e.code
    except KeyboardInterrupt:
        cli.say("interrupted; re-run the same command to resume")
        return cli.EXIT_FAILED
