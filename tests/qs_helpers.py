"""Helpers of the quickstart tests (tests/quickstart): a local HTTP server of test-built files, a closed port, a clean
environment for scripts/quickstart.sh, a bare git repository of ComfyUI made from ../shared's tarball."""

import contextlib
import http.server
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import threading

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.normpath(os.environ.get("VISAGE_SHARED_DIR") or os.path.join(REPO, "..", "shared"))
TARBALL = os.path.join(SHARED, "comfyui", "ComfyUI-0.3.64.tar.gz")
FIXTURE_MODELS = os.path.join(SHARED, "fixtures", "models")


def closed_port():
    """A loopback port nothing listens on (bound, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@contextlib.contextmanager
def serve(files):
    """Serve {path: bytes | ("truncate", bytes)} on 127.0.0.1; anything else is a 404. Yields (base url,
    hits per path). A ("truncate", data) answer announces len(data) bytes and sends half."""
    hits = {}

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits[self.path] = hits.get(self.path, 0) + 1
            body = files.get(self.path)
            if body is None:
                self.send_error(404, "Not Found")
                return
            truncate = isinstance(body, tuple)
            data = body[1] if truncate else body
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2] if truncate else data)
            if truncate:
                self.close_connection = True

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", hits
    finally:
        srv.shutdown()
        srv.server_close()


def clean_env(home, **extra):
    """The environment of a new user: a fresh HOME, no ComfyUI anywhere the script looks, no active
    environment, everything remote at a closed port unless ``extra`` says otherwise."""
    port = closed_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "COMFYUI_PATH", "VISAGE_MODELS_DIR", "XDG_CACHE_HOME")
    }
    env.update(
        HOME=str(home),
        VISAGE_COMFYUI_SEARCH="",
        VISAGE_SHARED_DIR=os.path.join(str(home), "no-shared"),
        VISAGE_COMFYUI_GIT=f"http://127.0.0.1:{port}/ComfyUI.git",
        PIP_INDEX_URL=f"http://127.0.0.1:{port}/simple",
        VISAGE_MODELS_BASE_URL=f"http://127.0.0.1:{port}",
        VISAGE_QUICKSTART_OUT=os.path.join(str(home), "quickstart-out"),
        GIT_CONFIG_NOSYSTEM="1",
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_quickstart(env, *args, timeout=600):
    return subprocess.run(
        ["bash", os.path.join(REPO, "scripts", "quickstart.sh"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def unpack_comfyui(dest):
    """../shared's ComfyUI source into ``dest`` (its top folder stripped)."""
    os.makedirs(dest, exist_ok=True)
    with tarfile.open(TARBALL) as t:
        for m in t.getmembers():
            parts = m.name.split("/", 1)
            if len(parts) < 2 or not parts[1]:
                continue
            m.name = parts[1]
            t.extract(m, dest, filter="data") if sys.version_info >= (3, 12) else t.extract(m, dest)
    return dest


def bare_comfyui_repo(where):
    """A bare git repository holding ComfyUI 0.3.64 with the release's tag v0.3.64 (from the tarball)."""
    work = unpack_comfyui(os.path.join(where, "comfy-src"))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=master"]
    subprocess.run(git + ["init", "-q"], cwd=work, check=True)
    subprocess.run(git + ["add", "-A"], cwd=work, check=True)
    subprocess.run(git + ["commit", "-q", "-m", "ComfyUI 0.3.64"], cwd=work, check=True)
    subprocess.run(git + ["tag", "v0.3.64"], cwd=work, check=True)
    bare = os.path.join(where, "ComfyUI.git")
    subprocess.run(["git", "clone", "-q", "--bare", work, bare], check=True)
    shutil.rmtree(work)
    return bare
