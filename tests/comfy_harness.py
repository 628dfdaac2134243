"""A real ComfyUI for the `comfy` test tier: find it, lay out a base directory with the pack and
test-built models, start the server on a free loopback port, post API prompts, read results.

Used by tests/comfy/conftest.py, the browser tier and the headless tools. No ComfyUI import here:
the server runs in its own process, exactly as users run it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from typing import Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACK_NAME = "visage"
TEST_NODE_PACKS = os.path.join(REPO, "tests", "comfy_nodes")


def find_comfyui() -> Optional[str]:
    """COMFYUI_PATH, else the ComfyUI this pack sits in (custom_nodes/..), else /opt/ComfyUI —
    the same search as the headless runner (visage.runner.cli), which owns the rule."""
    from visage.runner import cli

    found = cli.find_comfyui(None)
    if found and os.path.isfile(os.path.join(found, "folder_paths.py")):
        return found
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_base_dir(base: str) -> dict:
    """ComfyUI --base-directory layout with the pack linked into custom_nodes."""
    d = {k: os.path.join(base, k) for k in ("custom_nodes", "models", "input", "output", "temp", "user")}
    for p in d.values():
        os.makedirs(p, exist_ok=True)
    link = os.path.join(d["custom_nodes"], PACK_NAME)
    if not os.path.exists(link):
        os.symlink(REPO, link)
    # test-only node packs (tests/comfy_nodes/<pack>): tiny models built in place of the loaders
    for name in sorted(os.listdir(TEST_NODE_PACKS)):
        src, dst = os.path.join(TEST_NODE_PACKS, name), os.path.join(d["custom_nodes"], name)
        if os.path.isfile(os.path.join(src, "__init__.py")) and not os.path.exists(dst):
            os.symlink(src, dst)
    return d


class ComfyServer:
    def __init__(
        self, comfy_path: str, base_dir: str, port: Optional[int] = None, log_path: Optional[str] = None, extra_args=()
    ):
        self.comfy_path = comfy_path
        self.base_dir = base_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path or os.path.join(base_dir, "comfyui.log")
        self.extra_args = list(extra_args)
        self.proc: Optional[subprocess.Popen] = None

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 300.0) -> "ComfyServer":
        cmd = [
            sys.executable,
            "main.py",
            "--cpu",
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--base-directory",
            self.base_dir,
            "--disable-auto-launch",
            "--database-url",
            "sqlite:///:memory:",
            *self.extra_args,
        ]
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            cmd, cwd=self.comfy_path, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"ComfyUI exited with {self.proc.returncode} while starting; log:\n{self.log()[-4000:]}"
                )
            try:
                self.get("/system_stats", timeout=2)
                return self
            except Exception:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {timeout:.0f}s; log:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if getattr(self, "_log", None):
            self._log.close()

    def log(self) -> str:
        try:
            with open(self.log_path, "r", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def import_failed(self) -> bool:
        return any("IMPORT FAILED" in line and PACK_NAME in line for line in self.log().splitlines())

    # ------------------------------------------------------------------ http
    def get(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            data = r.read()
        return json.loads(data) if data else None

    def post(self, path: str, payload, timeout: float = 30):
        req = urllib.request.Request(
            self.url + path, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                data = r.read()
        except urllib.error.HTTPError as e:
            body = e.read().decode(errors="replace")
            raise PromptError(f"POST {path} -> HTTP {e.code}: {body}", body=body) from None
        return json.loads(data) if data else None

    def object_info(self):
        return self.get("/object_info", timeout=120)

    def queue(self, prompt: dict) -> str:
        res = self.post("/prompt", {"prompt": prompt, "client_id": "visage-tests"})
        return res["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 600) -> dict:
        t0 = time.time()
        while time.time() - t0 < timeout:
            hist = self.get(f"/history/{prompt_id}")
            if hist and prompt_id in hist:
                entry = hist[prompt_id]
                status = entry.get("status", {})
                if status.get("completed") or status.get("status_str") in ("success", "error"):
                    if status.get("status_str") == "error":
                        msgs = [m for m in status.get("messages", []) if m[0] == "execution_error"]
                        detail = msgs[0][1] if msgs else status
                        raise PromptError(f"execution failed: {json.dumps(detail)[:3000]}", body=detail)
                    return entry
            time.sleep(0.3)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout}s; log tail:\n{self.log()[-3000:]}")

    def run(self, prompt: dict, timeout: float = 600) -> dict:
        """Queue an API-format prompt and wait for it; returns the history entry (outputs per node)."""
        return self.wait(self.queue(prompt), timeout)

    def output_files(self, entry: dict):
        """Absolute paths of every image/file a finished prompt wrote (SaveImage-style outputs)."""
        files = []
        for node_out in entry.get("outputs", {}).values():
            for items in node_out.values():
                if not isinstance(items, list):
                    continue
                for it in items:
                    if isinstance(it, dict) and "filename" in it:
                        kind = it.get("type", "output")
                        root = os.path.join(self.base_dir, "output" if kind == "output" else kind)
                        files.append(os.path.join(root, it.get("subfolder", ""), it["filename"]))
        return files


class PromptError(RuntimeError):
    def __init__(self, msg, body=None):
        super().__init__(msg)
        self.body = body


def load_api_workflow(name: str) -> dict:
    with open(os.path.join(REPO, "workflows", "api", name), "r", encoding="utf-8") as f:
        wf = json.load(f)
    return {k: v for k, v in wf.items() if not k.startswith("_")}


TEST_LATENT = 64  # px: the tiny test models sample an 8x8 latent


def at_test_size(wf: dict, size: int = TEST_LATENT) -> dict:
    """A shipped generation workflow at test cost, in place: the latent (and the masks, mask offsets and
    composites drawn in the latent's pixel size) scaled to ``size`` px, every KSampler at 2 euler steps,
    cfg 4. The model files need no mapping: tests/builders/released.py lays out the released names.
    Returns ``wf``."""
    widths = [n["inputs"]["width"] for n in wf.values() if n.get("class_type") == "EmptyLatentImage"]
    f = size / widths[0] if widths else 1.0
    for n in wf.values():
        ct, inp = n.get("class_type"), n.get("inputs", {})
        if ct in ("EmptyLatentImage", "SolidMask"):
            inp["width"], inp["height"] = round(inp["width"] * f), round(inp["height"] * f)
        elif ct == "MaskComposite":
            inp["x"], inp["y"] = round(inp["x"] * f), round(inp["y"] * f)
        elif ct == "KSampler":
            inp.update(steps=2, cfg=4.0, sampler_name="euler", scheduler="normal")
    return wf


def with_latent_output(wf: dict, prefix: str, sampler: str = "sampler") -> dict:
    """Add a SaveLatent of the sampler's output (node 'save_latent'), to read the sampled latent back."""
    wf["save_latent"] = {"class_type": "SaveLatent", "inputs": {"samples": [sampler, 0], "filename_prefix": prefix}}
    return wf


def copy_input(base_dirs: dict, src: str, name: Optional[str] = None) -> str:
    name = name or os.path.basename(src)
    shutil.copy(src, os.path.join(base_dirs["input"], name))
    return name


def unique_prefix(stem: str) -> str:
    return f"{stem}_{uuid.uuid4().hex[:8]}"


def node_with_defaults(object_info: dict, class_type: str, **inputs) -> dict:
    """An API-format node with every combo and required widget input at its declared default (so new
    inputs do not break a test's prompt), then ``inputs``."""
    info = object_info[class_type]
    values = {}
    for section in ("required", "optional"):
        for name, cfg in (info["input"].get(section) or {}).items():
            typ, opts = cfg[0], (cfg[1] if len(cfg) > 1 and isinstance(cfg[1], dict) else {})
            if isinstance(typ, list) and typ:
                values[name] = opts.get("default", typ[0])
            elif typ in ("INT", "FLOAT", "STRING", "BOOLEAN") and "default" in opts and section == "required":
                values[name] = opts["default"]
    values.update(inputs)
    return {"class_type": class_type, "inputs": values}
