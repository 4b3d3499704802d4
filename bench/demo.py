"""The loop's effectiveness as benchmark figures: a (shortened) ``ctloop demo`` on the embedded broker,
the served accuracy after recovery beside a never-retrained model and a river online learner measured on
the same served stream in the same run, and how fast the loop reacted.

    python bench/demo.py [--quick]
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run(quick: bool = False) -> list[dict]:
    from infra.demo.runner import DemoOptions, run_demo
    from infra.settings import Settings

    with tempfile.TemporaryDirectory(prefix="ctloop-bench-demo-") as tmp:
        settings = Settings.from_env(data_dir=tmp, bootstrap_servers="", clickhouse_url="")
        options = DemoOptions.quick(drifts=1, report=False) if quick else DemoOptions(report=False)
        result = run_demo(settings, options, progress=lambda line: print(line, file=sys.stderr))
    if result.comparison is None:
        raise RuntimeError(f"the demo produced no comparison: {result.problems}")
    kinds = result.comparison.by_kind()
    served = kinds["ctloop"]["after_recovery"]
    lat = result.summary["latency"]
    recovering = [v for v in lat.get("drift_to_recovering_promotion_s") or [] if v is not None]
    rows = [
        {"name": f"served accuracy after recovery ({options.drifts} drift(s))", "value": served, "unit": "accuracy",
         "peer_name": "never-retrained model, same events", "peer_value": kinds["never retrained"]["after_recovery"]},
        {"name": f"served accuracy after recovery ({options.drifts} drift(s))", "value": served, "unit": "accuracy",
         "peer_name": "river online HAT on the same delayed reviews", "peer_value": kinds["river online (HAT)"]["after_recovery"]},
        {"name": "served accuracy right after the drift", "value": kinds["ctloop"]["after_drift"], "unit": "accuracy",
         "peer_name": "river online HAT on the same delayed reviews", "peer_value": kinds["river online (HAT)"]["after_drift"]},
        {"name": "drift -> promotion of the recovering model", "value": max(recovering) if recovering else float("nan"),
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
