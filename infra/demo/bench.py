"""The benchmark runner behind ``ctloop bench`` and ``bench/run.py``.

Every ``bench/<name>.py`` (not ``run.py``, not ``_*.py``) defines ``run(quick: bool) -> list[dict]``
with keys name, value, unit, peer_name, peer_value (see bench/README.md). Each script runs in its own
subprocess (a crash or a leaked thread stays there) with a deadline; the figures are printed as one
table, each beside its peer from the same run, and written to bench/results/ as JSON.
"""
from __future__ import annotations

import importlib.util
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

ROOT = Path(__file__).resolve().parents[2]
BENCH_DIR = ROOT / "bench"
REQUIRED = ("name", "value", "unit")
_MARK = "CTLOOP-BENCH-JSON:"


def declared_timeout(path: Path, quick: bool) -> float | None:
    """A script's own deadline: a module-level ``BENCH_TIMEOUT_S = (quick_seconds, full_seconds)``
    (read without importing the script); None when it declares none."""
    import ast

    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError):
        return None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "BENCH_TIMEOUT_S" for t in node.targets):
            quick_s, full_s = ast.literal_eval(node.value)
            return float(quick_s if quick else full_s)
    return None


def discover(bench_dir: Path = BENCH_DIR) -> list[Path]:
    """The benchmark scripts of ``bench_dir`` (``*.py`` but run.py and ``_``-prefixed ones), sorted."""
    return sorted(p for p in bench_dir.glob("*.py") if p.name != "run.py" and not p.name.startswith("_"))


def higher_is_better(row: dict) -> bool:
    """Whether a larger ``value`` of a result row is better: its ``higher_is_better`` when given, else
    from its unit (throughputs, ratios, %, accuracy: yes; durations: no; others: yes)."""
    if "higher_is_better" in row:
        return bool(row["higher_is_better"])
    unit = str(row.get("unit", "")).lower()
    if "/s" in unit or unit.startswith("x") or unit in ("%", "accuracy", "ratio"):
        return True
    return not (unit in ("s", "ms", "us", "µs", "ns", "min") or unit.endswith("ms") or unit.endswith(" s"))


def validate_rows(rows, script: str) -> list[dict]:
    """Check the rows a script returned; ValueError naming the script and the field."""
    if not isinstance(rows, list):
        raise ValueError(f"{script}: run() must return a list of dicts, got {type(rows).__name__}")
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{script}: row {i} is a {type(row).__name__}, not a dict")
        for key in REQUIRED:
            if key not in row:
                raise ValueError(f"{script}: row {i} has no {key!r}")
        if not isinstance(row["value"], (int, float)) or isinstance(row["value"], bool):
            raise ValueError(f"{script}: row {i} ({row['name']}): value must be a number, got {row['value']!r}")
        peer = row.get("peer_value")
        if peer is not None and (not isinstance(peer, (int, float)) or isinstance(peer, bool)):
            raise ValueError(f"{script}: row {i} ({row['name']}): peer_value must be a number or None, got {peer!r}")
        clean = dict(row)
        clean.setdefault("peer_name", "")
        clean.setdefault("peer_value", None)
        clean["script"] = script
        clean["higher_is_better"] = higher_is_better(row)
        clean["ratio"] = _ratio(clean)
        out.append(clean)
    return out


def _ratio(row: dict) -> float | None:
    """How ctloop compares with its peer: >1 means better than the peer, whatever the unit's direction."""
    v, p = row["value"], row.get("peer_value")
    if p in (None, 0) or not v or not math.isfinite(v) or not math.isfinite(p):
        return None
    return round(v / p if row["higher_is_better"] else p / v, 3)


def run_script(path: Path, quick: bool, timeout_s: float) -> list[dict]:
    """Run one script's ``run(quick)`` in a subprocess; returns its validated rows."""
    cmd = [sys.executable, "-m", "infra.demo.bench", "--child", str(path)] + (["--quick"] if quick else [])
    proc = subprocess.run(cmd, cwd=str(ROOT), capture_output=True, text=True, timeout=timeout_s)
    payload = None
    for line in proc.stdout.splitlines():
        if line.startswith(_MARK):
            payload = json.loads(line[len(_MARK):])
    if proc.returncode != 0 or payload is None:
        tail = (proc.stderr or proc.stdout)[-1500:]
        raise RuntimeError(f"{path.name} exited with {proc.returncode}: {tail.strip()}")
    return validate_rows(payload, path.stem)


def run_benchmarks(*, quick: bool = False, only: Iterable[str] | None = None, out_dir: str | Path | None = None,
                   bench_dir: Path = BENCH_DIR, timeout_s: float | None = None,
                   progress: Callable[[str], None] = print) -> tuple[list[dict], Path]:
    """Run each benchmark script (or those named in ``only``) in a subprocess with its deadline (seconds),
    write the results to ``bench-<UTC stamp>.json`` and ``latest.json`` in ``out_dir`` (default
    ``bench/results``); returns the result rows and the file. A failing or timed-out script becomes a row
    with ``error``. Raises ValueError naming an unknown script in ``only``."""
    scripts = discover(bench_dir)
    if only:
        wanted = {o.removesuffix(".py") for o in only}
        unknown = wanted - {p.stem for p in scripts}
        if unknown:
            raise ValueError(f"only: no benchmark script {sorted(unknown)} in {bench_dir} "
                             f"(have {[p.stem for p in scripts]})")
        scripts = [p for p in scripts if p.stem in wanted]
    per_script = timeout_s or (300.0 if quick else 900.0)
    results: list[dict] = []
    for path in scripts:
        progress(f"bench: {path.stem} ...")
        t0 = time.monotonic()
        limit = declared_timeout(path, quick) or per_script
        try:
            rows = run_script(path, quick, limit)
            results.extend(rows)
            progress(f"bench: {path.stem}: {len(rows)} figure(s) in {time.monotonic() - t0:.1f}s")
        except subprocess.TimeoutExpired:
            results.append({"script": path.stem, "name": f"{path.stem} (timed out after {limit:.0f}s)",
                            "error": "timeout"})
            progress(f"bench: {path.stem}: TIMED OUT")
        except Exception as exc:  # noqa: BLE001 - one failing script does not hide the others
            results.append({"script": path.stem, "name": f"{path.stem} (failed)", "error": str(exc)})
            progress(f"bench: {path.stem}: FAILED: {exc}")
    out = Path(out_dir) if out_dir else bench_dir / "results"
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    doc = {"created": stamp, "quick": quick, "machine": {"python": platform.python_version(),
                                                         "platform": platform.platform(), "cpus": _cpus()},
           "results": results}
    path = out / f"bench-{stamp}.json"
    path.write_text(json.dumps(doc, indent=2))
    (out / "latest.json").write_text(json.dumps(doc, indent=2))
    return results, path


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)


def _num(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def render_table(results: list[dict]) -> str:
    """The result rows as a plain-text table: benchmark, value, unit, peer and the ratio to the peer."""
    header = ("benchmark", "ctloop", "unit", "peer (same run)", "peer", "vs peer")
    rows = []
    for r in results:
        if r.get("error"):
            rows.append((f"{r['script']}: {r['name']}", "ERROR", "", str(r["error"])[:60], "", ""))
            continue
        ratio = r.get("ratio")
        rows.append((f"{r['script']}: {r['name']}", _num(r["value"]), r["unit"], r.get("peer_name") or "-",
                     _num(r.get("peer_value")), "-" if ratio is None else f"{ratio:.2f}x"))
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    fmt = lambda row: "  ".join(str(c).ljust(w) if i in (0, 2, 3) else str(c).rjust(w)  # noqa: E731
                                for i, (c, w) in enumerate(zip(row, widths)))
    lines = [fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows]
    lines.append("vs peer: how many times better than the peer (throughput: ctloop/peer; latency: peer/ctloop)")
    return "\n".join(lines)


def _child(path: str, quick: bool) -> None:
    spec = importlib.util.spec_from_file_location(f"bench_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(Path(path).parent))
    spec.loader.exec_module(module)
    if not hasattr(module, "run"):
        raise SystemExit(f"{path}: no run(quick) function (see bench/README.md)")
    rows = module.run(quick)
    print(_MARK + json.dumps(rows, default=float), flush=True)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--child", required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    _child(args.child, args.quick)
