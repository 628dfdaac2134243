"""Download Visage's model files from their published locations (setup time only; the nodes never download).

    python tools/get_models.py buffalo_l                       # a pack: every file of buffalo_l.zip
    python tools/get_models.py inswapper_128.onnx antelopev2   # files and packs
    python tools/get_models.py --models /path/ComfyUI/models buffalo_l
    python tools/get_models.py --list                          # what can be fetched, and from where
    python tools/get_models.py --reachable buffalo_l           # only check that the hosts answer (exit 3 if not)
    python tools/get_models.py --probe URL...                  # the same for any URLs (scripts/quickstart.sh)

Each file comes from the ``url`` of its entry in ``core/manifest.json`` (a ``.zip`` url: the file is the
archive member of the same name, wherever it sits in the archive, so antelopev2.zip's nested folder does
not matter). It is written into the right folder under the models folder (``--models``, else
``$VISAGE_MODELS_DIR``, else ``$COMFYUI_PATH/models``) through a temporary file and a rename, only after its
size and sha256 match the manifest; a file without a published sha256 is accepted on its size (or, with
no published size either, as it came) with a warning. A file already there that matches is kept and never
re-downloaded; one that does not match is left alone unless ``--replace-bad``.

``VISAGE_MODELS_BASE_URL`` (or ``--base-url``) serves a mirror: ``https://host/path`` becomes
``BASE/host/path`` (tests use a local HTTP server this way).

Exit codes: 0 every file is in place; 1 a download failed (HTTP error, truncated, wrong size or sha256) or
a file in place does not match; 2 bad arguments (unknown pack or file, no models folder); 3 a host cannot
be reached (offline). Standard library only: runs with any Python 3.8+ before anything is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import socket
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANIFEST = os.path.join(REPO, "core", "manifest.json")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_OFFLINE = 0, 1, 2, 3
CHUNK = 1 << 20


class FetchError(Exception):
    """A download that cannot be used; ``code`` is the exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.code = code


def say(msg: str) -> None:
    sys.stderr.write(f"[get_models] {msg}\n")


def load_manifest(path: str = MANIFEST) -> list:
    with open(path, "r", encoding="utf-8") as f:
        return json.load(f)["models"]


def mirrored(url: str, base: str | None) -> str:
    """``url`` on the mirror ``base`` (``BASE/host/path``), or ``url`` itself."""
    if not base:
        return url
    u = urllib.parse.urlsplit(url)
    return base.rstrip("/") + "/" + u.netloc + u.path


def pack_of(entry: dict) -> str | None:
    """The pack an entry is fetched with: the archive its url names (``.../buffalo_l.zip`` -> buffalo_l)."""
    url = entry.get("url") or ""
    if url.endswith(".zip"):
        return os.path.basename(urllib.parse.urlsplit(url).path)[: -len(".zip")]
    return None


def select(entries: list, targets: list) -> list:
    """Manifest entries for pack names, file names or ``folder/name`` paths (FetchError on unknown or
    ambiguous names)."""
    out = []
    for t in targets:
        t = t.strip().rstrip("/")
        hits = [e for e in entries if pack_of(e) == t]
        if not hits:
            hits = [e for e in entries if e["name"] == t or f"{e['folder']}/{e['name']}" == t]
        if not hits:
            hits = [e for e in entries if (f"{e['folder']}/{e['name']}").endswith("/" + t)]
        if not hits:
            packs = sorted({p for p in (pack_of(e) for e in entries) if p})
            raise FetchError(
                f"'{t}' is neither a pack ({', '.join(packs)}) nor a file of the manifest; "
                f"`python tools/get_models.py --list` shows them",
                EXIT_USAGE,
            )
        if len(hits) > 1 and not any(pack_of(e) == t for e in hits):
            where = ", ".join(f"{e['folder']}/{e['name']}" for e in hits)
            raise FetchError(f"'{t}' is in several folders ({where}): give FOLDER/NAME", EXIT_USAGE)
        for e in hits:
            if e not in out:
                out.append(e)
    missing_url = [e for e in out if not e.get("url")]
    if missing_url:
        raise FetchError(
            "no published location is known for "
            + ", ".join(f"{e['name']} (get it from: {e.get('source')})" for e in missing_url),
            EXIT_USAGE,
        )
    return out


def models_dir(arg: str | None) -> str:
    d = arg or os.environ.get("VISAGE_MODELS_DIR")
    if not d and os.environ.get("COMFYUI_PATH"):
        d = os.path.join(os.environ["COMFYUI_PATH"], "models")
    if not d:
        raise FetchError(
            "no models folder: give --models /path/to/ComfyUI/models (or set VISAGE_MODELS_DIR or COMFYUI_PATH)",
            EXIT_USAGE,
        )
    return os.path.abspath(d)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(CHUNK), b""):
            h.update(b)
    return h.hexdigest()


def verdict(entry: dict, size: int, digest: str) -> tuple:
    """(ok, problem or warning) of bytes of ``size`` / ``digest`` against the entry's published values."""
    want_size, want_sha = entry.get("size"), entry.get("sha256")
    if want_size and size != want_size:
        return False, f"{size} bytes, the published file has {want_size} (truncated or another file)"
    if want_sha:
        if digest != want_sha:
            return False, f"sha256 {digest}, the published file has {want_sha} (a different or damaged file)"
        return True, ""
    if want_size:
        return True, f"accepted on its size ({size} bytes): no published sha256 to check (sha256 {digest})"
    return True, f"accepted unchecked: no published size or sha256 (got {size} bytes, sha256 {digest})"


def host_reachable(url: str, timeout: float = 5.0) -> str | None:
    """None when a TCP connection to ``url``'s host opens, else why not."""
    u = urllib.parse.urlsplit(url)
    if u.scheme in ("file", ""):  # a local path (a git repository, a mirror folder)
        p = urllib.request.url2pathname(u.path) if u.scheme else url
        return None if os.path.exists(p) else f"{p} does not exist"
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        with socket.create_connection((u.hostname, port), timeout=timeout):
            return None
    except OSError as e:
        return f"cannot connect to {u.hostname}:{port} ({e.strerror or e})"


def download(url: str, dest_dir: str, timeout: float = 60.0) -> str:
    """``url`` into a temporary file in ``dest_dir`` (same file system, so the rename is atomic); returns
    its path. Raises FetchError for HTTP errors, unreachable hosts and truncated transfers."""
    os.makedirs(dest_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".visage-download-", suffix=".part", dir=dest_dir)
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "visage-get-models"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(req, timeout=timeout) as r:
            expected = r.headers.get("Content-Length")
            got = 0
            for b in iter(lambda: r.read(CHUNK), b""):
                out.write(b)
                got += len(b)
        if expected is not None and got != int(expected):
            raise FetchError(f"{url}: truncated transfer: {got} of {int(expected)} bytes arrived; run again")
        return tmp
    except urllib.error.HTTPError as e:
        os.unlink(tmp)
        hint = (
            " (the file is not at its published location any more; see the manifest's source)" if e.code == 404 else ""
        )
        raise FetchError(f"{url}: HTTP {e.code} {e.reason}{hint}")
    except urllib.error.URLError as e:
        os.unlink(tmp)
        raise FetchError(f"{url}: cannot reach the host ({e.reason})", EXIT_OFFLINE)
    except (OSError, ValueError, http.client.HTTPException) as e:  # reset mid-transfer, IncompleteRead
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise FetchError(f"{url}: truncated transfer: the connection broke off ({e!r}); run again")
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def place(entry: dict, src_path: str, dest: str) -> str:
    """Check ``src_path`` against ``entry`` and rename it to ``dest``; returns a warning ('' if none)."""
    ok, note = verdict(entry, os.path.getsize(src_path), sha256_file(src_path))
    if not ok:
        os.unlink(src_path)
        raise FetchError(f"{entry['name']}: {note}; nothing was written to {dest}")
    os.replace(src_path, dest)
    return note


def existing_state(entry: dict, dest: str) -> tuple:
    """('absent'|'good'|'bad', detail) of the file already at ``dest``."""
    if not os.path.isfile(dest):
        return "absent", ""
    ok, note = verdict(entry, os.path.getsize(dest), sha256_file(dest))
    return ("good", note) if ok else ("bad", note)


def fetch(entries: list, models: str, base: str | None, replace_bad: bool = False, timeout: float = 60.0) -> int:
    """Fetch ``entries`` into ``models``; returns the exit code. Archives are downloaded once."""
    todo, failed = [], 0
    for e in entries:
        dest = os.path.join(models, *e["folder"].split("/"), e["name"])
        state, note = existing_state(e, dest)
        if state == "good":
            say(f"ok (already there): {dest}" + (f" [{note}]" if note else ""))
        elif state == "bad" and not replace_bad:
            say(f"ERROR {dest} is there but does not match: {note}. It was left alone: delete it or pass --replace-bad")
            failed += 1
        else:
            todo.append((e, dest))
    by_url: dict = {}
    for e, dest in todo:
        by_url.setdefault(e["url"], []).append((e, dest))
    code = EXIT_FAILED if failed else EXIT_OK
    for url, items in by_url.items():
        src = mirrored(url, base)
        try:
            if url.endswith(".zip"):
                code = max(code, _fetch_archive(src, items, models, timeout))
            else:
                for e, dest in items:
                    say(f"downloading {src}")
                    tmp = download(src, os.path.dirname(dest), timeout)
                    note = place(e, tmp, dest)
                    say(f"ok: {dest}" + (f" [warning: {note}]" if note else ""))
        except FetchError as err:
            say(f"ERROR {err}")
            code = max(code, err.code)
    return code


def _fetch_archive(src: str, items: list, models: str, timeout: float) -> int:
    say(f"downloading {src}")
    os.makedirs(models, exist_ok=True)
    work = tempfile.mkdtemp(prefix=".visage-archive-", dir=models)
    code = EXIT_OK
    try:
        tmp = download(src, work, timeout)
        try:
            zf = zipfile.ZipFile(tmp)
        except zipfile.BadZipFile:
            raise FetchError(f"{src}: not a readable zip archive (truncated or an error page); run again")
        with zf:
            members = {os.path.basename(n): n for n in zf.namelist() if not n.endswith("/")}
            for e, dest in items:
                member = members.get(e["name"])
                if member is None:
                    say(f"ERROR {src} holds no {e['name']} (it holds: {', '.join(sorted(members))})")
                    code = EXIT_FAILED
                    continue
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                fd, part = tempfile.mkstemp(prefix=".visage-download-", suffix=".part", dir=os.path.dirname(dest))
                try:
                    with os.fdopen(fd, "wb") as out, zf.open(member) as m:
                        shutil.copyfileobj(m, out, CHUNK)
                    note = place(e, part, dest)
                    say(f"ok: {dest}" + (f" [warning: {note}]" if note else ""))
                except (FetchError, zipfile.BadZipFile, OSError) as err:
                    if os.path.exists(part):
                        os.unlink(part)
                    say(f"ERROR {err}")
                    code = EXIT_FAILED
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return code


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("targets", nargs="*", metavar="PACK_OR_FILE", help="pack (buffalo_l, antelopev2, ...) or file name")
    ap.add_argument("--models", help="the ComfyUI models/ folder (default $VISAGE_MODELS_DIR, $COMFYUI_PATH/models)")
    ap.add_argument("--base-url", default=os.environ.get("VISAGE_MODELS_BASE_URL"), help="a mirror (BASE/host/path)")
    ap.add_argument("--manifest", default=MANIFEST, help=argparse.SUPPRESS)
    ap.add_argument("--list", action="store_true", help="list what can be fetched")
    ap.add_argument("--reachable", action="store_true", help="only check that the hosts of the targets answer")
    ap.add_argument(
        "--probe", nargs="+", metavar="URL", help="only check that these URLs' hosts answer (exit 3 if not)"
    )
    ap.add_argument("--replace-bad", action="store_true", help="replace a file in place that does not match")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds without data before giving up")
    a = ap.parse_args(argv)
    try:
        entries = load_manifest(a.manifest)
        if a.list:
            for e in entries:
                where = pack_of(e) and f"[{pack_of(e)}] " or ""
                size = f"{e['size']} B" if e.get("size") else "size ?"
                sys.stdout.write(f"{where}{e['folder']}/{e['name']}  ({size})  {e.get('url') or '-'}\n")
            return EXIT_OK
        if a.probe:
            bad = {u: why for u in a.probe if (why := host_reachable(u, timeout=min(a.timeout, 5.0)))}
            for u, why in bad.items():
                say(f"unreachable: {u}: {why}")
            return EXIT_OFFLINE if bad else EXIT_OK
        if not a.targets:
            ap.error("name at least one pack or file (see --list)")
        chosen = select(entries, a.targets)
        if a.reachable:
            bad = {}
            for u in sorted({mirrored(e["url"], a.base_url) for e in chosen}):
                why = host_reachable(u, timeout=min(a.timeout, 5.0))
                if why:
                    bad[u] = why
            for u, why in bad.items():
                say(f"unreachable: {u}: {why}")
            return EXIT_OFFLINE if bad else EXIT_OK
        return fetch(chosen, models_dir(a.models), a.base_url, a.replace_bad, a.timeout)
    except FetchError as e:
        say(f"ERROR {e}")
        return e.code


if __name__ == "__main__":
    sys.exit(main())
