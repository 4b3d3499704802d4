"""Demo commands: ``ctloop demo`` (the whole loop on a drifting stream), ``ctloop effectiveness``
(the offline comparison alone) and ``ctloop bench`` (every benchmark, one table)."""
from __future__ import annotations

import json
import logging
import sys

import click


def register(cli: click.Group) -> None:
    @cli.command()
    @click.option("--quick", is_flag=True, help="A shorter run (about 2 minutes; what the end-to-end test runs).")
    @click.option("--events", type=int, default=None, help="Minimum events per concept (default 2500; --quick 1500).")
    @click.option("--rate", type=float, default=None, help="Served events per second (0: as fast as possible).")
    @click.option("--drifts", type=click.IntRange(1, 2), default=2, show_default=True, help="Concept drifts to go through.")
    @click.option("--seed", type=int, default=42, show_default=True)
    @click.option("--deployment", default="demo", show_default=True)
    @click.option("--timeout", "timeout_s", type=float, default=None, help="Deadline of the streaming part in seconds.")
    @click.option("--no-report", is_flag=True, help="Skip the ClickHouse sink and the HTML report.")
    @click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout (progress goes to stderr).")
    @click.option("--verbose", is_flag=True, help="Keep the components' INFO logs (default: progress lines only).")
    @click.pass_obj
    def demo(settings, quick, events, rate, drifts, seed, deployment, timeout_s, no_report, as_json, verbose):
        """Run the whole loop end to end on a drifting stream (embedded Kafka and ClickHouse by default).

        A serving app predicts on a stream with two concept drifts while reviewers label half of the
        predictions late; the processors join, count, detect drift and trigger training; a faulty trainer
        (noisy labels) produces a bad candidate that must be rejected, then the trainer retrains after
        each drift, candidates run in shadow and the policy promotes them. Prints progress, a summary
        table and the effectiveness comparison, and writes the HTML report."""
        from infra.demo.runner import DemoOptions, render_summary, run_demo

        if not verbose:
            for name in ("trainers", "streams", "processors", "infra.embedded", "infra.clickhouse"):
                logging.getLogger(name).setLevel(logging.WARNING)

        overrides = {"seed": seed, "deployment": deployment, "drifts": drifts, "report": not no_report}
        if events is not None:
            overrides["min_phase_events"] = events
        if rate is not None:
            overrides["rate"] = rate
        if timeout_s is not None:
            overrides["timeout_s"] = timeout_s
        options = DemoOptions.quick(**overrides) if quick else DemoOptions(**overrides)
        progress = (lambda line: click.echo(line, err=True)) if as_json else click.echo
        result = run_demo(settings, options, progress=progress)
        if as_json:
            click.echo(json.dumps(result.as_dict(), indent=2, default=str))
        else:
            click.echo(render_summary(result))
        sys.exit(0 if result.ok else 1)

    @cli.command()
    @click.option("--events", type=int, default=12000, show_default=True, help="Length of the stream.")
    @click.option("--seed", type=int, default=42, show_default=True)
    @click.option("--json", "as_json", is_flag=True)
    def effectiveness(events, seed, as_json):
        """Offline comparison on the demo's stream (no Kafka): a never-retrained MLP vs. a river online
        learner fed the same delayed reviews, with drifts at 1/3 and 2/3 of the stream."""
        from infra.demo.offline import offline_comparison

        comparison = offline_comparison(events, seed=seed)
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
