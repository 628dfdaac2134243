"""Face-analysis nodes (the only ComfyUI-facing file of the face family)."""

from __future__ import annotations

import logging
import os

import torch

from ...core import paths
from ...core.errors import NoFaceError, VisageError
from ...core.images import check_image
from ...core.model_manager import resolve_dtype
from ...core.names import safe_filename
from ...core.numbers import finite_floats
from ...core.select import (
    FUSIONS,
    GENDERS,
    ON_NO_FACE,
    ON_NO_FACE_TIP,
    ORDERS,
    apply_on_no_face,
    embeds_from_faces,
    frames_for,
    select,
    similarity,
)
from ...core.types import (
    VISAGE_ALIGNED,
    VISAGE_ANALYZER,
    VISAGE_EMBEDS,
    VISAGE_FACES,
    FaceEmbeds,
    FaceSet,
)
from .. import comfy_glue
from .align import TEMPLATES, align_faces
from .analyzer import ENGINES, FaceAnalyzer, load_analyzer
from .draw import MASK_SHAPES, face_mask, keypoints_image, preview
from .embeds_io import load_embeds, save_embeds
from .masks import DEFAULT_REGIONS, REGIONS, VISAGE_MASKER, FaceMasker, frame_masks, load_occluder, parse_regions
from .pack import list_packs
from .recognizer import load_recognizer, recognizer_choices

log = logging.getLogger("visage")


def _packs():
    packs = list_packs(paths.folders("insightface_packs"))
    return packs or ["(no packs found in models/insightface/models)"]


def _find_pack(name: str) -> str:
    src = paths.source_for(name) or "the insightface model packs (antelopev2, buffalo_l)"
    return paths.find_dir("insightface_packs", name, source=src, label="insightface")


def _ui_faces(ordered, selected: FaceSet):
    per_image = []
    for i, cands in enumerate(ordered):
        chosen = {id(f) for f in selected.faces[i]}
        per_image.append(
            [
                {
                    "index": k,
                    "bbox": [round(float(v), 2) for v in f.bbox],
                    "score": round(f.score, 4),
                    "selected": id(f) in chosen,
                }
                for k, f in enumerate(cands)
            ]
        )
    return per_image


class VisageFaceAnalyzerLoader:
    DESCRIPTION = (
        "Loads an insightface face-analysis model pack (detector, landmarks, gender/age, recognizer) "
        "from models/insightface/models/<pack>/ as torch models on ComfyUI's device. Never downloads."
    )
    CATEGORY = "Visage/analysis"
    FUNCTION = "load"
    RETURN_TYPES = (VISAGE_ANALYZER,)
    RETURN_NAMES = ("analyzer",)
    OUTPUT_TOOLTIPS = ("The loaded face analyzer; connect it to Analyze Faces and to the swap/adapter nodes.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pack": (
                    _packs(),
                    {
                        "tooltip": "Model pack folder in models/insightface/models/ (antelopev2, buffalo_l, "
                        "or any folder of insightface-style ONNX files)."
                    },
                ),
                "det_size": (
                    "INT",
                    {
                        "default": 640,
                        "min": 160,
                        "max": 2048,
                        "step": 32,
                        "tooltip": "Detector input size (square). Larger finds smaller faces, slower. "
                        "Detectors exported at a fixed size always use their own.",
                    },
                ),
                "device": (
                    ["auto", "cpu", "gpu"],
                    {"default": "auto", "tooltip": "auto = ComfyUI's device (honours --cpu)."},
                ),
                "precision": (
                    ["auto", "fp32", "fp16", "bf16"],
                    {
                        "default": "auto",
                        "tooltip": "Per-face models' precision; auto = fp16 on GPU, "
                        "fp32 on CPU. Detection always runs in fp32.",
                    },
                ),
                "det_threshold": (
                    "FLOAT",
                    {
                        "default": 0.5,
                        "min": 0.05,
                        "max": 0.99,
                        "step": 0.01,
                        "tooltip": "Detector confidence threshold.",
                    },
                ),
                "engine": (
                    list(ENGINES),
                    {
                        "default": "auto",
                        "tooltip": "auto: torch modules on the GPU (under ComfyUI's memory management), "
                        "onnxruntime on the CPU (faster there, faces and frames spread over the cores); torch: "
                        "always torch (on a CPU 0.6-0.9x onnxruntime's speed, and far slower while other "
                        "programs load the CPU); onnxruntime: CPU sessions.",
                    },
                ),
            }
        }

    @finite_floats
    def load(self, pack, det_size, device, precision, det_threshold, engine="auto"):
        dev = comfy_glue.torch_device(device)
        dtype = resolve_dtype(precision, dev)
        return (
            load_analyzer(
                _find_pack(pack), dev, dtype, det_size=(det_size, det_size), det_thresh=det_threshold, engine=engine
            ),
        )


class VisageAnalyzeFaces:
    DESCRIPTION = (
        "Finds and analyses every face in an IMAGE batch: boxes, 5 keypoints, landmarks, pose, "
        "age/gender and identity embeddings, then orders and selects faces. The preview numbers "
        "each face by its position in the chosen order; click a face in the preview to select it."
    )
    CATEGORY = "Visage/analysis"
    FUNCTION = "analyze"
    RETURN_TYPES = (VISAGE_FACES, "IMAGE", "INT", "IMAGE")
    RETURN_NAMES = ("faces", "preview", "count", "image")
    OUTPUT_TOOLTIPS = (
        "Selected faces per image (the one face type every Visage method consumes).",
        "The images with every candidate face boxed and numbered; selected faces in green.",
        "Total number of selected faces in the batch (0 when no image has a face).",
        "The analysed images that the faces describe: the whole batch, or only the kept images after on_no_face = 'skip'.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "analyzer": (VISAGE_ANALYZER, {"tooltip": "From Load Face Analyzer."}),
                "image": ("IMAGE", {"tooltip": "Images to analyse (a batch; every image is analysed)."}),
                "order": (
                    list(ORDERS),
                    {
                        "default": "largest",
                        "tooltip": "How faces are numbered: by size, position, detector score, or "
                        "similarity to 'reference' (most_similar).",
                    },
                ),
                "gender": (
                    list(GENDERS),
                    {"default": "any", "tooltip": "Keep only faces of this gender (needs genderage)."},
                ),
                "face_index": (
                    "INT",
                    {
                        "default": -1,
                        "min": -1,
                        "max": 255,
                        "tooltip": "-1 keeps every face; N keeps only face N of the order (the number "
                        "in the preview). Clicking a face in the preview sets it.",
                    },
                ),
                "max_faces": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 256,
                        "tooltip": "Keep at most this many faces per image (0 = no limit).",
                    },
                ),
                "min_score": (
                    "FLOAT",
                    {
                        "default": 0.0,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.01,
                        "tooltip": "Drop detections below this score (on top of the analyzer's threshold).",
                    },
                ),
                "on_no_face": (list(ON_NO_FACE), {"default": "passthrough", "tooltip": ON_NO_FACE_TIP}),
            },
            "optional": {
                "reference": (VISAGE_EMBEDS, {"tooltip": "Identity for order = most_similar."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @finite_floats
    @comfy_glue.cancellable()
    def analyze(
        self,
        analyzer: FaceAnalyzer,
        image,
        order,
        gender,
        face_index,
        max_faces,
        min_score,
        on_no_face,
        reference=None,
        unique_id=None,
    ):
        if not isinstance(analyzer, FaceAnalyzer):
            raise VisageError(
                "'analyzer' is not a Visage face analyzer",
                expected="the output of Load Face Analyzer",
                got=type(analyzer).__name__,
            )
        images = check_image(image)
        progress = comfy_glue.Progress(images.shape[0], node_id=unique_id)
        found = analyzer.analyze(images, progress=progress)
        sel, ordered = select(
            found,
            order=order,
            gender=gender,
            face_index=face_index,
            max_faces=max_faces,
            min_score=min_score,
            reference=reference,
        )
        prev = preview(images, ordered, sel)
        ui_faces = _ui_faces(ordered, sel)
        sel, keep = apply_on_no_face(sel, on_no_face)
        if len(keep) != images.shape[0]:
            prev, ui_faces, images = prev[keep], [ui_faces[i] for i in keep], images[keep]
        ui = {
            "images": comfy_glue.save_temp_images(prev, "visage_faces"),
            "visage_faces": ui_faces,
            "visage_image_size": [list(s) for s in sel.image_sizes],
        }
        inter = comfy_glue.intermediate_device()
        return {"ui": ui, "result": (sel, prev.to(inter), sel.count, images.to(inter))}


def _recognizer_files():
    names = recognizer_choices(
        paths.list_files("insightface_packs", {".onnx"}),
        paths.list_files("facexlib", {".pth", ".pt"}),
    )
    return names or ["(no recognizer found in models/insightface/models or models/facexlib)"]


def _find_recognizer(name: str) -> str:
    folder = "facexlib" if name.lower().endswith((".pth", ".pt")) else "insightface_packs"
    return paths.find_file(folder, name)


class VisageAddFaceRecognizer:
    DESCRIPTION = (
        "Adds another recognizer's identity embedding to faces already analysed, without detecting again: "
        "crops are aligned from the faces' keypoints. Use it when a method was trained on a recognizer your "
        "analysis pack does not hold (Arc2Face: arcface.onnx; IP-Adapter FaceID: w600k_r50.onnx; "
        "InstantID / PuLID: glintr100.onnx; InfiniteYou: recognition_arcface_ir_se50.pth). Every recognizer "
        "in the analyzer's own pack folder already runs."
    )
    CATEGORY = "Visage/analysis"
    FUNCTION = "add"
    RETURN_TYPES = (VISAGE_FACES,)
    RETURN_NAMES = ("faces",)
    OUTPUT_TOOLTIPS = ("The same faces, each also carrying this recognizer's embedding.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": (
                    "IMAGE",
                    {"tooltip": "The images the faces were found in (Analyze Faces' input or its 'image')."},
                ),
                "faces": (VISAGE_FACES, {"tooltip": "Faces from Analyze Faces."}),
                "recognizer": (
                    _recognizer_files(),
                    {
                        "tooltip": "A recognizer file: an ArcFace-style ONNX in a pack folder under "
                        "models/insightface/models/ (e.g. antelopev2/arcface.onnx), or facexlib's "
                        "recognition_arcface_ir_se50.pth in models/facexlib/."
                    },
                ),
            },
            "optional": {
                "device": (
                    ["auto", "cpu", "gpu"],
                    {"default": "auto", "tooltip": "auto = ComfyUI's device (honours --cpu)."},
                ),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @finite_floats
    @comfy_glue.cancellable()
    def add(self, image, faces: FaceSet, recognizer, device="auto", unique_id=None):
        dev = comfy_glue.torch_device(device)
        rec = load_recognizer(_find_recognizer(recognizer), dev, resolve_dtype("auto", dev))
        return (rec.add_to(image, faces, progress=comfy_glue.Progress(max(faces.batch_size, 1), node_id=unique_id)),)


class VisageFaceEmbeds:
    DESCRIPTION = "One identity from the selected faces (several photos of a person fuse into one embedding)."
    CATEGORY = "Visage/analysis"
    FUNCTION = "embed"
    RETURN_TYPES = (VISAGE_EMBEDS,)
    RETURN_NAMES = ("embeds",)
    OUTPUT_TOOLTIPS = ("Identity embedding(s): raw (InstantID) and L2-normalised (FaceID, Arc2Face, similarity).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "faces": (VISAGE_FACES, {"tooltip": "Faces from Analyze Faces (all selected faces are used)."}),
                "fusion": (
                    list(FUSIONS),
                    {
                        "default": "norm_mean",
                        "tooltip": "norm_mean: average of unit vectors; mean: average of raw vectors; "
                        "median: element-wise median; outlier_rejection: drop faces unlike "
                        "the rest, then norm_mean; none: one embedding per face.",
                    },
                ),
                "outlier_threshold": (
                    "FLOAT",
                    {
                        "default": 0.3,
                        "min": -1.0,
                        "max": 1.0,
                        "step": 0.01,
                        "tooltip": "outlier_rejection: minimum cosine to the median identity.",
                    },
                ),
            }
        }

    @finite_floats
    def embed(self, faces: FaceSet, fusion, outlier_threshold):
        return (embeds_from_faces(faces, fusion, outlier_threshold),)


def _embeds_dir() -> str:
    return paths.folders("visage_embeds")[0]


class VisageSaveEmbeds:
    DESCRIPTION = "Saves identity embeddings as .safetensors (with encoder, dimension and fusion metadata)."
    CATEGORY = "Visage/analysis"
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ()

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "embeds": (VISAGE_EMBEDS, {"tooltip": "Embeddings to save."}),
                "name": (
                    "STRING",
                    {
                        "default": "identity",
                        "tooltip": "File name (without extension) in models/visage/embeds/. An empty name is refused.",
                    },
                ),
            },
            "optional": {
                "overwrite": (
                    "BOOLEAN",
                    {
                        # True, like the function default: the editor and visage-run give a workflow saved
                        # before this switch existed the widget default, so any other default would change
                        # what saved workflows do
                        "default": True,
                        "tooltip": "On: replace a file of the same name (what this node always did; the run "
                        "reports 'replaced'). Off: an existing file stops the run with a message, nothing is "
                        "written.",
                    },
                ),
            },
        }

    @finite_floats
    def save(self, embeds: FaceEmbeds, name, overwrite=True):
        # overwrite=True when absent: API workflows saved before the switch keep their behaviour
        fname = safe_filename(name)  # empty / blank -> VisageError "A file name is needed"
        path = paths.write_path(_embeds_dir(), fname)
        if not overwrite and os.path.lexists(path):
            raise VisageError(
                f"Face embeddings named '{fname}' exist already",
                expected="a new name, or overwrite switched on",
                got=f"'{fname}' in {_embeds_dir()}",
                fix="change the name or switch 'overwrite' on",
            )
        replaced = os.path.lexists(path)
        path = save_embeds(embeds, path)
        verb = "replaced" if replaced else "saved"
        log.info("Visage: %s embeddings %s", verb, path)
        return {"ui": {"text": [f"{verb} {embeds.count}x{embeds.dim} ({embeds.encoder}): {path}"]}}


class VisageLoadEmbeds:
    DESCRIPTION = "Loads identity embeddings saved by Save Face Embeds (models/visage/embeds/)."
    CATEGORY = "Visage/analysis"
    FUNCTION = "load"
    RETURN_TYPES = (VISAGE_EMBEDS,)
    RETURN_NAMES = ("embeds",)
    OUTPUT_TOOLTIPS = ("The saved identity embeddings.",)

    @classmethod
    def INPUT_TYPES(cls):
        files = paths.list_files("visage_embeds", {".safetensors"}) or ["(no saved embeddings)"]
        return {"required": {"name": (files, {"tooltip": "A file in models/visage/embeds/."})}}

    @finite_floats
    def load(self, name):
        return (load_embeds(paths.find_file("visage_embeds", name)),)


class VisageFaceSimilarity:
    DESCRIPTION = "Cosine similarity of each face to a reference identity: best score, a table, and an overlay."
    CATEGORY = "Visage/analysis"
    FUNCTION = "compare"
    RETURN_TYPES = ("FLOAT", "STRING", "IMAGE")
    RETURN_NAMES = ("best", "table", "overlay")
    OUTPUT_TOOLTIPS = (
        "Highest similarity over all faces (-1 when there is no face).",
        "One line per face: image, face, similarity.",
        "The image (or a black canvas) with each face's score drawn on it.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "reference": (VISAGE_EMBEDS, {"tooltip": "The identity to compare against."}),
                "faces": (VISAGE_FACES, {"tooltip": "Faces from Analyze Faces."}),
            },
            "optional": {"image": ("IMAGE", {"tooltip": "Draw the scores on these images (the analysed batch)."})},
        }

    @finite_floats
    def compare(self, reference: FaceEmbeds, faces: FaceSet, image=None):
        import cv2
        import numpy as np

        from ...core.images import from_uint8_np, to_uint8_np

        rows, per_image, best = [], [], -1.0
        for i, fs in enumerate(faces.faces):
            cur = []
            for k, f in enumerate(fs):
                s = similarity(f, reference)
                best = max(best, s)
                rows.append(f"image {i}\tface {k}\tsimilarity {s:.4f}")
                cur.append({"face": k, "score": round(s, 4), "bbox": [round(float(v), 1) for v in f.bbox]})
            per_image.append(cur)
        table = "\n".join(rows) if rows else "no faces"
        if image is not None:
            base = frames_for(check_image(image), faces)
        else:
            base = torch.stack([torch.zeros((h, w, 3)) for h, w in faces.image_sizes])
        out = []
        for i in range(base.shape[0]):
            img = np.ascontiguousarray(to_uint8_np(base[i]))
            for d in per_image[i] if i < len(per_image) else []:
                x1, y1, x2, y2 = [int(v) for v in d["bbox"]]
                col = (40, 220, 90) if d["score"] >= 0.4 else (230, 80, 60)
                cv2.rectangle(img, (x1, y1), (x2, y2), col, 2)
                cv2.putText(img, f"{d['score']:.2f}", (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.6, col, 2)
            out.append(from_uint8_np(img))
        return {
            "ui": {"visage_similarity": per_image, "text": [table]},
            "result": (float(best), table, torch.stack(out).to(comfy_glue.intermediate_device())),
        }


class VisageAlignFaces:
    DESCRIPTION = (
        "Aligned face crops (ArcFace 112 or FFHQ 512 template, similarity transform from the 5 keypoints) "
        "plus the transforms to paste them back."
    )
    CATEGORY = "Visage/analysis"
    FUNCTION = "align"
    RETURN_TYPES = ("IMAGE", VISAGE_ALIGNED)
    RETURN_NAMES = ("crops", "aligned")
    OUTPUT_TOOLTIPS = (
        "One crop per face (all faces of all images, in order).",
        "Crops with their forward/inverse affine matrices and image indices.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The analysed images."}),
                "faces": (VISAGE_FACES, {"tooltip": "Faces from Analyze Faces."}),
                "template": (list(TEMPLATES), {"default": "arcface_112", "tooltip": "Alignment template."}),
                "crop_size": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 2048,
                        "step": 16,
                        "tooltip": "Crop size; 0 = the template's own (112 or 512).",
                    },
                ),
                "on_no_face": (
                    ["error", "passthrough"],
                    {
                        "default": "error",
                        "tooltip": "No face at all: 'error', or 'passthrough' = one black "
                        "crop and an empty 'aligned' (count 0).",
                    },
                ),
            }
        }

    @finite_floats
    def align(self, image, faces: FaceSet, template, crop_size, on_no_face):
        images = frames_for(check_image(image), faces)
        al = align_faces(images, faces, template, crop_size or None)
        if al.count == 0:
            if on_no_face == "error":
                raise NoFaceError(faces.images_without_face())
            blank = torch.zeros((1, al.size, al.size, 3))
            return (blank, al)
        return (al.crops.to(comfy_glue.intermediate_device()), al)


NONE = "(none)"


def _parser_files():
    names = [NONE]
    names += ["facexlib/" + n for n in paths.list_files("facexlib", {".pth"}) if "pars" in n.lower()]
    names += ["face_parsing/" + n for n in paths.list_files("face_parsing", {".onnx", ".pth"})]
    return names


def _occluder_files():
    return [NONE] + ["face_parsing/" + n for n in paths.list_files("face_parsing", {".onnx"})]


def _find_in(name: str) -> str:
    folder, _, rest = name.partition("/")
    if folder not in ("facexlib", "face_parsing") or not rest:
        raise VisageError(
            f"Unknown mask model '{name}'",
            expected="an entry of the list (facexlib/... or face_parsing/...)",
            got=repr(name),
            fix="pick the file from the node's list",
        )
    return paths.find_file(folder, rest)


class VisageFaceMaskerLoader:
    DESCRIPTION = (
        "Loads the models that make masks from the face itself: a face parser (facexlib's parsing_bisenet.pth "
        "in models/facexlib, or bisenet_resnet_18/34.onnx in models/face_parsing) for face-part regions, and "
        "an occluder (xseg_1/2/3.onnx in models/face_parsing) for what covers the face (hands, hair, "
        "glasses). Connect it to Swap Faces (the paste mask becomes box/landmarks x occlusion x regions) "
        "or Face Mask."
    )
    CATEGORY = "Visage/analysis"
    FUNCTION = "load"
    RETURN_TYPES = (VISAGE_MASKER,)
    RETURN_NAMES = ("masker",)
    OUTPUT_TOOLTIPS = ("The mask models and the regions to keep.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "parser": (_parser_files(), {"tooltip": "Face parser for the regions ((none) = no region mask)."}),
                "regions": (
                    "STRING",
                    {
                        "default": DEFAULT_REGIONS,
                        "tooltip": "Face parts to keep, comma-separated: " + ", ".join(REGIONS) + " ('face' = "
                        "every part of the face itself; '' = no region mask).",
                    },
                ),
                "occluder": (_occluder_files(), {"tooltip": "XSeg occluder ((none) = no occlusion mask)."}),
                "device": (
                    ["auto", "cpu", "gpu"],
                    {"default": "auto", "tooltip": "auto = ComfyUI's device (the GPU unless ComfyUI runs --cpu)."},
                ),
                "precision": (
                    ["auto", "fp32", "fp16", "bf16"],
                    {"default": "auto", "tooltip": "auto = fp16 on CUDA, fp32 on the CPU."},
                ),
                "engine": (
                    list(ENGINES),
                    {
                        "default": "auto",
                        "tooltip": "ONNX files: auto = torch on the GPU, onnxruntime on the CPU.",
                    },
                ),
            }
        }

    @finite_floats
    def load(self, parser, regions, occluder, device="auto", precision="auto", engine="auto"):
        from .parsing import load_parsing

        names = parse_regions(regions)
        dev = comfy_glue.torch_device(device)
        dt = resolve_dtype(precision, dev)
        p = load_parsing(_find_in(parser), dev, dt, engine) if parser != NONE and names else None
        o = load_occluder(_find_in(occluder), dev, dt, engine) if occluder != NONE else None
        if p is None and o is None:
            log.warning("Visage: Load Face Masker has neither regions with a parser nor an occluder: no mask")
        return (FaceMasker(parser=p, occluder=o, regions=names if p is not None else ()),)


class VisageFaceMask:
    DESCRIPTION = (
        "A mask of the selected faces: landmark hull, ellipse or box, grown and feathered; with a masker "
        "and the image, intersected with its face-part regions / occlusion mask."
    )
    CATEGORY = "Visage/analysis"
    FUNCTION = "mask"
    RETURN_TYPES = ("MASK",)
    RETURN_NAMES = ("mask",)
    OUTPUT_TOOLTIPS = ("1 inside the faces, 0 outside (all zero for an image without a face).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "faces": (VISAGE_FACES, {"tooltip": "Faces from Analyze Faces."}),
                "shape": (
                    list(MASK_SHAPES),
                    {
                        "default": "hull",
                        "tooltip": "hull: convex hull of the dense landmarks (box corners without them); "
                        "ellipse: inscribed in the box; box.",
                    },
                ),
                "grow": (
                    "INT",
                    {"default": 0, "min": -256, "max": 256, "tooltip": "Grow (>0) or shrink (<0) by pixels."},
                ),
                "feather": (
                    "INT",
                    {"default": 0, "min": 0, "max": 256, "tooltip": "Soften the edge over this many pixels."},
                ),
            },
            "optional": {
                "masker": (
                    VISAGE_MASKER,
                    {"tooltip": "Load Face Masker: keep only its regions / the unoccluded face (needs 'image')."},
                ),
                "image": ("IMAGE", {"tooltip": "The analysed images (the masker reads their pixels)."}),
            },
        }

    @finite_floats
    def mask(self, faces: FaceSet, shape, grow, feather, masker=None, image=None):
        m = face_mask(faces, shape, grow, feather)
        if masker is not None and masker.active:
            if image is None:
                raise VisageError(
                    "Face Mask needs the image for the masker",
                    expected="'image' connected (the images Analyze Faces ran on)",
                    got="a masker without an image",
                    fix="connect the analysed images to Face Mask's 'image'",
                )
            images = check_image(image, "image")
            with comfy_glue.cancellable():
                fm = frame_masks(masker, frames_for(images, faces, "image"), faces)
            m = m.to(fm.device) * fm
        return (m.to(comfy_glue.intermediate_device()),)


class VisageKeypointsImage:
    DESCRIPTION = "InstantID-style keypoint image (the IdentityNet control image) from the selected faces."
    CATEGORY = "Visage/analysis"
    FUNCTION = "draw"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("keypoints",)
    OUTPUT_TOOLTIPS = ("Coloured keypoints and limbs on black, the size of each analysed image (black when no face).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"faces": (VISAGE_FACES, {"tooltip": "Faces from Analyze Faces."})}}

    @finite_floats
    def draw(self, faces: FaceSet):
        return (keypoints_image(faces).to(comfy_glue.intermediate_device()),)


NODE_CLASS_MAPPINGS = {
    "VisageFaceAnalyzerLoader": VisageFaceAnalyzerLoader,
    "VisageAnalyzeFaces": VisageAnalyzeFaces,
    "VisageAddFaceRecognizer": VisageAddFaceRecognizer,
    "VisageFaceEmbeds": VisageFaceEmbeds,
    "VisageSaveEmbeds": VisageSaveEmbeds,
    "VisageLoadEmbeds": VisageLoadEmbeds,
    "VisageFaceSimilarity": VisageFaceSimilarity,
    "VisageAlignFaces": VisageAlignFaces,
    "VisageFaceMask": VisageFaceMask,
    "VisageFaceMaskerLoader": VisageFaceMaskerLoader,
    "VisageKeypointsImage": VisageKeypointsImage,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "VisageFaceAnalyzerLoader": "Load Face Analyzer",
    "VisageAnalyzeFaces": "Analyze Faces",
    "VisageAddFaceRecognizer": "Add Face Recognizer",
    "VisageFaceEmbeds": "Face Embeds",
    "VisageSaveEmbeds": "Save Face Embeds",
    "VisageLoadEmbeds": "Load Face Embeds",
    "VisageFaceSimilarity": "Face Similarity",
    "VisageAlignFaces": "Align Faces",
    "VisageFaceMask": "Face Mask",
    "VisageFaceMaskerLoader": "Load Face Masker",
    "VisageKeypointsImage": "Face Keypoints Image",
}
