"""Everything Visage needs from ComfyUI, in one place (folders, ModelPatcher backend, progress and cancel, memory hooks). Imported only by node modules.

* registers Visage's model folders with ``folder_paths`` (keeping ``extra_model_paths.yaml``
  entries users already made for the same names),
* installs the ComfyUI backend of the model manager: every model is wrapped in a
  ``ModelPatcher`` and loaded through ``comfy.model_management.load_models_gpu`` right before use,
  so ComfyUI can evict it (and ``/free`` / "unload models" frees it),
* device helpers (ComfyUI's torch device, intermediate device) and a progress helper that
  reports through ``comfy.utils.ProgressBar`` and honours cancel.
"""

from __future__ import annotations

import logging
import os

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import folder_paths
import torch

from ..core import model_manager, paths

log = logging.getLogger("visage")


def _register_folders() -> None:
    models_dir = folder_paths.models_dir
    for name, sub in paths.FOLDERS.items():
        default = os.path.join(models_dir, *sub.split("/"))
        if name in folder_paths.folder_names_and_paths:
            folder_list, exts = folder_paths.folder_names_and_paths[name]
            if default not in folder_list:
                folder_list.append(default)
        else:
            folder_paths.folder_names_and_paths[name] = ([default], set(paths.MODEL_EXTENSIONS))
    # packs may also be configured by users as "insightface" only: derive <insightface>/models
    ins = folder_paths.folder_names_and_paths["insightface"][0]
    packs = folder_paths.folder_names_and_paths["insightface_packs"][0]
    for p in ins:
        cand = os.path.join(p, "models")
        if cand not in packs:
            packs.append(cand)


def _resolver(folder_name: str):
    return folder_paths.get_folder_paths(folder_name)


class ComfyBackend:
    """Model-manager backend: ModelPatcher + load_models_gpu, so ComfyUI owns GPU residency."""

    name = "comfy"

    def wrap(self, handle: model_manager.ModelHandle) -> None:
        module = handle._module
        if not isinstance(module, torch.nn.Module):
            return  # a CPU-only runtime session (e.g. onnxruntime on the CPU): no GPU memory to manage
        offload = mm.unet_offload_device() if handle.device.type != "cpu" else torch.device("cpu")
        module.to(offload)
        patcher = comfy.model_patcher.ModelPatcher(
            module, load_device=handle.device, offload_device=offload, size=handle.nbytes
        )
        handle.backend_state = patcher

    def ready(self, handle: model_manager.ModelHandle):
        patcher = handle.backend_state
        if patcher is None:
            return handle._module
        mm.load_models_gpu([patcher])
        return patcher.model

    def evict(self, cache, keep_key) -> None:
        # ComfyUI decides what stays on the GPU; on the host we keep every loaded file once
        # (the same budget as outside ComfyUI applies to host memory).
        model_manager.LocalBackend(model_manager.DEFAULT_BUDGET * 4).evict(cache, keep_key)

    def release(self, handle: model_manager.ModelHandle) -> None:
        patcher = handle.backend_state
        if patcher is not None:
            try:
                patcher.detach()
            except Exception:  # pragma: no cover - best effort
                pass


def install() -> None:
    _register_folders()
    paths.set_resolver(_resolver)
    if model_manager.MANAGER.backend.name != "comfy":
        model_manager.MANAGER.set_backend(ComfyBackend())


def torch_device(choice: str = "auto") -> torch.device:
    """'auto' = ComfyUI's device (honours --cpu); 'cpu'; 'gpu' = ComfyUI's device, must not be CPU."""
    if choice == "cpu":
        return torch.device("cpu")
    dev = mm.get_torch_device()
    if choice == "gpu" and torch.device(dev).type == "cpu":
        log.warning("Visage: device 'gpu' asked for but ComfyUI runs on the CPU; using the CPU")
    return torch.device(dev)


def intermediate_device() -> torch.device:
    return mm.intermediate_device()


class Progress:
    """ComfyUI progress bar + cancel check, usable as the ``progress`` callback of math code."""

    def __init__(self, total: int, node_id=None):
        self.bar = comfy.utils.ProgressBar(max(int(total), 1), node_id=node_id)

    def __call__(self, done: int, total: int | None = None) -> None:
        mm.throw_exception_if_processing_interrupted()
        self.bar.update_absolute(done, total)

    @staticmethod
    def check_cancel() -> None:
        mm.throw_exception_if_processing_interrupted()


install()


def save_temp_images(images: torch.Tensor, prefix: str = "visage", limit: int = 16) -> list:
    """Save the first ``limit`` images of a batch as temp PNGs; the ``ui.images`` list ComfyUI shows."""
    import numpy as np
    from PIL import Image

    out_dir = folder_paths.get_temp_directory()
    h, w = int(images.shape[1]), int(images.shape[2])
    full_dir, name, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, out_dir, w, h)
    results = []
    for i in range(min(int(images.shape[0]), limit)):
        arr = (images[i].detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        fname = f"{name}_{counter + i:05}_.png"
        Image.fromarray(np.ascontiguousarray(arr)).save(os.path.join(full_dir, fname), compress_level=1)
        results.append({"filename": fname, "subfolder": subfolder, "type": "temp"})
    return results


# ----------------------------------------------------------------------------- identity adapters
def text_attention(q, k, v, extra_options):
    """ComfyUI's own attention (what attn2 runs unpatched)."""
    from comfy.ldm.modules.attention import optimized_attention

    return optimized_attention(q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"))


def load_lora(model, lora_name: str, strength: float):
    """A clone of ``model`` with a LoRA from models/loras applied by ComfyUI's LoRA loader (model only)."""
    import comfy.sd
    import comfy.utils

    lora = comfy.utils.load_torch_file(folder_paths.get_full_path_or_raise("loras", lora_name), safe_load=True)
    m, _ = comfy.sd.load_lora_for_models(model, None, lora, strength, 0)
    return m


def load_lora_state_dict(model, lora: dict, strength: float):
    """A clone of ``model`` with a LoRA given as a state dict (any key format ComfyUI's LoRA loader reads)
    applied by ComfyUI's LoRA machinery (model only): the same path as :func:`load_lora` without the file."""
    import comfy.sd

    m, _ = comfy.sd.load_lora_for_models(model, None, lora, strength, 0)
    return m


def unet_attention_names(model) -> list:
    """diffusers module names of the UNet's attention layers (``down_blocks.0.attentions.0.transformer_blocks.0
    .attn1`` ...), from ComfyUI's own UNet-to-diffusers key map of the model's config (unordered)."""
    import re

    import comfy.utils

    cfg = model.model.model_config.unet_config
    pat = re.compile(r"^(.*\.attn[12])\.to_q\.weight$")
    return [m.group(1) for k in comfy.utils.unet_to_diffusers(cfg) for m in [pat.match(k)] if m]


def load_text_encoder_model(clip_vision) -> torch.device:
    """Load a CLIP vision model's patcher for use (ComfyUI's memory management) and return its device."""
    import comfy.model_management as mm

    mm.load_model_gpu(clip_vision.patcher)
    return getattr(clip_vision, "load_device", None) or mm.text_encoder_device()
