"""Demo commands: ``ctloop demo`` (the whole loop on a drifting stream), ``ctloop effectiveness``
(the offline comparison alone) and ``ctloop bench`` (every benchmark, one table)."""
from __future__ import annotations

import json
import logging
import sys

import click


def _scenario(_ctx, _param, value: str) -> str:
    from infra.demo.scenarios import SCENARIOS

    if value not in SCENARIOS:
        raise click.BadParameter(f"unknown scenario {value!r}; one of {', '.join(sorted(SCENARIOS))}")
    return value


def _delay(_ctx, _param, value: str) -> tuple[int, int]:
    """MIN:MAX events -> (min, max); BadParameter naming the option otherwise."""
    try:
        low, high = (int(v) for v in value.split(":"))
    except ValueError:
        raise click.BadParameter(f"expected MIN:MAX events, e.g. 20:200, got {value!r}") from None
    if not 0 <= low <= high:
        raise click.BadParameter(f"need 0 <= MIN <= MAX, got {value!r}")
    return low, high


def register(cli: click.Group) -> None:
    """Add the ``demo``, ``effectiveness`` and ``bench`` commands to ``cli``."""
    @cli.command()
    @click.option("--scenario", default="rbf-shift", show_default=True, callback=_scenario,
                  help="rbf-shift, agrawal-switch, hyperplane-gradual, sea-noise, rbf-overlap or rainfall "
                       "(docs/DEMO.md).")
    @click.option("--seed", type=int, default=42, show_default=True)
    @click.option("--label-share", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True,
                  help="Fraction of the predictions reviewers label.")
    @click.option("--label-delay", default="20:200", show_default=True, callback=_delay,
                  help="MIN:MAX events between a prediction and its label (uniform).")
    @click.option("--quick", is_flag=True, help="A smaller set-up (initial set 1,500, shadow sample 150, review trigger 1,200 labels, fault at event 800); the same 9,000 events, about 2.5 minutes on 2 cores.")
    @click.option("--events", type=int, default=None, help="Events per concept (default 3000).")
    @click.option("--rate", type=float, default=None, help="Served events per second (default 75; 0: as fast as possible).")
    @click.option("--drifts", type=click.IntRange(1, 2), default=2, show_default=True, help="Concept drifts to go through.")
    @click.option("--deployment", default="demo", show_default=True)
    @click.option("--timeout", "timeout_s", type=float, default=None, help="Deadline of the streaming part in seconds.")
    @click.option("--no-report", is_flag=True, help="Skip the ClickHouse sink and the HTML report.")
    @click.option("--no-peers", is_flag=True, help="Skip river HAT/ARF and the sliding-window retrain in the comparison.")
    @click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout (progress goes to stderr).")
    @click.option("--verbose", is_flag=True, help="Keep the components' INFO logs (default: progress lines only).")
    @click.pass_obj
    def demo(settings, scenario, seed, label_share, label_delay, quick, events, rate, drifts, deployment, timeout_s,
             no_report, no_peers, as_json, verbose):
        """Run the whole loop end to end on a drifting stream (embedded Kafka and ClickHouse by default).

        A serving app predicts on the scenario's stream (drift points fixed in events) while reviewers
        label a share of the predictions late; the processors join, count, detect drift and trigger
        training; a faulty trainer (noisy labels) produces a bad candidate that must be rejected, then the
        trainer retrains, candidates run in shadow and the policy promotes them. Prints progress, a
        summary table and the prequential comparison (whole stream first) against never retrained, river
        HAT and ARF and a sliding-window retrain fed the same delayed labels, and writes the HTML report.
        Exits 1 unless the policy promoted a model after every drift and the bad candidate was rejected."""
        from infra.demo.runner import DemoOptions, render_summary, run_demo

        if not verbose:
            for name in ("trainers", "streams", "processors", "infra.embedded", "infra.clickhouse"):
                logging.getLogger(name).setLevel(logging.WARNING)

        overrides = {"scenario": scenario, "seed": seed, "deployment": deployment, "drifts": drifts,
                     "report": not no_report, "peers": not no_peers, "review_fraction": label_share,
                     "min_review_delay": label_delay[0], "max_review_delay": label_delay[1]}
        if events is not None:
            overrides["concept_events"] = events
        if rate is not None:
            overrides["rate"] = rate
        if timeout_s is not None:
            overrides["timeout_s"] = timeout_s
        options = DemoOptions.quick(**overrides) if quick else DemoOptions(**overrides)
        try:
            options.check()
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from exc
        progress = (lambda line: click.echo(line, err=True)) if as_json else click.echo
        result = run_demo(settings, options, progress=progress)
        if as_json:
            click.echo(json.dumps(result.as_dict(), indent=2, default=str))
        else:
            click.echo(render_summary(result))
        sys.exit(0 if result.ok else 1)

    @cli.command()
    @click.option("--scenario", default="rbf-shift", show_default=True, callback=_scenario)
    @click.option("--events", type=int, default=9000, show_default=True, help="Length of the stream (three concepts).")
    @click.option("--seed", type=int, default=42, show_default=True)
    @click.option("--label-share", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True)
    @click.option("--label-delay", default="20:200", show_default=True, callback=_delay)
    @click.option("--peers", default="hat,arf,sliding", show_default=True,
                  help="Comma-separated learning peers to run (hat, arf, sliding).")
    @click.option("--json", "as_json", is_flag=True)
    def effectiveness(scenario, events, seed, label_share, label_delay, peers, as_json):
        """Offline comparison on a scenario's stream (no Kafka): the initial MLP never retrained vs. river
        HAT, river ARF and a sliding-window retrain fed the same delayed labels (prequential, in events)."""
        from infra.demo.effectiveness import ARF, HAT, SLIDING
        from infra.demo.offline import offline_comparison

        names = {"hat": HAT, "arf": ARF, "sliding": SLIDING}
        chosen = [p.strip() for p in peers.split(",") if p.strip()]
        unknown = [p for p in chosen if p not in names]
        if unknown:
            raise click.BadParameter(f"unknown peer(s) {unknown}; use hat, arf, sliding", param_hint="--peers")
        comparison = offline_comparison(events, scenario=scenario, seed=seed, review_fraction=label_share,
                                        min_delay=label_delay[0], max_delay=label_delay[1],
                                        which=[names[p] for p in chosen])
        click.echo(json.dumps(comparison.as_dict(), indent=2) if as_json else comparison.render())

    @cli.command()
    @click.option("--quick", is_flag=True, help="Short measurements (each script well under a minute).")
    @click.option("--only", multiple=True, help="Run only these scripts (e.g. --only serving).")
    @click.option("--out", "out_dir", default=None, help="Folder of the JSON results (default bench/results).")
    def bench(quick, only, out_dir):
        """Run every benchmark script under bench/ and print one table, each figure beside its peer
        measured in the same run; writes the table as JSON."""
        from infra.demo.bench import render_table, run_benchmarks

        results, path = run_benchmarks(quick=quick, only=only or None, out_dir=out_dir,
                                       progress=lambda line: click.echo(line, err=True))
        click.echo(render_table(results))
        click.echo(f"\nJSON: {path}")
        sys.exit(1 if any(r.get("error") for r in results) else 0)
