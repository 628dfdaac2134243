"""ComfyUI nodes of the expression family (the only module here that imports ComfyUI)."""

from __future__ import annotations

import logging
import os

import folder_paths

from ...core import paths
from ...core.errors import VisageError
from ...core.images import check_image
from ...core.model_manager import resolve_dtype
from ...core.names import safe_stem
from ...core.numbers import finite_floats
from ...core.types import VISAGE_EMBEDS, VISAGE_FACES
from .. import comfy_glue
from . import crop as C
from . import loader as L
from . import motion as M
from . import pipeline as PL

log = logging.getLogger("visage")
CATEGORY = "Visage/expression"
EXPR_SUBDIR = os.path.join("visage", "expressions")


def _expr_dir() -> str:
    return os.path.join(folder_paths.get_output_directory(), EXPR_SUBDIR)


def _expr_files():
    d = _expr_dir()
    if not os.path.isdir(d):
        return []
    return sorted(f for f in os.listdir(d) if f.endswith(".safetensors"))


def _select_inputs():
    return {
        "face_select": (
            list(C.SELECT_MODES),
            {
                "default": "largest",
                "tooltip": "Which face to use in each image: the largest, the one at face_index (in the order of "
                "the faces input), the one nearest the image centre, or the one most similar to 'reference'.",
            },
        ),
        "face_index": ("INT", {"default": 0, "min": 0, "max": 63, "tooltip": "Face number for face_select = index."}),
    }


def _paste_inputs():
    return {
        "crop_scale": (
            "FLOAT",
            {
                "default": 2.3,
                "min": 1.5,
                "max": 3.5,
                "step": 0.05,
                "tooltip": "Crop side as a multiple of the face's landmark extent (LivePortrait uses 2.3).",
            },
        ),
        "feather": (
            "FLOAT",
            {
                "default": 0.1,
                "min": 0.0,
                "max": 0.28,
                "step": 0.01,
                "tooltip": "Width of the soft edge of the paste mask (fraction of the crop); the mask always fades out "
                "before the crop border, so the box never shows.",
            },
        ),
        "color_transfer": (
            "BOOLEAN",
            {
                "default": True,
                "tooltip": "Match the generated face's colour (LAB mean/std under the mask) to the original crop.",
            },
        ),
        "stitching": (
            "BOOLEAN",
            {
                "default": True,
                "tooltip": "Run LivePortrait's stitching network so shoulders/edges stay aligned with the original.",
            },
        ),
    }


def _device_out(t):
    return t.to(comfy_glue.intermediate_device())


class VisageLivePortraitLoader:
    DESCRIPTION = (
        "Loads LivePortrait's five networks from models/liveportrait/ (appearance_feature_extractor, "
        "motion_extractor, warping_module, spade_generator, stitching_retargeting_module .safetensors, "
        "the files LivePortraitKJ / AdvancedLivePortrait use). Never downloads; wrong files are "
        "rejected with what they hold."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (M.VISAGE_LIVEPORTRAIT,)
    RETURN_NAMES = ("liveportrait",)
    OUTPUT_TOOLTIPS = ("The LivePortrait networks (loaded through ComfyUI's model management).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "device": (
                    ["auto", "cpu", "gpu"],
                    {"default": "auto", "tooltip": "auto = ComfyUI's device; cpu forces the CPU."},
                ),
                "precision": (
                    ["auto", "fp32", "fp16", "bf16"],
                    {"default": "auto", "tooltip": "auto = fp16 on a GPU, fp32 on the CPU."},
                ),
            }
        }

    @finite_floats
    def load(self, device, precision):
        dev = comfy_glue.torch_device(device)
        dtype = resolve_dtype(precision, dev)
        return (L.load_models(dev, dtype),)


def _slider_inputs():
    tips = {
        "rotate_pitch": "Head pitch in degrees (+ = look up).",
        "rotate_yaw": "Head yaw in degrees.",
        "rotate_roll": "Head roll in degrees.",
        "blink": "Eyes open (+) / closed (-).",
        "eyebrow": "Raise (+) / lower (-) the eyebrows.",
        "wink": "Wink amount.",
        "pupil_x": "Gaze left/right.",
        "pupil_y": "Gaze up/down.",
        "aaa": "Open the mouth ('aaa').",
        "eee": "Stretch the mouth ('eee').",
        "woo": "Round the lips ('woo').",
        "smile": "Smile amount.",
    }
    return {
        name: (
            "FLOAT",
            {
                "default": d,
                "min": lo,
                "max": hi,
                "step": st,
                "tooltip": tips[name] + " Same scale as AdvancedLivePortrait's slider.",
            },
        )
        for name, (d, lo, hi, st) in M.SLIDERS.items()
    }


class VisageExpressionEditor:
    DESCRIPTION = (
        "Edits the expression and head pose of one face per image with AdvancedLivePortrait's sliders "
        "(any face: largest, by index, nearest the centre, or by identity), optionally copying eyes, "
        "mouth, expression or pose from a sample image, and pastes the result back without seams."
    )
    CATEGORY = CATEGORY
    FUNCTION = "edit"
    RETURN_TYPES = ("IMAGE", "IMAGE", "MASK", M.VISAGE_EXPRESSION)
    RETURN_NAMES = ("image", "crop", "mask", "expression")
    OUTPUT_TOOLTIPS = (
        "The images with the edited face pasted back.",
        "The generated 512x512 LivePortrait crops (one per edited face).",
        "Where each image was changed (frame-space paste mask).",
        "The applied expression offset (sliders + sample + add_expression) for Save/Interpolate.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        req = {
            "liveportrait": (M.VISAGE_LIVEPORTRAIT, {"tooltip": "From Load LivePortrait."}),
            "image": ("IMAGE", {"tooltip": "Image(s) whose face to edit; every image of the batch is edited."}),
            "faces": (VISAGE_FACES, {"tooltip": "Analyze Faces run on the same images."}),
        }
        req.update(_select_inputs())
        req.update(_slider_inputs())
        req.update(
            {
                "src_ratio": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.01,
                        "tooltip": "How much of the face's own expression to keep (0 = neutral).",
                    },
                ),
                "sample_parts": (
                    list(M.SAMPLE_PARTS),
                    {
                        "default": "expression",
                        "tooltip": "What to copy from sample_image: its expression, its head rotation, its mouth, its eyes or all.",
                    },
                ),
                "sample_ratio": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": -0.2,
                        "max": 1.2,
                        "step": 0.01,
                        "tooltip": "How strongly to copy the sample's parts.",
                    },
                ),
            }
        )
        req.update(_paste_inputs())
        req["on_no_face"] = (
            list(PL.ON_NO_FACE),
            {
                "default": "error",
                "tooltip": "Image without a face: error, skip (drop it from the output) or passthrough (return it unchanged).",
            },
        )
        return {
            "required": req,
            "optional": {
                "reference": (VISAGE_EMBEDS, {"tooltip": "Identity to edit when face_select = identity."}),
                "sample_image": ("IMAGE", {"tooltip": "Optional face to copy parts from (first image is used)."}),
                "sample_faces": (
                    VISAGE_FACES,
                    {"tooltip": "Analyze Faces of sample_image (needed with sample_image)."},
                ),
                "add_expression": (
                    M.VISAGE_EXPRESSION,
                    {"tooltip": "An expression offset added on top (e.g. Load Expression)."},
                ),
            },
        }

    @finite_floats
    @comfy_glue.cancellable()
    def edit(
        self,
        liveportrait,
        image,
        faces,
        face_select,
        face_index,
        src_ratio,
        sample_parts,
        sample_ratio,
        crop_scale,
        feather,
        color_transfer,
        stitching,
        on_no_face,
        reference=None,
        sample_image=None,
        sample_faces=None,
        add_expression=None,
        **sliders,
    ):
        image = check_image(image, "image")
        offset = M.slider_expression(sliders)
        if add_expression is not None:
            offset = offset + add_expression
        eng = PL.Engine(liveportrait, cancel=comfy_glue.Progress.check_cancel)
        sample = None
        if sample_image is not None:
            if sample_faces is None:
                raise VisageError(
                    "sample_image needs its faces",
                    expected="sample_faces connected",
                    got="only sample_image",
                    fix="run Analyze Faces on the sample image too",
                )
            sample = PL.sample_info(eng, check_image(sample_image, "sample_image"), sample_faces, crop_scale=crop_scale)
        res = PL.edit(
            eng,
            image,
            faces,
            offset,
            select=face_select,
            index=face_index,
            reference=reference,
            src_ratio=src_ratio,
            sample=sample,
            sample_parts=sample_parts,
            sample_ratio=sample_ratio,
            stitching=stitching,
            crop_scale=crop_scale,
            feather=feather,
            color_transfer=color_transfer,
            on_no_face=on_no_face,
            progress=comfy_glue.Progress(image.shape[0]),
        )
        return (_device_out(res.images), _device_out(res.crops), _device_out(res.masks), res.expression)


class VisageExpressionTransfer:
    DESCRIPTION = (
        "Animates a face of the source image with the expressions and head motion of driving frames "
        "(LivePortrait, relative or absolute motion, eye/lip retargeting, temporal smoothing), and pastes "
        "each generated face back into the source frame without seams."
    )
    CATEGORY = CATEGORY
    FUNCTION = "transfer"
    RETURN_TYPES = ("IMAGE", "IMAGE", "MASK")
    RETURN_NAMES = ("image", "crop", "mask")
    OUTPUT_TOOLTIPS = (
        "One frame per driving frame (fewer only with on_no_face = skip).",
        "The generated 512x512 crops of the animated frames.",
        "Frame-space paste masks (zero for passed-through frames).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        req = {
            "liveportrait": (M.VISAGE_LIVEPORTRAIT, {"tooltip": "From Load LivePortrait."}),
            "source_image": (
                "IMAGE",
                {"tooltip": "The face to animate: one image, or as many frames as driving_images."},
            ),
            "source_faces": (VISAGE_FACES, {"tooltip": "Analyze Faces run on source_image."}),
            "driving_images": ("IMAGE", {"tooltip": "Driving frames (any size; the largest face of each drives)."}),
            "driving_faces": (VISAGE_FACES, {"tooltip": "Analyze Faces run on driving_images."}),
        }
        req.update(_select_inputs())
        req.update(
            {
                "motion": (
                    ["relative", "absolute"],
                    {
                        "default": "relative",
                        "tooltip": "relative: the source moves by the driving's change from its first frame (keeps the "
                        "source's own look); absolute: copies the driving's pose and expression.",
                    },
                ),
                "region": (list(M.REGIONS), {"default": "all", "tooltip": "What follows the driving frames."}),
                "eye_retargeting": (
                    "BOOLEAN",
                    {
                        "default": False,
                        "tooltip": "Drive the eye openness by the driving's eye ratio. The official 203-point ratio "
                        "when LivePortrait's landmark.onnx is in models/liveportrait/, else a 68-point approximation "
                        "(needs 68-point landmarks). As in LivePortrait, in relative mode retargeting replaces the "
                        "other motion.",
                    },
                ),
                "lip_retargeting": (
                    "BOOLEAN",
                    {
                        "default": False,
                        "tooltip": "Drive the lip openness by the driving's lip ratio: the official 203-point ratio "
                        "with landmark.onnx, else a 68-point approximation (needs 68-point landmarks).",
                    },
                ),
                "smoothing": (
                    "FLOAT",
                    {
                        "default": 0.3,
                        "min": 0.0,
                        "max": 0.95,
                        "step": 0.05,
                        "tooltip": "Temporal smoothing of the driving motion (0 = off; 0.5 ~ 3-frame window; 0.9 ~ 30).",
                    },
                ),
                "multiplier": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.0,
                        "max": 2.0,
                        "step": 0.05,
                        "tooltip": "Scales the motion away from the source's own keypoints.",
                    },
                ),
            }
        )
        req.update(_paste_inputs())
        req["on_no_face"] = (
            list(PL.ON_NO_FACE),
            {
                "default": "passthrough",
                "tooltip": "Frame without a face (driving or source): passthrough returns the source frame "
                "unchanged, skip drops it, error stops.",
            },
        )
        return {
            "required": req,
            "optional": {"reference": (VISAGE_EMBEDS, {"tooltip": "Identity to animate when face_select = identity."})},
        }

    @finite_floats
    @comfy_glue.cancellable()
    def transfer(
        self,
        liveportrait,
        source_image,
        source_faces,
        driving_images,
        driving_faces,
        face_select,
        face_index,
        motion,
        region,
        eye_retargeting,
        lip_retargeting,
        smoothing,
        multiplier,
        crop_scale,
        feather,
        color_transfer,
        stitching,
        on_no_face,
        reference=None,
    ):
        src = check_image(source_image, "source_image")
        drv = check_image(driving_images, "driving_images")
        res = PL.transfer(
            PL.Engine(liveportrait, cancel=comfy_glue.Progress.check_cancel),
            src,
            source_faces,
            drv,
            driving_faces,
            select=face_select,
            index=face_index,
            reference=reference,
            mode=motion,
            region=region,
            eye_retargeting=eye_retargeting,
            lip_retargeting=lip_retargeting,
            smoothing=smoothing,
            multiplier=multiplier,
            stitching=stitching,
            crop_scale=crop_scale,
            feather=feather,
            color_transfer=color_transfer,
            on_no_face=on_no_face,
            progress=comfy_glue.Progress(drv.shape[0]),
        )
        return (_device_out(res.images), _device_out(res.crops), _device_out(res.masks))


class VisageSaveExpression:
    DESCRIPTION = "Saves an expression offset as .safetensors in output/visage/expressions/."
    CATEGORY = CATEGORY
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    OUTPUT_TOOLTIPS = ("The file written.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "expression": (M.VISAGE_EXPRESSION, {"tooltip": "From the Expression Editor, Load or Interpolate."}),
                "name": ("STRING", {"default": "expression", "tooltip": "File name (letters, digits, - and _)."}),
                "overwrite": (
                    "BOOLEAN",
                    {"default": False, "tooltip": "Replace a file of the same name (else a number is appended)."},
                ),
            }
        }

    @finite_floats
    def save(self, expression, name, overwrite):
        stem = safe_stem(name, default="expression")
        d = _expr_dir()
        path = paths.write_path(d, stem + ".safetensors", "expression file name")
        k = 1
        while not overwrite and os.path.lexists(path):
            path = paths.write_path(d, f"{stem}_{k:03d}.safetensors", "expression file name")
            k += 1
        expression.save(path)
        return {"ui": {"text": [os.path.basename(path)]}, "result": (path,)}


class VisageLoadExpression:
    DESCRIPTION = "Loads an expression offset saved by Save Expression, scaled by ratio."
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (M.VISAGE_EXPRESSION,)
    RETURN_NAMES = ("expression",)
    OUTPUT_TOOLTIPS = ("The expression offset.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "name": (_expr_files() or ["(none saved yet)"], {"tooltip": "A file in output/visage/expressions/."}),
                "ratio": (
                    "FLOAT",
                    {"default": 1.0, "min": -2.0, "max": 2.0, "step": 0.01, "tooltip": "Scale of the offset."},
                ),
            }
        }

    @finite_floats
    def load(self, name, ratio):
        # ComfyUI's own list check applies (no VALIDATE_INPUTS); a posted name is still only read from
        # inside the folder, and what a file holds is never echoed
        path = paths.find_in([_expr_dir()], name, what="expression file name")
        if path is None:
            raise VisageError(
                f"Expression file '{name}' was not found",
                expected=f"a file in {_expr_dir()}",
                got="no such file",
                fix="save one with Save Expression first (then refresh the node list)",
            )
        try:
            expr = M.Expression.load(path)
        except Exception:
            raise VisageError(
                f"Expression file '{name}' cannot be used",
                expected="a .safetensors file written by Save Expression (format visage_expression with tensors "
                "exp, rotation, scale, t)",
                got="a file that is not one (unreadable, or another kind of safetensors file)",
                fix="save the expression again with Save Expression",
            ) from None
        return (expr.scaled(ratio),)


class VisageInterpolateExpression:
    DESCRIPTION = "Blends two expression offsets: (1 - weight) * a + weight * b."
    CATEGORY = CATEGORY
    FUNCTION = "blend"
    RETURN_TYPES = (M.VISAGE_EXPRESSION,)
    RETURN_NAMES = ("expression",)
    OUTPUT_TOOLTIPS = ("The blended offset.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "a": (M.VISAGE_EXPRESSION, {"tooltip": "Expression at weight 0."}),
                "b": (M.VISAGE_EXPRESSION, {"tooltip": "Expression at weight 1."}),
                "weight": (
                    "FLOAT",
                    {
                        "default": 0.5,
                        "min": -1.0,
                        "max": 2.0,
                        "step": 0.01,
                        "tooltip": "Blend weight (beyond 0..1 extrapolates).",
                    },
                ),
            }
        }

    @finite_floats
    def blend(self, a, b, weight):
        return (a.lerp(b, weight),)


NODE_CLASS_MAPPINGS = {
    "VisageLivePortraitLoader": VisageLivePortraitLoader,
    "VisageExpressionEditor": VisageExpressionEditor,
    "VisageExpressionTransfer": VisageExpressionTransfer,
    "VisageSaveExpression": VisageSaveExpression,
    "VisageLoadExpression": VisageLoadExpression,
    "VisageInterpolateExpression": VisageInterpolateExpression,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "VisageLivePortraitLoader": "Load LivePortrait",
    "VisageExpressionEditor": "Expression Editor",
    "VisageExpressionTransfer": "Expression Transfer",
    "VisageSaveExpression": "Save Expression",
    "VisageLoadExpression": "Load Expression",
    "VisageInterpolateExpression": "Interpolate Expression",
}
