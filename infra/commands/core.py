"""Core commands: ``ctloop broker``, ``ctloop tail``, ``ctloop topics``, ``ctloop settings``.

They work against any Kafka cluster named by CTLOOP_BOOTSTRAP_SERVERS; ``ctloop broker`` starts the
embedded Tansu broker and prints the address to put there.
"""
from __future__ import annotations

import base64
import json
import signal
import sys
import time

import click

from infra.settings import Settings, settings_table


def require_bootstrap(settings: Settings) -> str:
    """The configured bootstrap servers; a usage error naming the variable when there are none (for the
    commands that talk to a running cluster)."""
    if not settings.bootstrap_servers:
        raise click.UsageError("no Kafka configured: set CTLOOP_BOOTSTRAP_SERVERS (`ctloop broker` prints an address)")
    return settings.bootstrap_servers


def _json_default(value):
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


class _StopFlag:
    """Set by SIGINT/SIGTERM; restores the previous handlers on exit."""

    def __init__(self):
        self.stopped = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.stopped = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __call__(self) -> bool:
        return self.stopped


# -- broker -------------------------------------------------------------------------------------------
def broker_command(settings: Settings, port: int | None, host: str, create_topics: bool) -> None:
    """``ctloop broker``: run the embedded broker on ``host``:``port`` (a free port when None) until
    SIGTERM/SIGINT, creating the topics first when asked. Raises click.ClickException when it exits on its own."""
    from infra.embedded import EmbeddedBroker

    with _StopFlag() as stop, EmbeddedBroker(host=host, port=port) as broker:
        if create_topics:
            from confluent_kafka.admin import AdminClient

            from streams.kafka_config import client_config
            from streams.topics import Topics, ensure_topics

            ensure_topics(AdminClient(client_config(settings.for_embedded_broker(broker.bootstrap_servers))),
                          Topics.from_settings(settings))
        click.echo(f"embedded Kafka broker (Tansu, in memory) on {broker.bootstrap_servers}")
        click.echo(f"export CTLOOP_BOOTSTRAP_SERVERS={broker.bootstrap_servers}")
        sys.stdout.flush()
        while not stop() and broker.running:
            time.sleep(0.2)  # waiting for a signal; the loop checks the flag
        if not broker.running and not stop():
            raise click.ClickException("the embedded broker exited unexpectedly")
        click.echo("stopping the embedded broker")
    click.echo("stopped")


# -- tail ---------------------------------------------------------------------------------------------
def tail_lines(settings: Settings, topic: str, *, from_beginning: bool = False, max_events: int | None = None,
               timeout_s: float | None = None, stop=lambda: False):
    """Yield one JSON line per record of ``topic`` (a key like "predictions" or a full name).

    Reads every partition without a consumer group (nothing committed, no rebalance of other
    consumers). Stops after ``max_events`` records, after ``timeout_s`` seconds without a new record,
    or when ``stop()`` is true. Undecodable records give a line with an "error" field."""
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, TopicPartition

    from streams.kafka_config import client_config
    from streams.serde import DecodeError, Serde
    from streams.topics import Topics

    require_bootstrap(settings)
    name = Topics.from_settings(settings).resolve(topic)
    serde = Serde.from_settings(settings)
    consumer = Consumer(client_config(settings, {"group.id": "ctloop-tail", "enable.auto.commit": False,
                                                 "enable.partition.eof": False, "log.connection.close": False}))
    try:
        md = consumer.list_topics(name, timeout=10)
        meta = md.topics.get(name)
        if meta is None or meta.error is not None or not meta.partitions:
            raise click.ClickException(f"topic {name!r} does not exist")
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        consumer.assign([TopicPartition(name, p, start) for p in sorted(meta.partitions)])
        count = 0
        last = time.monotonic()
        while not stop():
            if max_events is not None and count >= max_events:
                return
            if timeout_s is not None and time.monotonic() - last > timeout_s:
                return
            want = 500 if max_events is None else min(500, max_events - count)
            for msg in consumer.consume(want, 0.2):
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        click.echo(f"consumer error: {err}", err=True)
                    continue
                last = time.monotonic()
                key = msg.key()
                line = {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(),
                        "timestamp_ms": msg.timestamp()[1],
                        "key": key.decode("utf-8", "replace") if key is not None else None}
                try:
                    decoded = serde.decode(msg.value())
                    line["event_type"] = decoded.event_type
                    line["value"] = decoded.value
                except DecodeError as exc:
                    line["error"] = exc.reason
                    line["error_type"] = exc.error_type
                    line["raw_base64"] = base64.b64encode(msg.value() or b"").decode()
                count += 1
                yield json.dumps(line, default=_json_default, allow_nan=True)
    finally:
        consumer.close()


# -- topics -------------------------------------------------------------------------------------------
def topics_command(settings: Settings, as_json: bool) -> None:
    """``ctloop topics``: create the missing topics and print each one's status, partitions, record key,
    event types and config (JSON lines with ``as_json``). Raises click.UsageError without bootstrap servers."""
    from confluent_kafka.admin import AdminClient

    from streams.topics import Topics, ensure_topics

    from streams.kafka_config import client_config

    require_bootstrap(settings)
    admin = AdminClient(client_config(settings))
    registry = Topics.from_settings(settings)
    status = ensure_topics(admin, registry)
    md = admin.list_topics(timeout=10)
    rows = []
    for key, spec in registry.specs.items():
        name = registry.name(key)
        rows.append({"topic": name, "key": key, "status": status.get(name, "exists"),
                     "partitions": len(md.topics[name].partitions), "record_key": spec.record_key,
                     "event_types": list(spec.event_types), "config": dict(spec.config)})
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    width = max(len(r["topic"]) for r in rows)
    click.echo(f"{'TOPIC':<{width}}  {'STATUS':<7}  PARTS  {'KEY':<13}  CONFIG")
    for r in rows:
        config = " ".join(f"{k}={v}" for k, v in r["config"].items())
        click.echo(f"{r['topic']:<{width}}  {r['status']:<7}  {r['partitions']:>5}  {r['record_key']:<13}  {config}")


# -- settings -----------------------------------------------------------------------------------------
def settings_markdown() -> str:
    """The CTLOOP_* table as Markdown (docs/CONFIGURATION.md embeds it)."""
    lines = ["| Variable | Default | Description |", "| --- | --- | --- |"]
    for var, default, doc in settings_table():
        lines.append(f"| `{var}` | `{default}` | {doc.replace('|', '/')} |")
    return "\n".join(lines)


TABLE_BEGIN, TABLE_END = "<!-- settings-table:begin -->", "<!-- settings-table:end -->"


def write_settings_doc(path) -> None:
    """Replace the generated table between the markers of ``path`` (docs/CONFIGURATION.md)."""
    from pathlib import Path

    path = Path(path)
    text = path.read_text()
    if TABLE_BEGIN not in text or TABLE_END not in text:
        raise click.ClickException(f"{path} has no {TABLE_BEGIN} ... {TABLE_END} block")
    head, rest = text.split(TABLE_BEGIN, 1)
    _old, tail = rest.split(TABLE_END, 1)
    path.write_text(f"{head}{TABLE_BEGIN}\n{settings_markdown()}\n{TABLE_END}{tail}")


def register(cli: click.Group) -> None:
    """Add the ``broker``, ``tail``, ``topics`` and ``settings`` commands to ``cli``."""
    @cli.command("broker")
    @click.option("--port", type=int, default=None, help="Port to listen on (default: a free one).")
    @click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
    @click.option("--create-topics", is_flag=True, help="Create the ctloop topics once the broker answers.")
    @click.pass_obj
    def broker(settings: Settings, port, host, create_topics):
        """Run the embedded Kafka broker in the foreground until Ctrl-C / SIGTERM (data in memory)."""
        broker_command(settings, port, host, create_topics)

    @cli.command("tail")
    @click.argument("topic")
    @click.option("--from-beginning", is_flag=True, help="Start at the first record (default: only new ones).")
    @click.option("--max", "max_events", type=int, default=None, help="Stop after N records.")
    @click.option("--timeout", "timeout_s", type=float, default=None,
                  help="Stop after this many seconds without a new record (default: run until Ctrl-C).")
    @click.pass_obj
    def tail(settings: Settings, topic, from_beginning, max_events, timeout_s):
        """Print the events of TOPIC (key like `predictions` or a full name) as JSON lines."""
        with _StopFlag() as stop:
            for line in tail_lines(settings, topic, from_beginning=from_beginning, max_events=max_events,
                                   timeout_s=timeout_s, stop=stop):
                click.echo(line)
                sys.stdout.flush()

    @cli.command("topics")
    @click.option("--json", "as_json", is_flag=True, help="One JSON object per topic.")
    @click.pass_obj
    def topics(settings: Settings, as_json):
        """Create the ctloop topics (idempotent) and print them with partitions and config."""
        topics_command(settings, as_json)

    @cli.command("settings")
    @click.option("--markdown", is_flag=True, help="Print the table as Markdown (for docs).")
    @click.option("--write", "write_path", type=click.Path(exists=True, dir_okay=False), default=None,
                  help="Regenerate the table inside this Markdown file (docs/CONFIGURATION.md).")
    @click.pass_obj
    def settings_cmd(settings: Settings, markdown, write_path):
        """Print every CTLOOP_* variable: default, current value and meaning."""
        if write_path:
            write_settings_doc(write_path)
            click.echo(f"updated {write_path}")
            return
        if markdown:
            click.echo(settings_markdown())
            return
        from dataclasses import fields as dataclass_fields

        from infra.settings import _shown

        current = {f"CTLOOP_{f.name.upper()}": _shown(settings, f) for f in dataclass_fields(settings)}  # secrets: ***
        rows = settings_table()
        width = max(len(r[0]) for r in rows)
        for var, default, doc in rows:
            value = current.get(var)
            marker = "" if repr(value) == default else f"  (set: {value!r})"
            click.echo(f"{var:<{width}}  default {default}{marker}\n{'':<{width}}  {doc}")
