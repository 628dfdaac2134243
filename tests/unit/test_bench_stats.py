"""The benchmark's statistics and goal logic (bench/stats.py; no benchmark runs here)."""

from __future__ import annotations

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bench"))

import stats  # noqa: E402


def test_rounds_alternate_and_warmup_is_dropped():
    calls = []
    now = [0.0]

    def clock():
        return now[0]

    def side(name, ms):
        def f():
            calls.append(name)
            now[0] += ms / 1000.0

        return f

    t = stats.interleaved({"a": side("a", 2.0), "b": side("b", 5.0)}, rounds=4, warmup=1, clock=clock)
    # round 0 (warm-up) a b, then b a, a b, b a, a b
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a", "a", "b"]
    assert t["a"] == pytest.approx([2.0] * 4) and t["b"] == pytest.approx([5.0] * 4)


def test_summary_pairs_the_rounds():
    ours = [10.0, 20.0, 10.0, 10.0, 10.0]
    ref = [15.0, 40.0, 15.0, 15.0, 15.0]  # round 2 was slow on both sides: its ratio is still 2
    s = stats.summarise(ours, ref)
    assert s["ratio"] == pytest.approx(1.5) and s["ratio_max"] == pytest.approx(2.0)
    assert s["ours_ms"] == 10.0 and s["ref_ms"] == 15.0 and s["rounds"] == 5
    assert s["ratio_iqr"][0] <= s["ratio"] <= s["ratio_iqr"][1]
    with pytest.raises(ValueError):
        stats.summarise([1.0], [1.0, 2.0])


def test_quartiles():
    assert stats.quartiles([3.0]) == (3.0, 3.0, 3.0)
    assert stats.quartiles([1, 2, 3, 4, 5]) == (2.0, 3.0, 4.0)


def test_goal_misses_ignore_skipped_and_unmeasured_rows():
    rows = [
        {"op": "met", "ratio": 1.3, "goal": 1.2},
        {"op": "missed", "ratio": 0.9, "goal": 1.0},
        {"op": "gpu", "ratio": 0.1, "goal": 5.0, "skipped": True},
        {"op": "unmeasured", "ratio": None, "goal": 1.0},
        {"op": "no goal", "ratio": 0.2},
    ]
    assert [r["op"] for r in stats.goal_misses(rows)] == ["missed"]


def test_speed_section_comes_from_the_result(tmp_path):
    sys.path.insert(0, os.path.join(os.path.dirname(stats.__file__), "..", "tools"))
    import gen_readme

    res = {
        "commit": "abc123",
        "date": "2026-12-02T09:00:00Z",
        "machine": {"cpu": "X", "cpus": 2, "load_avg": [1, 1, 1], "load_avg_after": [2, 2, 2]},
        "threads": 2,
        "goals": 2,
        "goals_met": 1,
        "rows": [
            {"op": "face analyse", "shape": "t1", "ours_ms": 10.0, "ref_ms": 15.0, "reference": "insightface",
             "ratio": 1.5, "ratio_iqr": [1.4, 1.6], "goal": 1.2, "rounds": 9},
            {"op": "face analyse", "shape": "big", "ours_ms": 20.0, "ref_ms": 18.0, "reference": "insightface",
             "ratio": 0.9, "ratio_iqr": [0.8, 1.0], "goal": 1.0, "rounds": 9},
            {"op": "kernel", "shape": "x", "ours_ms": 1.0, "ref_ms": 1.0},
        ],
    }  # fmt: skip
    md = gen_readme.speed_md(res, "bench/results/r.json")
    assert "1.50x (1.40-1.60) | 1.2x met" in md and "0.90x (0.80-1.00) | 1.0x **missed**" in md
    assert "kernel" not in md and "abc123" in md and "9 interleaved rounds" in md
    text = gen_readme.replace("a\n<!-- BEGIN:speed -->\nold\n<!-- END:speed -->\nb", "speed", md)
    assert "old" not in text and md in text
    # several results (the face and the swap runs): one table each, in the order given
    swap = dict(res, commit="def456", rows=[dict(res["rows"][0], op="swap detect+swap+paste", ratio=1.8)])
    paths = []
    for name, r in (("face.json", res), ("swap.json", swap)):
        (tmp_path / name).write_text(json.dumps(r))
        paths.append(str(tmp_path / name))
    both = gen_readme.speed_section(paths)
    assert both.count("| workload |") == 2 and both.index("abc123") < both.index("def456")
    assert "swap detect+swap+paste: t1 |" in both and "1.80x (1.40-1.60) | 1.2x met" in both


def test_node_tables_leave_out_the_test_node_packs():
    sys.path.insert(0, os.path.join(os.path.dirname(stats.__file__), "..", "tools"))
    import gen_readme

    def node(display, module):
        return {"display_name": display, "category": "Visage/face", "python_module": module, "output": ["MASK"],
                "output_name": ["mask"], "input": {"required": {"x": ["INT", {}]}}, "description": "d"}  # fmt: skip

    info = {
        "VisageFaceMask": node("Face Mask", "custom_nodes.visage"),
        "VisageTestTinySDXL": node("Tiny", "custom_nodes.visage_test_models"),
        "KSampler": node("KSampler", "nodes"),
    }
    md = gen_readme.nodes_md(info)
    assert "(`VisageFaceMask`)" in md and "`x`: INT" in md
    assert "VisageTestTinySDXL" not in md and "KSampler" not in md
