"""Face Detailer and Verify Identity nodes (the only ComfyUI-facing file of the detailer family)."""

from __future__ import annotations

import json
import logging

from ...core import paths
from ...core.errors import VisageError
from ...core.images import check_image
from ...core.model_manager import resolve_dtype
from ...core.numbers import finite_floats
from ...core.recognizers import recognizer_id
from ...core.select import ON_NO_FACE, ON_NO_FACE_TIP, apply_on_no_face, expand_to
from ...core.types import VISAGE_ANALYZER, VISAGE_EMBEDS, VISAGE_FACES, FaceEmbeds, FaceSet
from .. import comfy_glue
from ..adapters import registry
from ..face.masks import VISAGE_MASKER
from ..face.recognizer import load_recognizer, recognizer_choices
from ..infiniteyou.apply import TRAINED_ON as IY_TRAINED_ON
from ..pulid.sdxl_apply import TRAINED_ON as PULID_TRAINED_ON
from .detail import Settings, detail, masker_mask_fn
from .geometry import PASTE_MODES
from .identity import IDENTITY_MAPS, embeds_row, hook_for, map_identities
from .verify import make_scorer, overlay, verify

log = logging.getLogger("visage")

CATEGORY = "Visage/detailer"
AUTO = "auto"
NONE = "none"


def _recognizer_files():
    return recognizer_choices(
        paths.list_files("insightface_packs", {".onnx"}), paths.list_files("facexlib", {".pth", ".pt"})
    )


def _load_recognizer(name: str, rid_wanted: str = ""):
    if name in ("", AUTO):
        files = [f for f in _recognizer_files() if recognizer_id(f) == rid_wanted]
        if not files:
            raise VisageError(
                f"No {rid_wanted} recognizer file to score with",
                expected=f"{rid_wanted} in a pack folder of models/insightface/models (or models/facexlib)",
                got="recognizers: " + (", ".join(_recognizer_files()) or "none"),
                fix="pick the recognizer explicitly",
            )
        name = files[0]
    folder = "facexlib" if name.lower().endswith((".pth", ".pt")) else "insightface_packs"
    dev = comfy_glue.torch_device("auto")
    return load_recognizer(paths.find_file(folder, name), dev, resolve_dtype("auto", dev))


def _pick(faceset: FaceSet, face_index: int):
    if face_index < 0:
        return [list(per) for per in faceset.faces]
    return [[per[face_index]] if face_index < len(per) else [] for per in faceset.faces]


def _table(rows, **meta) -> str:
    return json.dumps({**meta, "faces": rows}, indent=1)


SCORER_TIP = (
    "Recognizer that scores each face against its reference. 'auto': the one the identity adapter was trained "
    "on (InstantID glintr100, FaceID w600k_r50), else the reference's own; 'none': no scoring (one attempt)."
)


class VisageFaceDetailer:
    DESCRIPTION = (
        "Re-draws each selected face with your MODEL: crops it with context (aligned, rotation undone) at a working "
        "resolution, VAE-encodes, samples the face region (noise mask from the landmarks, or face parsing with a masker) "
        "with ComfyUI's sampler, "
        "decodes and pastes back (feather, colour transfer). With a reference, each face gets its own identity "
        "(InstantID / FaceID applied per face, by index or most similar), is scored by a recognizer and re-sampled "
        "with seed + 1, + 2 ... until it reaches min_similarity or attempts run out; the best candidate is kept, "
        "the input face included, so a face never scores below the input."
    )
    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE", "STRING", VISAGE_FACES)
    RETURN_NAMES = ("image", "table", "faces")
    OUTPUT_TOOLTIPS = (
        "The images with the detailed faces (after on_no_face = skip: the kept images).",
        "JSON: per face the identity, status (detailed / kept_input / skipped + reason), input score, every "
        "attempt's seed and score, the winning attempt (0 = input) and its score.",
        "The faces (same positions: the geometry is kept).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The images the faces were found in."}),
                "model": ("MODEL", {"tooltip": "The model to sample faces with (any ComfyUI can sample)."}),
                "vae": ("VAE", {"tooltip": "The model's VAE."}),
                "positive": ("CONDITIONING", {"tooltip": "Positive conditioning for the face."}),
                "negative": ("CONDITIONING", {"tooltip": "Negative conditioning."}),
                "faces": (VISAGE_FACES, {"tooltip": "Faces from Analyze Faces (the image's)."}),
                "seed": (
                    "INT",
                    {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "tooltip": "Attempt a uses seed + a - 1."},
                ),
                "steps": ("INT", {"default": 20, "min": 1, "max": 1000, "tooltip": "Sampling steps."}),
                "cfg": ("FLOAT", {"default": 7.0, "min": 0.0, "max": 100.0, "step": 0.1, "tooltip": "CFG scale."}),
                "sampler_name": (comfy_glue.sampler_names(), {"tooltip": "ComfyUI sampler."}),
                "scheduler": (comfy_glue.scheduler_names(), {"tooltip": "ComfyUI scheduler."}),
                "denoise": (
                    "FLOAT",
                    {
                        "default": 0.45,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.01,
                        "tooltip": "How much of the face is redrawn.",
                    },
                ),
                "working_resolution": (
                    "INT",
                    {
                        "default": 512,
                        "min": 64,
                        "max": 4096,
                        "step": 64,
                        "tooltip": "Side of the face crop the model samples (512 for SD1.5, 1024 for SDXL / Flux).",
                    },
                ),
                "feather": (
                    "FLOAT",
                    {
                        "default": 0.05,
                        "min": 0.0,
                        "max": 0.3,
                        "step": 0.01,
                        "tooltip": "Paste-back feather (x crop side).",
                    },
                ),
                "color_transfer": (
                    "BOOLEAN",
                    {"default": False, "tooltip": "Match the new face's LAB colour to the old."},
                ),
                "face_index": (
                    "INT",
                    {"default": -1, "min": -1, "max": 255, "tooltip": "-1: every face; N: face N of each image."},
                ),
                "attempts": (
                    "INT",
                    {"default": 1, "min": 1, "max": 64, "tooltip": "Samples per face at most (with a reference)."},
                ),
                "min_similarity": (
                    "FLOAT",
                    {
                        "default": 0.5,
                        "min": -1.0,
                        "max": 1.0,
                        "step": 0.01,
                        "tooltip": "Stop re-sampling a face once its score reaches this.",
                    },
                ),
                "on_no_face": (list(ON_NO_FACE), {"default": "passthrough", "tooltip": ON_NO_FACE_TIP}),
            },
            "optional": {
                "reference": (
                    VISAGE_EMBEDS,
                    {"tooltip": "Identity per face (one row per identity): applied per face and scored against."},
                ),
                "recognizer": ([AUTO, NONE] + _recognizer_files(), {"default": AUTO, "tooltip": SCORER_TIP}),
                "identity_adapter": (
                    "VISAGE_ID_ADAPTER",
                    {
                        "tooltip": "InstantID or IP-Adapter FaceID, applied per face with its reference row (PuLID: "
                        "the 'pulid' input)."
                    },
                ),
                "identity_weight": (
                    "FLOAT",
                    {"default": 0.8, "min": 0.0, "max": 3.0, "step": 0.01, "tooltip": "Identity attention weight."},
                ),
                "control_net": (
                    "CONTROL_NET",
                    {"tooltip": "InstantID's IdentityNet or InfiniteYou's InfuseNet (keypoints redrawn in the crop)."},
                ),
                "cn_strength": (
                    "FLOAT",
                    {"default": 0.8, "min": 0.0, "max": 10.0, "step": 0.01, "tooltip": "IdentityNet strength."},
                ),
                "identity_map": (
                    list(IDENTITY_MAPS),
                    {
                        "default": "index",
                        "tooltip": "index: face j of an image takes reference row j (one row: every face); "
                        "most_similar: the row closest to the face's own embedding.",
                    },
                ),
                "context": (
                    "FLOAT",
                    {"default": 1.0, "min": 0.5, "max": 4.0, "step": 0.05, "tooltip": "Zoom out around the face."},
                ),
                "max_upscale": (
                    "FLOAT",
                    {
                        "default": 8.0,
                        "min": 1.0,
                        "max": 64.0,
                        "step": 0.5,
                        "tooltip": "Skip faces the crop would magnify more than this (reason in the table).",
                    },
                ),
                "mask_grow": (
                    "FLOAT",
                    {"default": 0.08, "min": 0.0, "max": 0.5, "step": 0.01, "tooltip": "Grow the landmark mask."},
                ),
                "paste_mode": (
                    list(PASTE_MODES),
                    {
                        "default": "full",
                        "tooltip": "full: paste the new face (what the sampler drew is what you get). residual: paste "
                        "only the change (new - crop): what the sampler left alone stays bit-exact and detail finer "
                        "than the working resolution is kept (faces larger than the crop), but where the face was "
                        "redrawn the old fine detail shows through faintly.",
                    },
                ),
                "pulid": (
                    "VISAGE_PULID",
                    {
                        "tooltip": "PuLID SDXL / PuLID-FLUX (Load PuLID Model), applied per face: face j's identity "
                        "comes from reference face j (reference_image + reference_faces) and EVA-CLIP.",
                    },
                ),
                "eva_clip": ("VISAGE_EVA_CLIP", {"tooltip": "EVA-CLIP for PuLID (Load EVA-CLIP)."}),
                "reference_image": ("IMAGE", {"tooltip": "PuLID: the image(s) the reference faces are in."}),
                "reference_faces": (
                    VISAGE_FACES,
                    {
                        "tooltip": "PuLID: the reference faces, one per identity row in order (the faces the "
                        "'reference' embeds were made from)."
                    },
                ),
                "masker": (
                    VISAGE_MASKER,
                    {
                        "tooltip": "Load Face Masker: the noise mask is its face regions (face parsing) x occlusion "
                        "in the crop, grown by mask_grow, instead of the landmark hull (e.g. skin + hair)."
                    },
                ),
                "infiniteyou": (
                    "VISAGE_INFINITEYOU",
                    {
                        "tooltip": "InfiniteYou (Load InfiniteYou, Flux), applied per face from its reference row; "
                        "InfuseNet on control_net, its keypoint image drawn in the crop; identity_weight = its "
                        "strength."
                    },
                ),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @finite_floats
    @comfy_glue.cancellable()
    def run(
        self,
        image,
        model,
        vae,
        positive,
        negative,
        faces: FaceSet,
        seed,
        steps,
        cfg,
        sampler_name,
        scheduler,
        denoise,
        working_resolution,
        feather,
        color_transfer,
        face_index,
        attempts,
        min_similarity,
        on_no_face,
        reference: FaceEmbeds = None,
        recognizer=AUTO,
        identity_adapter=None,
        identity_weight=0.8,
        control_net=None,
        cn_strength=0.8,
        identity_map="index",
        context=1.0,
        max_upscale=8.0,
        mask_grow=0.08,
        paste_mode="full",
        pulid=None,
        eva_clip=None,
        reference_image=None,
        reference_faces=None,
        masker=None,
        infiniteyou=None,
        unique_id=None,
    ):
        images = check_image(image)
        fs = expand_to(faces, images.shape[0], "image")
        fs, keep = apply_on_no_face(fs, on_no_face, "Face Detailer image")
        images = images[keep] if len(keep) != images.shape[0] else images
        picked = _pick(fs, face_index)
        given = [a for a in (identity_adapter, pulid, infiniteyou) if a is not None]
        if len(given) > 1:
            raise VisageError(
                "The detailer applies one identity method per face",
                expected="one of identity_adapter, pulid, infiniteyou",
                got=f"{len(given)} connected",
                fix="disconnect all but one (or apply the others to the MODEL / conditioning before the detailer)",
            )
        adapter = given[0] if given else None
        if adapter is not None and reference is None:
            raise VisageError(
                "An identity adapter needs the identities",
                expected="'reference' (Face Embeds, one row per identity)",
                got="no reference",
                fix="connect Face Embeds / Load Face Embeds to 'reference'",
            )
        ids, skip = map_identities(picked, reference, identity_map)
        score = None
        rec_name = None
        if reference is not None and recognizer != NONE:
            want = reference.encoder
            if pulid is not None and recognizer == AUTO:
                want = PULID_TRAINED_ON
            elif infiniteyou is not None and recognizer == AUTO:
                want = IY_TRAINED_ON
            elif identity_adapter is not None and recognizer == AUTO:
                kind = identity_adapter.info.kind
                key = "instantid" if kind == "instantid" else "faceid"
                want = registry.METHODS[key].trained_on if key in registry.METHODS else want
            rec = _load_recognizer(recognizer, want)
            rec_name = rec.id
            score = make_scorer(rec, reference)
        hook = hook_for(adapter) if adapter is not None else None
        extra = {"control_net": control_net, "cn_strength": cn_strength, "vae": vae}
        if pulid is not None:
            from ..face import parsing

            dev = comfy_glue.torch_device("auto")
            extra.update(
                eva_clip=eva_clip,
                parser=parsing.load_parsing(paths.find_file(parsing.FOLDER, parsing.FILE_NAME), device=dev),
                ref_image=None if reference_image is None else check_image(reference_image),
                ref_faces=reference_faces,
                text_attention=comfy_glue.text_attention,
            )

        def sample(crop, mask, job, s):
            m, pos, neg = model, positive, negative
            if hook is not None and job.identity is not None:
                if "patched" not in job.state:
                    job.state["patched"] = hook(
                        comfy_glue,
                        model,
                        positive,
                        negative,
                        adapter,
                        embeds_row(reference, job.identity),
                        identity_weight,
                        job,
                        **extra,
                    )
                m, pos, neg = job.state["patched"]
            return comfy_glue.sample_pixels(
                m, vae, pos, neg, crop, mask, s, steps, cfg, sampler_name, scheduler, denoise
            )

        settings = Settings(
            size=int(working_resolution),
            context=float(context),
            max_upscale=float(max_upscale),
            seed=int(seed),
            attempts=int(attempts),
            min_similarity=float(min_similarity),
            feather=float(feather),
            mask_grow=float(mask_grow),
            color_transfer=bool(color_transfer),
            paste_mode=str(paste_mode),
        )
        total = max(sum(len(p) for p in picked) * max(int(attempts), 1), 1)
        out, rows = detail(
            images.float(),
            picked,
            ids,
            sample,
            settings,
            score=score,
            progress=comfy_glue.Progress(total, node_id=unique_id),
            skip=skip,
            mask_fn=masker_mask_fn(masker),
        )
        table = _table(rows, recognizer=rec_name, min_similarity=float(min_similarity), seed=int(seed))
        log.info("Visage: Face Detailer %s", "; ".join(f"{r['image']}/{r['face']} {r['status']}" for r in rows))
        return {"ui": {"text": [table]}, "result": (out.to(comfy_glue.intermediate_device()), table, fs)}


class VisageVerifyIdentity:
    DESCRIPTION = (
        "Scores each face of an image against its reference identity with a recognizer: the face is found again "
        "(with an analyzer) or, when detection misses it, scored at its known position. Outputs a per-face table, "
        "whether every face reached the threshold, and an overlay (green passed, red failed)."
    )
    CATEGORY = CATEGORY
    FUNCTION = "verify"
    RETURN_TYPES = ("STRING", "BOOLEAN", "IMAGE", "FLOAT")
    RETURN_NAMES = ("table", "passed", "overlay", "min_score")
    OUTPUT_TOOLTIPS = (
        "JSON: per face the identity row, where it was scored (redetected / known_position), score, passed.",
        "True when every face with a reference reaches the threshold (False when there is none).",
        "The images with each face's box and score.",
        "The lowest score (-1 when nothing was scored).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The images to check (e.g. the detailer's output)."}),
                "faces": (VISAGE_FACES, {"tooltip": "The faces' known positions (Analyze Faces / the detailer's)."}),
                "reference": (VISAGE_EMBEDS, {"tooltip": "The identities (one row per identity)."}),
                "recognizer": (
                    [AUTO] + _recognizer_files(),
                    {"default": AUTO, "tooltip": "Recognizer to score with ('auto': the reference's own)."},
                ),
                "threshold": (
                    "FLOAT",
                    {"default": 0.5, "min": -1.0, "max": 1.0, "step": 0.01, "tooltip": "Pass when score >= this."},
                ),
                "identity_map": (
                    list(IDENTITY_MAPS),
                    {"default": "index", "tooltip": "index: face j takes row j; most_similar: the closest row."},
                ),
                "on_no_face": (list(ON_NO_FACE), {"default": "passthrough", "tooltip": ON_NO_FACE_TIP}),
            },
            "optional": {
                "analyzer": (VISAGE_ANALYZER, {"tooltip": "Re-detect the faces in the image before scoring."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @finite_floats
    @comfy_glue.cancellable()
    def verify(
        self,
        image,
        faces: FaceSet,
        reference,
        recognizer,
        threshold,
        identity_map,
        on_no_face,
        analyzer=None,
        unique_id=None,
    ):
        images = check_image(image)
        fs = expand_to(faces, images.shape[0], "image")
        fs, keep = apply_on_no_face(fs, on_no_face, "Verify Identity image")
        images = images[keep] if len(keep) != images.shape[0] else images
        picked = [list(p) for p in fs.faces]
        ids, _ = map_identities(picked, reference, identity_map)
        rec = _load_recognizer(recognizer, reference.encoder)
        progress = comfy_glue.Progress(max(images.shape[0], 1), node_id=unique_id)
        detected = None
        if analyzer is not None:
            found = analyzer.analyze(images, progress=progress)
            detected = [list(p) for p in found.faces]
        rows = verify(images, picked, ids, rec, reference, float(threshold), detected, progress=progress)
        scored = [r["score"] for r in rows if r["score"] is not None]
        passed = bool(scored) and all(r["passed"] for r in rows if r["score"] is not None)
        table = _table(rows, recognizer=rec.id, threshold=float(threshold), passed=passed)
        ov = overlay(images, rows, float(threshold)).to(comfy_glue.intermediate_device())
        return {
            "ui": {"text": [table]},
            "result": (table, passed, ov, float(min(scored)) if scored else -1.0),
        }


NODE_CLASS_MAPPINGS = {"VisageFaceDetailer": VisageFaceDetailer, "VisageVerifyIdentity": VisageVerifyIdentity}
NODE_DISPLAY_NAME_MAPPINGS = {"VisageFaceDetailer": "Face Detailer", "VisageVerifyIdentity": "Verify Identity"}
