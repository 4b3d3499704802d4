"""Analytics commands: ``ctloop sink``, ``ctloop sql``, ``ctloop report``."""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import signal
import threading
import uuid
from decimal import Decimal
from pathlib import Path

import click

from infra.clickhouse import ClickHouseError


def _cell(value) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _jsonable(value):
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, (uuid.UUID, Decimal)):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def format_rows(columns: list[str], rows: list[tuple], fmt: str) -> str:
    """Rows as an aligned text table, CSV or JSON (a list of objects)."""
    if fmt == "json":
        return json.dumps([{c: _jsonable(v) for c, v in zip(columns, r)} for r in rows], indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([["" if v is None else _cell(v) for v in r] for r in rows])
        return out.getvalue().rstrip("\n")
    cells = [[_cell(v) for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    line = "+".join("-" * (w + 2) for w in widths)
    out = [" " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)), line]
    out += [" " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out)


def run_sql(settings, query: str, fmt: str = "table", client=None) -> str:
    """Run ``query`` on ClickHouse (``client`` or a new connection) and format the rows (table, csv or json).
    Raises click.ClickException with the server's message when the query fails."""
    from infra.clickhouse import connect

    own = client is None
    client = connect(settings) if own else client
    try:
        result = client.query(query)
    except Exception as exc:  # noqa: BLE001 - the server's message is what the user needs
        raise click.ClickException(f"query failed: {str(exc).splitlines()[0]}") from None
    finally:
        if own:
            client.close()
    return format_rows(list(result.column_names), result.result_rows, fmt)


def register(cli: click.Group) -> None:
    """Add the ``sink``, ``sql`` and ``report`` commands to ``cli``."""
    @cli.command()
    @click.option("--until-caught-up", is_flag=True, help="Store what is on the topics now, then exit.")
    @click.option("--timeout", "timeout_s", default=300.0, show_default=True, help="With --until-caught-up.")
    @click.pass_obj
    def sink(settings, until_caught_up: bool, timeout_s: float) -> None:
        """Store every topic of the loop in ClickHouse (consumer group <prefix>sink)."""
        from infra.metrics import Metrics
        from infra.clickhouse_sink import ClickHouseSink

        if not settings.bootstrap_servers:
            raise click.UsageError("CTLOOP_BOOTSTRAP_SERVERS must name the Kafka cluster to sink from")
        stopping = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stopping.set())
        metrics = Metrics("sink")
        try:
            with ClickHouseSink(settings, metrics=metrics) as s:
                metrics.serve(settings.metrics_port)
                if until_caught_up:
                    click.echo(f"stored {s.run_until_caught_up(timeout_s)} rows in {settings.clickhouse_database}")
                else:
                    s.run(stop=stopping.is_set)
        except ClickHouseError as exc:
            raise click.ClickException(str(exc)) from None

    @cli.command()
    @click.argument("query")
    @click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
    @click.pass_obj
    def sql(settings, query: str, fmt: str) -> None:
        """Run a ClickHouse query on the analytics database and print the result.

        Example: ctloop sql "SELECT * FROM feedback_funnel"
        """
        try:
            click.echo(run_sql(settings, query, fmt))
        except ClickHouseError as exc:
            raise click.ClickException(str(exc)) from None

    @cli.command()
    @click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="HTML file to write (default <data_dir>/report.html).")
    @click.option("--catch-up/--no-catch-up", default=False,
                  help="First store what is on Kafka now (needs CTLOOP_BOOTSTRAP_SERVERS).")
    @click.pass_obj
    def report(settings, output: Path | None, catch_up: bool) -> None:
        """Write a self-contained HTML report (plots from ClickHouse)."""
        from infra.report import write_report

        path = output or settings.data_path / "report.html"
        try:
            client = None
            if catch_up:
                from infra.clickhouse_sink import ClickHouseSink

                if not settings.bootstrap_servers:
                    raise click.UsageError("--catch-up needs CTLOOP_BOOTSTRAP_SERVERS")
                with ClickHouseSink(settings) as s:
                    s.run_until_caught_up(300)
                    click.echo(str(write_report(settings, path, client=s.client)))
                return
            click.echo(str(write_report(settings, path, client=client)))
        except ClickHouseError as exc:
            raise click.ClickException(str(exc)) from None
