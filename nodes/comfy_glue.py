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

import gc
import logging
import os

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import folder_paths
import torch

from ..core import cancel, model_manager, paths

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
        """Take the handle's patcher out of ComfyUI's loaded list (ComfyUI's own unload already did, for
        its device) and detach it, so dropping the handle's module frees it."""
        patcher = handle.backend_state
        if patcher is None:
            return
        for i in range(len(mm.current_loaded_models) - 1, -1, -1):
            loaded = mm.current_loaded_models[i]
            if loaded.model is patcher:
                try:
                    loaded.model_unload()
                except Exception as e:  # pragma: no cover - best effort
                    log.debug("Visage: unloading %s: %s", handle.name, e)
                mm.current_loaded_models.pop(i)
        try:
            patcher.detach()
        except Exception as e:  # pragma: no cover - best effort
            log.debug("Visage: detaching %s: %s", handle.name, e)


def _malloc_trim() -> None:
    """Hand freed heap back to the OS (glibc); a no-op elsewhere."""
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes
            import ctypes.util

            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC = lib if hasattr(lib, "malloc_trim") else False
        except OSError:
            _LIBC = False
    if _LIBC:
        try:
            _LIBC.malloc_trim(0)
        except Exception:  # pragma: no cover - best effort
            pass


_LIBC = None


def release_models() -> int:
    """Drop every model and onnxruntime session Visage holds (RAM, and VRAM through ComfyUI), collect
    garbage, empty the torch caches and return freed heap to the OS. The handles stay usable: the next
    ``model()`` loads the file again."""
    global _TRIM_PENDING
    n = model_manager.MANAGER.unload_all()
    gc.collect()
    mm.soft_empty_cache()
    _malloc_trim()
    _TRIM_PENDING = True  # once more after ComfyUI drops its execution cache (free_memory) and collects
    return n


_TRIM_PENDING = False


def _hook_unload_all_models() -> None:
    """ComfyUI's "unload models" (``POST /free``, the menu buttons, after an out-of-memory error, and
    after every prompt with --disable-smart-memory) calls ``comfy.model_management.unload_all_models``;
    it only knows the ModelPatchers in its loaded list, and those stay referenced by our cache. Wrap it
    so the same call releases Visage's models and sessions too."""
    current = mm.unload_all_models
    if getattr(current, "_visage_hook", False):
        return

    def unload_all_models(*args, **kwargs):
        try:
            return current(*args, **kwargs)
        finally:
            try:
                release_models()
            except Exception as e:  # never break ComfyUI's own unload
                log.warning("Visage: releasing models failed: %s", e)

    unload_all_models._visage_hook = True
    unload_all_models.__wrapped__ = current
    mm.unload_all_models = unload_all_models

    # /free: main.py's prompt worker unloads, then resets the execution cache, then gc.collect() and
    # soft_empty_cache(): trim the heap there too, once per release, so the freed cache goes back as well
    empty = mm.soft_empty_cache

    def soft_empty_cache(*args, **kwargs):
        global _TRIM_PENDING
        result = empty(*args, **kwargs)
        if _TRIM_PENDING:
            _TRIM_PENDING = False
            _malloc_trim()
        return result

    soft_empty_cache._visage_hook = True
    soft_empty_cache.__wrapped__ = empty
    mm.soft_empty_cache = soft_empty_cache


def install() -> None:
    _register_folders()
    paths.set_resolver(_resolver)
    if model_manager.MANAGER.backend.name != "comfy":
        model_manager.MANAGER.set_backend(ComfyBackend())
    _hook_unload_all_models()


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


def cancellable():
    """Context for a node's work: ComfyUI's interrupt is checked inside every torch network forward
    (at most every 50 ms), so one long forward (a restorer on a big face, a LivePortrait decode on a
    CPU) stops promptly too."""
    return cancel.checks_inside_modules(mm.throw_exception_if_processing_interrupted)


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


# ----------------------------------------------------------------------------- face detailer
def sampler_names() -> list:
    import comfy.samplers

    return list(comfy.samplers.KSampler.SAMPLERS)


def scheduler_names() -> list:
    import comfy.samplers

    return list(comfy.samplers.KSampler.SCHEDULERS)


def sample_pixels(
    model, vae, positive, negative, pixels, noise_mask, seed, steps, cfg, sampler_name, scheduler, denoise
) -> torch.Tensor:
    """Re-sample ``pixels`` [N,S,S,3] (0..1) where ``noise_mask`` [N,S,S] is set, as VAE Encode + Set Latent
    Noise Mask + KSampler + VAE Decode do: ComfyUI's own noise (comfy.sample.prepare_noise from ``seed``),
    sampler and schedule. Returns the decoded [N,S,S,3] on the intermediate device."""
    import comfy.sample

    latent = vae.encode(pixels[..., :3])
    latent = comfy.sample.fix_empty_latent_channels(model, latent)
    noise = comfy.sample.prepare_noise(latent, int(seed), None)
    mask = None if noise_mask is None else noise_mask.reshape(-1, 1, noise_mask.shape[-2], noise_mask.shape[-1])
    samples = comfy.sample.sample(
        model,
        noise,
        int(steps),
        float(cfg),
        sampler_name,
        scheduler,
        positive,
        negative,
        latent,
        denoise=float(denoise),
        noise_mask=mask,
        disable_pbar=True,
        seed=int(seed),
    )
    out = vae.decode(samples)
    if out.ndim == 5:  # video VAEs decode [N,T,H,W,C]
        out = out.reshape(-1, *out.shape[-3:])
    return out.to(intermediate_device())
