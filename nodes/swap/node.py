"""ComfyUI nodes of the swap family (the only file here that imports ComfyUI)."""

from __future__ import annotations

import logging
import os

import torch

from ...core import paths
from ...core.errors import NoFaceError, VisageError
from ...core.images import check_image
from ...core.model_manager import MANAGER, resolve_dtype
from ...core.names import safe_filename
from ...core.numbers import finite_floats
from ...core.recognizers import RECOGNIZER_OVERRIDE_TIP, method_embeddings
from ...core.select import FUSIONS, ORDERS, apply_on_no_face, embeds_from_faces, expand_to, order_faces
from ...core.types import VISAGE_ANALYZER, VISAGE_EMBEDS, VISAGE_FACES
from .. import comfy_glue
from ..expression.motion import VISAGE_LIVEPORTRAIT
from ..face.analyzer import pick_engine
from ..face.masks import VISAGE_MASKER
from .expression_restore import expression_option
from .facemodel import load_face_model, save_face_model
from .models import ENGINES, PIXEL_BOOSTS, load_swapper
from .pipeline import MAPPINGS, MASK_TYPES, SWAP_TRAINED_ON, restore_pass, swap_batch
from .restore import Restorer, load_restorer

log = logging.getLogger("visage")

VISAGE_SWAPPER = "VISAGE_SWAPPER"
VISAGE_RESTORER = "VISAGE_RESTORER"
CATEGORY = "Visage/swap"

# Where ReActor users keep the 256-px swappers and their face models.
_SWAP_FOLDERS = (("insightface", ""), ("reswapper", "reswapper/"), ("hyperswap", "hyperswap/"))
_ORDER_CHOICES = [o for o in ORDERS if o != "most_similar"]


def _swap_files():
    names = []
    for folder, prefix in _SWAP_FOLDERS:
        for n in paths.list_files(folder, {".onnx"}):
            if folder == "insightface" and "/" in n:  # analysis packs live in insightface/models/<pack>/
                continue
            names.append(prefix + n)
    return names or ["inswapper_128.onnx"]


def _resolve_swap_file(name: str) -> str:
    for folder, prefix in _SWAP_FOLDERS:
        if prefix and name.startswith(prefix):
            return paths.find_file(folder, name[len(prefix) :])
    return paths.find_file("insightface", name)


def _restore_files():
    exts = {".pth", ".pt", ".safetensors", ".ckpt", ".onnx"}
    return paths.list_files("facerestore_models", exts) or ["GFPGANv1.4.pth"]


def _face_model_files():
    names = [n for n in paths.list_files("visage_faces", {".safetensors"})]
    names += ["reactor/" + n for n in paths.list_files("reactor_faces", {".safetensors"})]
    return names or ["(none)"]


def _swapper_loader(path, device, dtype):
    return load_swapper(path, "cpu", dtype, engine="torch")


def _swapper_loader_ort(path, device, dtype):
    return load_swapper(path, "cpu", torch.float32, engine="onnxruntime")


def _restorer_loader(path, device, dtype):
    return load_restorer(path, "cpu", dtype)


def _restorer_loader_ort(path, device, dtype):
    return load_restorer(path, "cpu", torch.float32, engine="onnxruntime")


def _device_inputs():
    return {
        "device": (
            ["auto", "cpu", "gpu"],
            {"default": "auto", "tooltip": "auto = ComfyUI's device (the GPU unless ComfyUI runs --cpu)."},
        ),
        "precision": (
            ["auto", "fp32", "fp16", "bf16"],
            {"default": "auto", "tooltip": "auto = fp16 on CUDA, fp32 on the CPU."},
        ),
    }


class VisageSwapModelLoader:
    DESCRIPTION = (
        "Loads a face-swap model: inswapper_128.onnx (models/insightface), reswapper_128/256 "
        "(models/reswapper) or hyperswap_1a/1b/1c_256 (models/hyperswap). The layout is read from the "
        "file's ONNX signature; it runs as a torch module on ComfyUI's device, batched over faces."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "swap_model": (_swap_files(), {"tooltip": "Face-swap ONNX file. Visage never downloads models."}),
                **_device_inputs(),
                "engine": (
                    list(ENGINES),
                    {
                        "default": "auto",
                        "tooltip": "auto: a torch module on the GPU (under "
                        "ComfyUI's memory management), onnxruntime on the CPU (faster there); torch: "
                        "always torch; onnxruntime: a CPU session.",
                    },
                ),
            }
        }

    RETURN_TYPES = (VISAGE_SWAPPER,)
    RETURN_NAMES = ("swapper",)
    OUTPUT_TOOLTIPS = ("The loaded swap model (for Swap Faces).",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    @finite_floats
    def load(self, swap_model, device="auto", precision="auto", engine="auto"):
        path = _resolve_swap_file(swap_model)
        dev = comfy_glue.torch_device(device)
        engine = pick_engine(engine, dev)
        if engine == "onnxruntime":
            return (
                MANAGER.get("swap:swapper:onnxruntime", path, _swapper_loader_ort, device=dev, dtype=torch.float32),
            )
        dt = resolve_dtype(precision, dev)
        return (MANAGER.get("swap:swapper", path, _swapper_loader, device=dev, dtype=dt),)


class VisageRestoreModelLoader:
    DESCRIPTION = (
        "Loads a face-restoration model (GFPGAN, RestoreFormer; CodeFormer when the optional package "
        "spandrel_extra_arches is installed - non-commercial licence) from models/facerestore_models "
        "through spandrel, or GPEN-BFR-256/512/1024/2048.onnx through Visage's ONNX path (routed by its "
        "signature). A GPEN .pth (not in spandrel) and other architectures (upscalers) are refused "
        "with a message. In Swap Faces the swapped face is restored before it is pasted."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "restore_model": (_restore_files(), {"tooltip": "Face-restoration file in models/facerestore_models."}),
                "strength": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.05,
                        "tooltip": "Blend of the restored face over the unrestored one (1 = fully restored).",
                    },
                ),
                "fidelity": (
                    "FLOAT",
                    {
                        "default": 0.5,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.05,
                        "tooltip": "CodeFormer only: 0 = strongest restoration, 1 = closest to the input.",
                    },
                ),
                **_device_inputs(),
            },
            "optional": {
                "engine": (
                    list(ENGINES),
                    {
                        "default": "auto",
                        "tooltip": "GPEN ONNX files: auto = torch on the GPU, onnxruntime on the CPU "
                        "(.pth files always run in torch).",
                    },
                ),
            },
        }

    RETURN_TYPES = (VISAGE_RESTORER,)
    RETURN_NAMES = ("restorer",)
    OUTPUT_TOOLTIPS = ("The loaded restoration model with its strength/fidelity.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    @finite_floats
    def load(self, restore_model, strength=1.0, fidelity=0.5, device="auto", precision="auto", engine="auto"):
        path = paths.find_file("facerestore_models", restore_model)
        dev = comfy_glue.torch_device(device)
        dt = resolve_dtype(precision, dev)
        if path.lower().endswith(".onnx") and pick_engine(engine, dev) == "onnxruntime":
            h = MANAGER.get("swap:restorer:onnxruntime", path, _restorer_loader_ort, device=dev, dtype=torch.float32)
        else:
            h = MANAGER.get("swap:restorer", path, _restorer_loader, device=dev, dtype=dt)
        return (Restorer(handle=h, name=restore_model, strength=float(strength), fidelity=float(fidelity)),)


def _mask_inputs():
    return {
        "mask_type": (
            list(MASK_TYPES),
            {
                "default": "box",
                "tooltip": "box = the aligned square, feathered; "
                "landmarks = the face outline from the 106/68 landmarks, feathered.",
            },
        ),
        "mask_erode": (
            "FLOAT",
            {
                "default": 0.1,
                "min": 0.0,
                "max": 0.5,
                "step": 0.01,
                "tooltip": "Shrink the paste mask by this fraction of the face crop.",
            },
        ),
        "mask_blur": (
            "FLOAT",
            {
                "default": 0.1,
                "min": 0.0,
                "max": 0.3,
                "step": 0.01,
                "tooltip": "Feather width as a fraction of the face crop (no hard seam at 0.03+).",
            },
        ),
    }


class VisageSwapFaces:
    DESCRIPTION = (
        "Swaps faces in an image or a batch of video frames. The source identity comes from "
        "source_image (analysed with the same analyzer) or source_embeds (Face Embeds / Load Face Model). "
        "Frames without a face pass through unchanged and in order. Options: a masker (Load Face Masker: "
        "occlusion and face regions, intersected with the box/landmark mask), pixel_boost (swap at 2x-8x the "
        "model's size by sub-pixel tiling), identity_strength (mix the source and target identities before "
        "the swapper; blend mixes pixels) and expression restore (LivePortrait). Outputs the images, a mask "
        "of the pasted faces, and how many faces were swapped."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "swapper": (VISAGE_SWAPPER, {"tooltip": "Swap model (Load Swap Model)."}),
                "image": ("IMAGE", {"tooltip": "Target image(s) / video frames whose faces are replaced."}),
                "mapping": (
                    list(MAPPINGS),
                    {
                        "default": "by_order",
                        "tooltip": "by_order: target face k gets source face k (one source face goes onto every face); "
                        "by_index: pairs source_indexes with target_indexes; by_identity: each target face "
                        "most like target_references row k gets source face k.",
                    },
                ),
                "order": (
                    _ORDER_CHOICES,
                    {"default": "left_to_right", "tooltip": "How faces are numbered in the source and the target."},
                ),
                "source_indexes": (
                    "STRING",
                    {"default": "0", "tooltip": "by_index: source face numbers, e.g. '0' or '1,0'."},
                ),
                "target_indexes": (
                    "STRING",
                    {"default": "", "tooltip": "by_index: target face numbers, e.g. '0,1' (empty = all)."},
                ),
                "blend": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.05,
                        "tooltip": "Opacity of the swapped face (1 = fully swapped).",
                    },
                ),
                **_mask_inputs(),
                "color_transfer": (
                    "BOOLEAN",
                    {
                        "default": False,
                        "tooltip": "Match the swapped face's colour (LAB mean/std) to the original skin.",
                    },
                ),
                "temporal_smoothing": (
                    "FLOAT",
                    {
                        "default": 0.5,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.05,
                        "tooltip": "Video: track faces across frames and smooth their keypoints so a "
                        "still head does not jitter (0 = off).",
                    },
                ),
                "on_no_face": (
                    ["passthrough", "error"],
                    {
                        "default": "passthrough",
                        "tooltip": "A target frame without a face: pass it through unchanged, or stop with an error.",
                    },
                ),
            },
            "optional": {
                "analyzer": (
                    VISAGE_ANALYZER,
                    {"tooltip": "Face analyzer (Load Face Analyzer), when 'faces' / 'source_faces' are not connected."},
                ),
                "faces": (
                    VISAGE_FACES,
                    {
                        "tooltip": "The target faces from Analyze Faces on 'image' (its face picker, gender, "
                        "min_score and on_no_face apply; frames it skipped pass through). Wins over 'analyzer'."
                    },
                ),
                "source_faces": (
                    VISAGE_FACES,
                    {"tooltip": "The source identity as faces from Analyze Faces (instead of source_image)."},
                ),
                "source_image": ("IMAGE", {"tooltip": "Photo(s) of the new face: 1 image, or 1 per target frame."}),
                "source_embeds": (
                    VISAGE_EMBEDS,
                    {"tooltip": "Identities instead of a source image (row k = source face k)."},
                ),
                "restorer": (VISAGE_RESTORER, {"tooltip": "Optional face restoration applied to each swapped face."}),
                "target_references": (
                    VISAGE_EMBEDS,
                    {"tooltip": "by_identity: who to replace (row k is replaced by source face k)."},
                ),
                "min_similarity": (
                    "FLOAT",
                    {
                        "default": 0.3,
                        "min": -1.0,
                        "max": 1.0,
                        "step": 0.01,
                        "tooltip": "by_identity: a target face less similar than this to every "
                        "reference stays unchanged.",
                    },
                ),
                "recognizer_override": (
                    "STRING",
                    {"default": "", "tooltip": RECOGNIZER_OVERRIDE_TIP.format(trained=SWAP_TRAINED_ON)},
                ),
                "masker": (
                    VISAGE_MASKER,
                    {
                        "tooltip": "Load Face Masker: the paste mask (box / landmarks) is intersected with its "
                        "occlusion mask (hands, hair and glasses over the target face stay) and face-part regions."
                    },
                ),
                "pixel_boost": (
                    [f"{b}x" for b in PIXEL_BOOSTS],
                    {
                        "default": "1x",
                        "tooltip": "Swap at N x the model's resolution (128 model: 2x = 256, 4x = 512, 8x = 1024): "
                        "the face is split into N*N interleaved crops, each swapped. Sharper, N*N times the cost.",
                    },
                ),
                "identity_strength": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.05,
                        "tooltip": "How much of the source identity (1 = the source; 0 = the target's own). Mixes "
                        "the identity embeddings, unlike 'blend' which fades pixels. Below 1 the target faces need "
                        f"the {SWAP_TRAINED_ON} embedding (the analyzer adds it).",
                    },
                ),
                "liveportrait": (
                    VISAGE_LIVEPORTRAIT,
                    {"tooltip": "Load LivePortrait: needed by expression_restore."},
                ),
                "expression_restore": (
                    "FLOAT",
                    {
                        "default": 0.0,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.05,
                        "tooltip": "Put the target's own expression back on the swapped face with LivePortrait "
                        "(1 = the target's expression, 0 = off). Needs 'liveportrait'.",
                    },
                ),
            },
        }

    RETURN_TYPES = ("IMAGE", "MASK", "INT")
    RETURN_NAMES = ("image", "mask", "count")
    OUTPUT_TOOLTIPS = (
        "The images with swapped faces (same count and order as the input).",
        "Where swapped faces were pasted (feathered), per image.",
        "How many faces were swapped in total.",
    )
    FUNCTION = "swap"
    CATEGORY = CATEGORY

    @finite_floats
    def swap(
        self,
        swapper,
        image,
        mapping="by_order",
        order="left_to_right",
        source_indexes="0",
        target_indexes="",
        blend=1.0,
        mask_type="box",
        mask_erode=0.1,
        mask_blur=0.1,
        color_transfer=False,
        temporal_smoothing=0.5,
        on_no_face="passthrough",
        source_image=None,
        source_embeds=None,
        restorer=None,
        target_references=None,
        min_similarity=0.3,
        analyzer=None,
        faces=None,
        source_faces=None,
        recognizer_override="",
        masker=None,
        pixel_boost="1x",
        identity_strength=1.0,
        liveportrait=None,
        expression_restore=0.0,
    ):
        image = check_image(image, "image")
        boost = _pixel_boost(pixel_boost)
        expression = expression_option(liveportrait, expression_restore)
        src = check_image(source_image, "source_image") if source_image is not None else None
        embs = None
        if source_embeds is not None:
            embs = [
                method_embeddings("Face swap", SWAP_TRAINED_ON, None, source_embeds, True, None, recognizer_override)
            ]
        progress = comfy_glue.Progress(2 * image.shape[0])
        inter = comfy_glue.intermediate_device()
        with comfy_glue.cancellable():
            out, mask, count = swap_batch(
                analyzer,
                image,
                swapper,
                source_embeddings=embs,
                source_image=src,
                mapping=mapping,
                order=order,
                source_indexes=source_indexes,
                target_indexes=target_indexes,
                references=target_references,
                min_similarity=min_similarity,
                blend=blend,
                mask_type=mask_type,
                erode=mask_erode,
                blur=mask_blur,
                color_transfer=color_transfer,
                temporal_smoothing=temporal_smoothing,
                on_no_face=on_no_face,
                restorer=restorer,
                progress=progress,
                out_device=inter,
                targets=faces,
                source_faces=source_faces,
                recognizer_override=recognizer_override,
                masker=masker,
                pixel_boost=boost,
                identity_strength=float(identity_strength),
                expression=expression,
            )
        return (out.to(inter), mask.to(inter), int(count))


class VisageRestoreFaces:
    DESCRIPTION = (
        "Restores every face (or the faces picked by order/max_faces) on its aligned crop with a "
        "GFPGAN / CodeFormer / RestoreFormer model and pastes it back inside the face's box."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "restorer": (VISAGE_RESTORER, {"tooltip": "Restoration model (Load Restore Model)."}),
                "image": ("IMAGE", {"tooltip": "Image(s) whose faces are restored."}),
                "order": (_ORDER_CHOICES, {"default": "largest", "tooltip": "Which faces come first for max_faces."}),
                "max_faces": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 64,
                        "tooltip": "Restore at most this many faces per image (0 = all).",
                    },
                ),
                "mask_erode": (
                    "FLOAT",
                    {
                        "default": 0.1,
                        "min": 0.0,
                        "max": 0.5,
                        "step": 0.01,
                        "tooltip": "Shrink the paste mask by this fraction of the crop.",
                    },
                ),
                "mask_blur": (
                    "FLOAT",
                    {
                        "default": 0.1,
                        "min": 0.0,
                        "max": 0.3,
                        "step": 0.01,
                        "tooltip": "Feather width as a fraction of the crop.",
                    },
                ),
                "on_no_face": (
                    ["passthrough", "error"],
                    {
                        "default": "passthrough",
                        "tooltip": "An image without a face: pass it through unchanged, or stop with an error.",
                    },
                ),
            },
            "optional": {
                "analyzer": (
                    VISAGE_ANALYZER,
                    {"tooltip": "Face analyzer (Load Face Analyzer), when 'faces' is not connected."},
                ),
                "faces": (
                    VISAGE_FACES,
                    {
                        "tooltip": "Faces from Analyze Faces on 'image' (its selection applies; frames it "
                        "skipped pass through). Wins over 'analyzer'."
                    },
                ),
            },
        }

    RETURN_TYPES = ("IMAGE", "INT")
    RETURN_NAMES = ("image", "count")
    OUTPUT_TOOLTIPS = ("The images with restored faces.", "How many faces were restored.")
    FUNCTION = "restore"
    CATEGORY = CATEGORY

    @finite_floats
    def restore(
        self,
        restorer,
        image,
        order="largest",
        max_faces=0,
        mask_erode=0.1,
        mask_blur=0.1,
        on_no_face="passthrough",
        analyzer=None,
        faces=None,
    ):
        image = check_image(image, "image")
        with comfy_glue.cancellable():
            out, count = self._restore(
                restorer, image, order, max_faces, mask_erode, mask_blur, on_no_face, analyzer, faces
            )
        return (out.to(comfy_glue.intermediate_device()), count)

    @staticmethod
    def _restore(restorer, image, order, max_faces, mask_erode, mask_blur, on_no_face, analyzer, faces):
        B = image.shape[0]
        analyse = faces is None
        total = 2 * B if analyse else B  # analysis (when not given faces), then restoration
        progress = comfy_glue.Progress(total)
        dev = restorer.handle.device
        frames = image.to(dev)
        fs = (
            _need_analyzer(analyzer, "Restore Faces").analyze(
                frames, tasks=[], progress=lambda d, t: progress(d, total)
            )
            if analyse
            else expand_to(faces, B)
        )
        done = B if analyse else 0
        fs, _ = apply_on_no_face(fs, on_no_face, "image batch")  # passthrough: such frames stay unchanged
        out = frames.clone()
        count = 0
        for i in range(B):
            progress.check_cancel()
            picked = order_faces(fs.faces[i], order)
            if max_faces > 0:
                picked = picked[:max_faces]
            if picked:
                idx = torch.zeros(len(picked), dtype=torch.long, device=dev)
                out[i : i + 1] = restore_pass(frames[i : i + 1], picked, idx, restorer, mask_erode, mask_blur)
                count += len(picked)
            progress(done + i + 1, total)
        return out, count


class VisageBuildFaceModel:
    DESCRIPTION = (
        "Builds one blended identity (a face model) from several photos of the same person: the "
        "chosen face of every image, fused into one embedding. Save it with Save Face Model."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "order": (
                    _ORDER_CHOICES,
                    {"default": "largest", "tooltip": "Which face of each photo is used (the first)."},
                ),
                "fusion": (
                    [f for f in FUSIONS if f != "none"],
                    {"default": "norm_mean", "tooltip": "How the faces are blended into one identity."},
                ),
                "on_no_face": (
                    ["skip", "error"],
                    {
                        "default": "skip",
                        "tooltip": "A photo without a face: leave it out of the blend, or stop with an error.",
                    },
                ),
            },
            "optional": {
                "analyzer": (VISAGE_ANALYZER, {"tooltip": "Face analyzer with a recognizer (with 'images')."}),
                "images": ("IMAGE", {"tooltip": "Photos of one person (any number), analysed with 'analyzer'."}),
                "faces": (
                    VISAGE_FACES,
                    {
                        "tooltip": "The photos' faces from Analyze Faces instead of analyzer + images (its "
                        "selection applies; the first face of each photo in 'order' is used)."
                    },
                ),
            },
        }

    RETURN_TYPES = (VISAGE_EMBEDS,)
    RETURN_NAMES = ("face_model",)
    OUTPUT_TOOLTIPS = ("The blended identity (connect to Swap Faces source_embeds or Save Face Model).",)
    FUNCTION = "build"
    CATEGORY = CATEGORY

    @finite_floats
    @comfy_glue.cancellable()
    def build(self, order="largest", fusion="norm_mean", on_no_face="skip", analyzer=None, images=None, faces=None):
        from ...core.types import FaceSet

        if faces is not None:
            fs = faces
        else:
            if images is None:
                raise VisageError(
                    "Build Face Model has no photos",
                    expected="'faces' from Analyze Faces, or 'images' with an 'analyzer'",
                    got="neither connected",
                    fix="connect Analyze Faces' faces to 'faces'",
                )
            fs = _need_analyzer(analyzer, "Build Face Model").analyze(
                check_image(images, "images"), tasks=["recognition"]
            )
        if fs.count == 0:  # a face model needs a face, whatever the policy
            raise NoFaceError(fs.images_without_face(), where="the face-model photos")
        fs, _ = apply_on_no_face(fs, on_no_face, "face-model photos")
        picked = tuple(tuple(order_faces(f, order)[:1]) for f in fs.faces)
        return (embeds_from_faces(FaceSet(faces=picked, image_sizes=fs.image_sizes, analyzer=fs.analyzer), fusion),)


def _pixel_boost(choice) -> int:
    text = str(choice).strip().lower().rstrip("x")
    if not text.isdigit() or int(text) not in PIXEL_BOOSTS:
        raise VisageError(
            f"Unknown pixel_boost {choice!r}",
            expected=" / ".join(f"{b}x" for b in PIXEL_BOOSTS),
            got=repr(choice),
            fix="pick a value from the list",
        )
    return int(text)


def _need_analyzer(analyzer, node: str):
    if analyzer is None:
        raise VisageError(
            f"{node} has nothing to find faces with",
            expected="'faces' from Analyze Faces, or an 'analyzer' (Load Face Analyzer)",
            got="neither connected",
            fix="connect Analyze Faces' faces to 'faces' (recommended: the face picker and on_no_face apply)",
        )
    return analyzer


def _safe_name(name: str) -> str:
    return safe_filename(name)  # empty -> VisageError "A file name is needed"


class VisageSaveFaceModel:
    DESCRIPTION = "Saves a face model (VISAGE_EMBEDS) as safetensors with metadata into models/visage/faces."
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "face_model": (VISAGE_EMBEDS, {"tooltip": "Identity from Build Face Model or Face Embeds."}),
                "name": ("STRING", {"default": "my_face", "tooltip": "File name (saved under models/visage/faces)."}),
                "overwrite": ("BOOLEAN", {"default": False, "tooltip": "Replace a file of the same name."}),
            }
        }

    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    OUTPUT_TOOLTIPS = ("Where the face model was written.",)
    FUNCTION = "save"
    CATEGORY = CATEGORY

    @finite_floats
    def save(self, face_model, name="my_face", overwrite=False):
        fname = _safe_name(name)
        folders = paths.folders("visage_faces")
        if not folders:
            raise VisageError(
                "No folder for face models is configured",
                expected="models/visage/faces",
                got="none",
                fix="check extra_model_paths.yaml",
            )
        path = paths.write_path(folders[0], fname)
        if os.path.lexists(path) and not overwrite:
            raise VisageError(
                f"A face model named '{fname}' exists already",
                expected="a new name or overwrite on",
                got=path,
                fix="change the name or switch overwrite on",
            )
        save_face_model(face_model, path, name=fname)
        return {"ui": {"text": [path]}, "result": (path,)}


class VisageLoadFaceModel:
    DESCRIPTION = (
        "Loads a face model: Visage's (models/visage/faces) or ReActor's (models/reactor/faces, shown as reactor/...)."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"face_model": (_face_model_files(), {"tooltip": "Saved face model file."})}}

    RETURN_TYPES = (VISAGE_EMBEDS,)
    RETURN_NAMES = ("face_model",)
    OUTPUT_TOOLTIPS = ("The identity (connect to Swap Faces source_embeds).",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    @finite_floats
    def load(self, face_model):
        if face_model.startswith("reactor/"):
            path = paths.find_file("reactor_faces", face_model[len("reactor/") :])
        else:
            path = paths.find_file("visage_faces", face_model)
        return (load_face_model(path),)


NODE_CLASS_MAPPINGS = {
    "VisageSwapModelLoader": VisageSwapModelLoader,
    "VisageRestoreModelLoader": VisageRestoreModelLoader,
    "VisageSwapFaces": VisageSwapFaces,
    "VisageRestoreFaces": VisageRestoreFaces,
    "VisageBuildFaceModel": VisageBuildFaceModel,
    "VisageSaveFaceModel": VisageSaveFaceModel,
    "VisageLoadFaceModel": VisageLoadFaceModel,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "VisageSwapModelLoader": "Load Swap Model",
    "VisageRestoreModelLoader": "Load Restore Model",
    "VisageSwapFaces": "Swap Faces",
    "VisageRestoreFaces": "Restore Faces",
    "VisageBuildFaceModel": "Build Face Model",
    "VisageSaveFaceModel": "Save Face Model",
    "VisageLoadFaceModel": "Load Face Model",
}
