"""The ``llmroute`` command line, in-process and once as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from routing_middleware.catalog import Catalog
from routing_middleware.cli import main
from tests.core.feed_server import serve

DATA = Path(__file__).parent / "data"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys)
    assert code == 0
    assert "models" in out
    assert "sync-prices" in out


# ---------------------------------------------------------------------- models


def test_models_json_lists_the_snapshot(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "models", "--json")
    assert code == 0
    models = json.loads(out)
    assert len(models) >= 171
    assert len({m["provider"] for m in models}) >= 14
    for m in models:
        assert float(m["price"]["input"]) > 0
        assert float(m["price"]["output"]) > 0
        assert m["context_window"] > 0


def test_models_table_is_aligned_and_filtered(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "models", "--provider", "anthropic", "--sort", "price")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["id", "tier", "$in/M", "$out/M", "context", "quality"]
    rows = lines[1:-1]
    assert rows
    assert all(r.startswith("anthropic/") for r in rows)
    # right-aligned columns: every row ends at the header's width
    assert {len(r) for r in rows} == {len(lines[0])}
    prices = [float(r.split()[2]) for r in rows]
    outs = [float(r.split()[3]) for r in rows]
    blended = [(3 * i + o) / 4 for i, o in zip(prices, outs, strict=True)]
    assert blended == sorted(blended)
    assert lines[-1] == f"{len(rows)} models"


def test_models_filters(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "models", "--tier", "1", "--capability", "vision", "--json")
    assert code == 0
    models = json.loads(out)
    assert models
    assert all(m["tier"] == 1 and "vision" in m["capabilities"] for m in models)
    code, out, _ = run(capsys, "models", "--sort", "context", "--json")
    contexts = [m["context_window"] for m in json.loads(out)]
    assert contexts == sorted(contexts, reverse=True)
    code, out, _ = run(capsys, "models", "--sort", "quality", "--json", "--provider", "openai")
    qualities = [m.get("quality", -1) for m in json.loads(out)]
    assert qualities == sorted(qualities, reverse=True)
    code, out, _ = run(capsys, "models", "--mode", "embedding", "--json")
    assert {m["mode"] for m in json.loads(out)} == {"embedding"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["models", "--provider", "acme"], "no models for provider 'acme'"),
        (["models", "--capability", "telepathy"], "unknown capability 'telepathy'"),
        (
            ["price", "gpt-4o-mni", "--input", "1", "--output", "1"],
            "Did you mean: openai/gpt-4o-mini",
        ),
        (
            ["price", "gpt-4o-mini", "--input", "10", "--output", "1", "--cached", "11"],
            "exceed input_tokens",
        ),
        (["sync-prices", "--feed", "/nonexistent/feed.json"], "cannot read /nonexistent/feed.json"),
        (["--catalog", "/nonexistent/c.json", "models"], "cannot load catalog"),
    ],
)
def test_errors_are_one_line_on_stderr(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("llmroute: ")
    assert message in err
    assert "Traceback" not in err


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["price", "gpt-4o-mini", "--input", "-5", "--output", "1"])
    assert info.value.code == 2
    assert "negative" in capsys.readouterr().err


# ---------------------------------------------------------------------- price


def test_price_acceptance(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "price", "openai/gpt-4o-mini", "--input", "1000000", "--output", "1000000"
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "model  openai/gpt-4o-mini"
    assert "1,000,000 x $0.15/M = $0.15" in out
    assert "1,000,000 x $0.6/M = $0.6" in out
    assert lines[-1] == "total  $0.75"


def test_price_line_by_line_with_every_kind_of_token(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "price",
        "claude-sonnet-4.6",
        "--input=100000",
        "--output=1000",
        "--cached=50000",
        "--cache-write=40000",
        "--cache-write-long=10000",
        "--reasoning=400",
    )
    assert code == 0
    # 10,000 x 3 + 50,000 x 0.3 + 30,000 x 3.75 + 10,000 x 6 + 600 x 15 + 400 x 15 = 0.2325
    for fragment in (
        "uncached input",
        "10,000 x $3/M = $0.03",
        "50,000 x $0.3/M = $0.015",
        "30,000 x $3.75/M = $0.1125",
        "10,000 x $6/M = $0.06",
        "600 x $15/M = $0.009",
        "400 x $15/M = $0.006",
    ):
        assert fragment in out
    assert out.splitlines()[-1] == "total  $0.2325"


def test_price_notes_bands_and_off_peak(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "price", "gemini/gemini-2.5-pro", "--input", "250000", "--output", "0")
    assert "input above 200,000 tokens" in out
    # 250,000 x 2.5 = 0.625
    assert out.splitlines()[-1] == "total  $0.625"
    _, out, _ = run(
        capsys,
        "price",
        "deepseek-v4-flash",
        "--input",
        "1000",
        "--output",
        "1000",
        "--at",
        "2026-11-25T12:00:00Z",
    )
    assert "off-peak" in out
    # 1,000 x 0.15 + 1,000 x 0.6 = 0.00075
    assert out.splitlines()[-1] == "total  $0.00075"
    _, out, _ = run(
        capsys,
        "price",
        "deepseek-v4-flash",
        "--input",
        "1000",
        "--output",
        "1000",
        "--at",
        "2026-11-25T08:00:00+00:00",
    )
    assert "off-peak" not in out
    # 1,000 x 0.3 + 1,000 x 1.2 = 0.0015
    assert out.splitlines()[-1] == "total  $0.0015"


# ---------------------------------------------------------------------- sync-prices


def test_sync_prices_writes_a_merged_catalog(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_file = tmp_path / "merged.json"
    code, out, _ = run(
        capsys, "sync-prices", "--feed", str(DATA / "litellm_small.json"), "--out", str(out_file)
    )
    assert code == 0
    assert "3 added, 1 changed, 0 removed" in out
    assert "  changed  openai/gpt-4o-mini" in out
    assert "  added    qwen/qwen-test-tiered" in out
    merged = Catalog.load(out_file)
    assert str(merged.get("gpt-4o-mini").price.input) == "0.12"
    # the written file is itself a valid feed, and the CLI can use it as its catalog
    code, out, _ = run(
        capsys,
        "--catalog",
        str(out_file),
        "price",
        "gpt-4o-mini",
        "--input",
        "1000000",
        "--output",
        "0",
    )
    assert out.splitlines()[-1] == "total  $0.12"


def test_sync_prices_known_only(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "sync-prices", "--feed", str(DATA / "litellm_small.json"), "--known-only"
    )
    assert code == 0
    assert "0 added, 1 changed, 0 removed" in out
    assert "added" not in out.split("\n", 1)[1]


def test_sync_prices_from_url_with_explicit_format(capsys: pytest.CaptureFixture[str]) -> None:
    routes = {"/api/v1/models": (DATA / "openrouter_small.json").read_bytes()}
    with serve(routes) as base:
        code, out, _ = run(
            capsys, "sync-prices", "--feed", f"{base}/api/v1/models", "--format", "openrouter"
        )
    assert code == 0
    assert "(openrouter): 3 added" in out
    assert "openrouter/anthropic/claude-sonnet-4.6" in out


def test_sync_prices_rejects_invalid_feed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    feed = tmp_path / "bad.json"
    feed.write_text(
        json.dumps({"data": [{"id": "a/b", "pricing": {"prompt": "x", "completion": "0"}}]})
    )
    out_file = tmp_path / "never.json"
    code, _, err = run(capsys, "sync-prices", "--feed", str(feed), "--out", str(out_file))
    assert code == 1
    assert "'a/b'.pricing.prompt: not a number" in err
    assert not out_file.exists()


def test_real_subprocess() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "routing_middleware",
            "price",
            "openai/gpt-4o-mini",
            "--input",
            "1000000",
            "--output",
            "1000000",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "total  $0.75"
    failing = subprocess.run(
        [
            sys.executable,
            "-m",
            "routing_middleware",
            "price",
            "nope-model",
            "--input",
            "1",
            "--output",
            "1",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert failing.returncode == 1
    assert failing.stdout == ""
    assert failing.stderr.startswith("llmroute: Unknown model 'nope-model'")
    assert "Traceback" not in failing.stderr


@pytest.mark.parametrize(
    "content",
    ['[{"x": 1}]', '{"models": 5}', '"text"', "[]", '{"models": [1]}', '{"models": {"a": 1}}'],
)
def test_a_catalog_file_of_the_wrong_shape_is_one_line_not_a_traceback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str
) -> None:
    catalog = tmp_path / "catalog.json"
    catalog.write_text(content, encoding="utf-8")
    code, _, err = run(capsys, "--catalog", str(catalog), "models")
    assert code == 1
    assert err.startswith(f"llmroute: cannot load catalog {catalog}")
    assert "Traceback" not in err


def test_an_unwritable_out_file_is_one_line_not_a_traceback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_file = tmp_path / "missing-dir" / "merged.json"
    code, _, err = run(
        capsys, "sync-prices", "--feed", str(DATA / "litellm_small.json"), "--out", str(out_file)
    )
    assert code == 1
    assert err.startswith(f"llmroute: cannot write {out_file}")


@pytest.mark.parametrize("timeout", ["-1", "0", "nan", "soon"])
def test_sync_prices_refuses_a_timeout_that_is_not_positive(
    capsys: pytest.CaptureFixture[str], timeout: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["sync-prices", "--feed", "http://127.0.0.1:1/feed.json", "--timeout", timeout])
    assert exit_info.value.code == 2
    assert "--timeout" in capsys.readouterr().err
