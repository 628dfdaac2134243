"""Write the UI-format twin of API-format workflows with the real frontend (what ComfyUI's editor saves).

    .venv/bin/python tests/browser/make_ui_twin.py workflows/api/face_analysis.json [more.json ...] [--out DIR]

For each file: a real ComfyUI (--cpu, this pack linked into a throw-away base directory) serves the
frontend to Debian's Chromium (/usr/bin/chromium, driven by Playwright); the API workflow is loaded with
the editor's own `app.loadApiJson` and `app.graph.serialize()` is written to DIR/<name> (default
workflows/). Node ids, widget values and links come from the API file; nodes are laid out in columns
by depth (inputs left of the nodes they feed). Exit code 1 on any failure.
"""

import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests"))

import comfy_harness as ch  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-background-networking", "--headless", "--disable-gpu"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--out", default=os.path.join(REPO, "workflows"))
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    comfy = ch.find_comfyui()
    if comfy is None or not os.path.isfile(CHROMIUM):
        print("needs a ComfyUI (COMFYUI_PATH) and /usr/bin/chromium (apt-get install -y chromium)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="visage_twin_") as base:
        ch.make_base_dir(base)
        server = ch.ComfyServer(comfy, base)
        server.start()
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
                page = browser.new_page(viewport={"width": 1600, "height": 1000})
                page.goto(server.url)
                page.wait_for_function(
                    "() => !!(window.comfyAPI?.app?.app?.graph && window.LiteGraph)", timeout=120_000
                )
                time.sleep(2)
                for path in args.files:
                    with open(path, "r", encoding="utf-8") as f:
                        api = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
                    ui = page.evaluate(
                        """async ([api, name]) => {
                        const app = window.comfyAPI.app.app;
                        await app.loadApiJson(api, name);
                        // lay out by depth (columns left to right), nodes of a column stacked without overlap
                        const g = app.graph, depth = new Map();
                        const link = (id) => g.getLink?.(id) ?? g.links?.get?.(id) ?? g.links?.[id];
                        const d = (n, seen = new Set()) => {
                          if (depth.has(n.id)) return depth.get(n.id);
                          if (seen.has(n.id)) return 0;
                          seen.add(n.id);
                          let m = 0;
                          for (const inp of n.inputs ?? []) {
                            const l = inp.link != null ? link(inp.link) : null;
                            const src = l ? g.getNodeById(l.origin_id) : null;
                            if (src) m = Math.max(m, d(src, seen) + 1);
                          }
                          depth.set(n.id, m);
                          return m;
                        };
                        const cols = new Map();
                        for (const n of [...g.nodes].sort((a, b) => a.id - b.id)) {
                          const c = d(n);
                          if (!cols.has(c)) cols.set(c, []);
                          cols.get(c).push(n);
                        }
                        const widths = new Map([...cols].map(([c, ns]) => [c, Math.max(...ns.map(n => n.size[0]))]));
                        let x = 50;
                        for (const c of [...cols.keys()].sort((a, b) => a - b)) {
                          let y = 80;
                          for (const n of cols.get(c)) {
                            n.pos = [x, y];
                            y += n.size[1] + (['SaveImage', 'PreviewImage', 'LoadImage', 'VisageAnalyzeFaces'].includes(n.type) ? 300 : 70);
                          }
                          x += widths.get(c) + 80;
                        }
                        g.setDirtyCanvas(true, true);
                        return JSON.stringify(g.serialize()); }""",
                        [api, os.path.basename(path)],
                    )
                    ui = json.loads(ui)  # as the editor saves it: JSON.stringify drops undefined fields
                    missing = [
                        n["type"]
                        for n in ui["nodes"]
                        if n["type"] not in page.evaluate("() => Object.keys(LiteGraph.registered_node_types)")
                    ]
                    if missing or len(ui["nodes"]) != len(api):
                        print(f"{path}: the frontend could not build every node (missing {missing})", file=sys.stderr)
                        return 1
                    dest = os.path.join(args.out, os.path.basename(path))
                    os.makedirs(args.out, exist_ok=True)
                    with open(dest, "w", encoding="utf-8") as f:
                        json.dump(ui, f, indent=1)
                        f.write("\n")
                    print(dest)
                browser.close()
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
