"""bs_ref.timing and timing.json: exclusive parts, the summary's one "Time (s)" line, resumed cells keeping the
time recorded when they were computed, and --overwrite removing timing.json."""

from __future__ import annotations

import json
import os
import time

from bs_ref import timing
from bs_ref.protocol import report
from bs_ref.protocol.store import DERIVED, RunDir, remove_derived


def test_parts_are_exclusive_and_a_same_category_part_is_absorbed():
    ledger, began = timing.Ledger(), time.perf_counter()
    with ledger.part("unlearning: bs_s"):
        time.sleep(0.02)
        with ledger.part("beliefs (BS-S)"):
            time.sleep(0.03)
        with ledger.part("evaluation: start"):
            with ledger.part("evaluation: final"):  # absorbed by the running evaluation
                time.sleep(0.01)
    seconds, elapsed = ledger.totals(), time.perf_counter() - began
    assert set(seconds) == {"unlearning: bs_s", "beliefs (BS-S)", "evaluation: start"}
    assert seconds["beliefs (BS-S)"] >= 0.03 and seconds["evaluation: start"] >= 0.01
    assert abs(sum(seconds.values()) - elapsed) < 0.005  # the parts add up to the time they cover
    before = ledger.totals()
    with ledger.part("report"):
        pass
    assert list(ledger.since(before)) in ([], ["report"])
    assert list(timing.by_category(seconds)) == ["unlearning", "beliefs", "evaluation"]
    parts = {"pair": 2.0, "unlearning: ga": 1.0, "unlearning: bs_s": 2.0, "beliefs (BS-S)": 4.0, "report": 0.1}
    line = timing.time_line(parts, total=10.0, resumed=2)
    assert line == "Time (s): pair 2, unlearning 3, beliefs 4, total 10; 2 result(s) resumed; by part: timing.json"


def test_timing_json_keeps_a_resumed_cells_recorded_time_and_the_summary_stays_one_screen(tmp_path):
    store = RunDir(tmp_path, {"x": 1})
    try:
        for label in ("ga", "npo"):
            store.save_result(label, 0, {"metrics": {}, "timing": {f"unlearning: {label}": 3.0}})
        old = store.result_path("ga", 0)
        os.utime(old, (1000, 1000))  # written by an earlier run
        (old.parent / "attacks_end.json").write_text(json.dumps({"setting": "end", "timing": {"attacks: ga": 5.0}}))
        written = report.write_timing(store, store.cells(["ga", "npo"], [0]), 9.0, since=time.time() - 60)
    finally:
        store.close()
    found = json.loads((tmp_path / "timing.json").read_text())
    assert found == json.loads(json.dumps(written)) and found["resumed"] == ["ga seed 0"]
    assert found["cells"]["ga seed 0"]["seconds"] == {"unlearning: ga": 3.0, "attacks: ga (end)": 5.0}
    assert found["cells"]["npo seed 0"]["computed"] == "this run"
    # every cell's parts summed, whichever process computed it (worker processes write no ledger of their own here)
    assert found["cells_by_part_s"] == {"attacks: ga (end)": 5.0, "unlearning: ga": 3.0, "unlearning: npo": 3.0}
    assert found["cells_by_category_s"]["unlearning"] == 6.0 and sum(found["cells_by_category_s"].values()) == 11.0
    out = {"out": str(tmp_path), "rows": [], "verdicts": [], "wall_s": 9.0, "timing": found}
    summary = report.terminal_summary(out)
    assert len(summary.splitlines()) <= report.SUMMARY_MAX_LINES
    assert "Time (s): " in summary and "1 result(s) resumed" in summary
    assert "timing.json" in DERIVED and "timing.json" in remove_derived(tmp_path)
