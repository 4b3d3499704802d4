"""The loop's effectiveness as benchmark figures: one ``ctloop demo`` run (the default scenario, seed 42;
``--quick``: one drift) on the embedded broker, ctloop's served accuracy over the whole stream and in the
first 1,000 events after the drifts, each beside the peers measured on the same events with the same
delayed labels in the same run, and how fast the loop reacted. ``bench/effectiveness.py`` runs every
scenario over several seeds.

    python bench/demo.py [--quick]
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
BENCH_TIMEOUT_S = (600, 900)  # (--quick, full): one demo, read by infra.demo.bench


def run(quick: bool = False) -> list[dict]:
    from infra.demo.effectiveness import ARF, CTLOOP, HAT, NEVER, SLIDING
    from infra.demo.runner import DemoOptions, run_demo
    from infra.settings import Settings

    with tempfile.TemporaryDirectory(prefix="ctloop-bench-demo-") as tmp:
        settings = Settings.from_env(data_dir=tmp, bootstrap_servers="", clickhouse_url="")
        options = DemoOptions.quick(drifts=1, report=False) if quick else DemoOptions(report=False)
        result = run_demo(settings, options, progress=lambda line: print(line, file=sys.stderr))
    if result.comparison is None:
        raise RuntimeError(f"the demo produced no comparison: {result.problems}")
    overall, kinds = result.comparison.overall(), result.comparison.by_kind()
    rows = []
    for peer in (NEVER, HAT, ARF, SLIDING):
        rows.append({"name": "served accuracy, whole stream", "value": overall[CTLOOP], "unit": "accuracy",
                     "peer_name": f"{peer}, same events and labels", "peer_value": overall[peer]})
    for peer in (NEVER, HAT):
        rows.append({"name": "served accuracy, first 1,000 events after each drift", "value": kinds[CTLOOP]["after_drift"],
                     "unit": "accuracy", "peer_name": f"{peer}, same events and labels",
                     "peer_value": kinds[peer]["after_drift"]})
    lat = result.summary["latency"]
    first = [v for v in lat.get("drift_to_first_promotion_s") or [] if v is not None]
    rows += [
        {"name": "drift -> first promotion (max over drifts)", "value": max(first) if first else float("nan"),
         "unit": "s", "peer_name": "", "peer_value": None},
        {"name": "trigger -> registered (median)", "value": (lat["trigger_to_registered"] or {}).get("median_s", float("nan")),
         "unit": "s", "peer_name": "", "peer_value": None},
        {"name": "demo wall time", "value": round(result.elapsed_s, 1), "unit": "s", "peer_name": "", "peer_value": None,
         "notes": "; ".join(result.problems)},
    ]
    return rows


if __name__ == "__main__":
    import json

    print(json.dumps(run("--quick" in sys.argv), indent=2))
