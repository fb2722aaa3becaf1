"""``kvchat bench --parallel``: a real short run on the bundled model through the
engine's multi-sequence path (structure only, never speed), the files --out writes,
bad input, and the figures' definitions on hand-made arrival times."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.parallel_stats import aggregate_rate, join_figures, run_figures
from tests.conftest import run_bench


@pytest.fixture(scope="module")
def parallel_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("bench_parallel")
    proc = run_bench("bench", "--quick", "--parallel", "1,2", "--json", "--reps", "1",
                  "--tokens", "6", "--prompt-tokens", "40", "--ctx", "512",
                  "--join-tokens", "120", "--kv-layout", "both", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), out


def test_each_parallelism_has_its_row_from_real_replies(
        parallel_run: tuple[dict[str, Any], Path]) -> None:
    report, _ = parallel_run
    assert report["kind"] == "parallel"
    assert report["run"]["parallel"] == [1, 2] and report["run"]["anchors"] == []
    assert [row["parallel"] for row in report["rows"]] == [1, 2]
    assert report["run"]["kv_layouts"] == ["shared", "split"]
    for row, key in [(row, key) for row in report["rows"] for key in ("kvchat", "kvchat_split")]:
        k = row[key]
        assert k["aggregate_tokens_per_s"]["n"] == 1
        assert k["aggregate_tokens_per_s"]["median"] > 0
        assert 0 < k["fairness"]["median"] <= 1.0
        assert 0 < k["engine_fairness"]["median"] <= 1.0
        assert k["ttft_max_s"]["median"] >= k["ttft_median_s"]["median"] > 0
        assert "batched_bench" not in row and "server" not in row and row["ratios"] == {}
    runs = [(n, report["samples"][key][0][str(n)]) for n in (1, 2)
            for key in ("kvchat", "kvchat_split")]
    for n, run in runs:
        # Every reply gave exactly the tokens asked (end of generation banned), and the
        # engine measured each one on its thread.
        assert run["tokens"] == [6] * n
        assert len(run["engine_reply_tokens_per_s"]) == n


def test_join_measures_the_gap_while_a_long_prompt_joins(
        parallel_run: tuple[dict[str, Any], Path]) -> None:
    join = parallel_run[0]["join"]
    assert join["streams"] == 1 and join["join_prompt_tokens"] == 120
    assert join["plain_gap_s"]["median"] > 0
    assert join["longest_gap_s"]["median"] >= join["plain_gap_s"]["median"]
    assert join["longest_over_plain"]["median"] >= 1.0
    assert join["joiner_ttft_s"]["median"] > 0
    assert join["streams_ended_early"] is False


def test_out_writes_json_and_markdown(parallel_run: tuple[dict[str, Any], Path]) -> None:
    report, out = parallel_run
    assert json.loads((out / "bench_parallel.json").read_text())["rows"] == report["rows"]
    table = [line for line in (out / "bench_parallel.md").read_text().splitlines()
             if line.startswith("| ") and line[2].isdigit()]
    assert [line.split(" | ")[:2] for line in table] == [
        ["| 1", "shared"], ["| 1", "split"], ["| 2", "shared"], ["| 2", "split"]]


@pytest.mark.parametrize("args, message", [
    (["--parallel", "0,2"], "expected positive numbers"),
    (["--parallel", "1,x"], "expected numbers like 1,2,4,8"),
    (["--parallel", "65"], "from 1 to 64"),
    (["--parallel", "8", "--ctx", "1024"], "raise --ctx above 1024"),
    (["--parallel", "2", "--batched-bench", "/no/such/binary"], "does not exist"),
])
def test_bad_parallel_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    proc = run_bench("bench", "--quick", *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvchat"), proc.stderr
    assert message in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def _reply(times: list[float], sent: float = 0.0) -> dict[str, Any]:
    return {"sent_s": sent, "stamps": [(t, 1) for t in times], "done": {}}


def test_aggregate_counts_the_span_where_every_reply_decodes() -> None:
    # Reply a decodes every 0.1 s from 1.0, reply b every 0.2 s from 1.5: both decode
    # from 1.5 to 2.0; in (1.5, 2.0] a gives 5 tokens and b gives 2 (1.7, 1.9).
    a = _reply([1.0 + 0.1 * i for i in range(11)])
    b = _reply([1.5 + 0.2 * i for i in range(6)])
    rate, span = aggregate_rate([a, b])
    assert span == "all decoding"
    assert rate == pytest.approx(7 / 0.5)
    figures = run_figures([a, b])
    assert figures["per_reply_tokens_per_s"] == pytest.approx([10.0, 5.0])
    assert figures["fairness"] == pytest.approx(5.0 / 7.5)
    assert figures["ttft_s"] == pytest.approx([1.0, 1.5])


def test_join_finds_the_longest_gap_overlapping_the_join() -> None:
    stream = _reply([0.1 * i for i in range(10)] + [1.5, 1.6, 1.7])  # 0.6 s stall at 0.9
    joiner = _reply([1.45], sent=0.95)
    figures = join_figures({"streams": [stream], "joiner": joiner, "join_prompt_tokens": 2000})
    assert figures["plain_gap_s"] == pytest.approx(0.1)
    assert figures["longest_gap_s"] == pytest.approx(0.6)
    assert figures["longest_over_plain"] == pytest.approx(6.0)
    assert figures["joiner_ttft_s"] == pytest.approx(0.5)
