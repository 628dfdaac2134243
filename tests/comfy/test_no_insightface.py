"""insightface is not needed at run time: a ComfyUI whose Python cannot import insightface (a
``sitecustomize`` on PYTHONPATH installs a finder that raises ModuleNotFoundError for it) registers every
Visage node (no family disabled) and runs the face-analysis API workflow, pose included (the 68-point mean
shape comes from nodes/face/meanshape_68.npy). insightface stays a declared dependency and the tests' reference."""

import json
import os
import textwrap

import comfy_harness as ch
from builders import face as face_builder

SITECUSTOMIZE = textwrap.dedent("""
    import sys

    class _NoInsightface:
        def find_spec(self, name, path=None, target=None):
            if name == "insightface" or name.startswith("insightface."):
                sys.stderr.write(f"VISAGE-TEST: refused import of {name}\\n")
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
            return None

    sys.meta_path.insert(0, _NoInsightface())
    sys.stderr.write("VISAGE-TEST: insightface is unimportable in this process\\n")
""")


def test_every_node_registers_and_face_analysis_runs_without_insightface(comfy_path, tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    dirs = ch.make_base_dir(str(tmp_path / "base"))
    face_builder.build(dirs["models"], dirs["input"])  # the test-built pack `visage_test` and t1.jpg
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    server = ch.ComfyServer(comfy_path, str(tmp_path / "base")).start()
    try:
        log = server.log()
        assert "VISAGE-TEST: insightface is unimportable in this process" in log
        assert not server.import_failed() and "nodes are disabled" not in log, log[-3000:]

        info = server.object_info()
        with open(os.path.join(ch.REPO, "tests", "schema", "shipped_nodes.json"), encoding="utf-8") as f:
            shipped = set(json.load(f))
        ours = {k for k in info if k.startswith("Visage")}
        assert shipped <= ours, f"not registered without insightface: {sorted(shipped - ours)}"

        wf = ch.load_api_workflow("face_analysis.json")
        wf["2"]["inputs"]["pack"] = "visage_test"
        for node in wf.values():
            if node["class_type"] == "SaveImage":
                node["inputs"]["filename_prefix"] = ch.unique_prefix(node["inputs"]["filename_prefix"])
        entry = server.run(wf, timeout=300)
        faces = entry["outputs"]["3"]["visage_faces"][0]
        assert len(faces) >= 1
        assert any("face_analysis_preview" in f for f in server.output_files(entry))
        log = server.log()
        assert "pose will not be estimated" not in log, log[-3000:]
        assert "VISAGE-TEST: refused import" not in log  # nothing even tried to import insightface
        ours_failed = [ln for ln in log.splitlines() if ln.strip().startswith('File "') and "custom_nodes/visage" in ln]
        assert not ours_failed, log[-3000:]  # (ComfyUI's own extras may log tracebacks, e.g. without torchaudio)
    finally:
        server.stop()
