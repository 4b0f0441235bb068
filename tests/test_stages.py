"""Stage costs (stages.py): per-stage wall time and peak memory, nested stages counted once."""

import time

import pytest

from lite_whisper_convert.stages import StageCosts, format_stage_table


def test_nested_stages_are_not_counted_twice():
    stages = StageCosts()
    started = time.perf_counter()
    with stages.stage("outer"):
        for _ in stages.iterate(iter([1, 2]), "reading"):
            time.sleep(0.02)  # the consumer's work: the outer stage's
        with stages.stage("inner"):
            time.sleep(0.02)
    wall = time.perf_counter() - started
    records = {record["stage"]: record for record in stages.as_list()}
    assert records["inner"]["seconds"] >= 0.02 and records["outer"]["seconds"] >= 0.04
    assert sum(record["seconds"] for record in records.values()) == pytest.approx(wall, abs=0.01)
    assert records["reading"]["calls"] == 3 and records["reading"]["peak_rss_gb"] is None  # memory: the parent's
    assert records["outer"]["peak_rss_gb"] > 0
    table = format_stage_table(stages.as_list())
    assert "outer" in table and "(in parent)" in table and "total" in table
