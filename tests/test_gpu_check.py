"""benchmarks/gpu_check.py must be ready when a GPU is: its smoke mode runs every section on tiny shapes on the CPU."""

import json
import subprocess
import sys

from conftest import REPO_ROOT

BENCHMARKS = REPO_ROOT / "benchmarks"


def test_smoke_run_measures_every_section_and_writes_the_report(tmp_path):
    out = tmp_path / "gpu_check.json"
    completed = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_check.py"), "--smoke", "--out", str(out)],
                               capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report = json.loads(out.read_text())
    sections = report["sections"]
    assert {name: section["status"] for name, section in sections.items()} == dict.fromkeys(
        ["equivalence", "thresholds", "encoders", "generate", "compiled_encoders"], "ok")
    assert report["mode"] == "smoke" and report["machine"]["torch"]

    equivalence = sections["equivalence"]
    assert equivalence["passed"] and {row["dtype"] for row in equivalence["rows"]} == {"float16", "bfloat16"}
    assert any(row["reduced_attention_layers"] > 0 for row in equivalence["rows"])  # the reduced form was checked
    thresholds = sections["thresholds"]
    assert thresholds["merge"]["measured"] is not None and thresholds["reduced_attention"]["measured"] is not None
    assert report["thresholds_used"]["MERGE_ABOVE_FLOP_RATIO"] == thresholds["merge"]["measured"]
    cases = {row["case"] for row in sections["encoders"]["rows"]}
    assert cases == {"large-v3 balanced (uniform)", "large-v3-turbo balanced (uniform)"}
    assert all("compiled_layout_time_ratio" in row for row in sections["compiled_encoders"]["rows"])
    generate = sections["generate"]["rows"]
    assert generate and all(row["output_length"] >= row["new_tokens"] for row in generate)
    for heading in ("## equivalence", "| threshold (cpu) |", "| case | batch | time ratio |", "## summary"):
        assert heading in completed.stdout


def test_a_failing_section_is_recorded_and_the_next_still_runs(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import gpu_check

    def broken(plan, device, budget):
        raise RuntimeError("out of memory, say")

    monkeypatch.setitem(gpu_check.SECTIONS, "equivalence", broken)
    monkeypatch.setitem(gpu_check.SECTIONS, "generate", lambda plan, device, budget: {"rows": ["measured"]})
    out = tmp_path / "report.json"
    assert gpu_check.main(["--smoke", "--out", str(out), "--sections", "equivalence", "generate"]) == 1
    sections = json.loads(out.read_text())["sections"]
    assert sections["equivalence"]["status"] == "failed" and "out of memory" in sections["equivalence"]["error"]
    assert sections["generate"] == {"status": "ok", "rows": ["measured"], "seconds": sections["generate"]["seconds"]}


def test_a_spent_budget_skips_what_is_left(tmp_path):
    out = tmp_path / "report.json"
    completed = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_check.py"), "--smoke", "--out", str(out),
                                "--budget", "0"], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    statuses = {section["status"] for section in json.loads(out.read_text())["sections"].values()}
    assert statuses == {"skipped: time budget spent"}
