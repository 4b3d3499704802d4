"""Dead-letter commands: ``ctloop dead-letters replay`` (re-inject dead letters into their source topics
once the cause is fixed; see streams/dead_letter_replay.py)."""
from __future__ import annotations

import json

import click

from infra.commands.core import require_bootstrap


def register(cli: click.Group) -> None:
    @cli.group("dead-letters")
    def dead_letters():
        """Dead letters: records the loop could not process (see `ctloop tail dead-letters`)."""

    @dead_letters.command("replay")
    @click.option("--source-topic", default=None, help="Only dead letters of this topic (key like `feedback`, or a full name).")
    @click.option("--error-type", "error_types", multiple=True,
                  help="Only these error types (repeatable): invalid, undecodable, unmatched_feedback, processing_error...")
    @click.option("--partition", type=int, default=None, help="Only this source partition.")
    @click.option("--from-offset", type=int, default=None, help="Only source offsets >= this.")
    @click.option("--to-offset", type=int, default=None, help="Only source offsets <= this.")
    @click.option("--dry-run", is_flag=True, help="List what would be replayed; send nothing, record nothing.")
    @click.option("--json", "as_json", is_flag=True, help="The report as one JSON object.")
    @click.pass_obj
    def replay(settings, source_topic, error_types, partition, from_offset, to_offset, dry_run, as_json):
        """Produce the original bytes of matching dead letters to their source topics, once each: what is
        replayed is recorded in <prefix>dead-letter-replays and never replayed again. Dead letters whose
        value was truncated (record_too_large) cannot be replayed and are listed."""
        from streams.dead_letter_replay import replay_dead_letters

        require_bootstrap(settings)
        if from_offset is not None and to_offset is not None and from_offset > to_offset:
            raise click.BadParameter(f"--from-offset {from_offset} is after --to-offset {to_offset}")
        try:
            report = replay_dead_letters(settings, source_topic=source_topic, error_types=error_types,
                                         partition=partition, from_offset=from_offset, to_offset=to_offset,
                                         dry_run=dry_run)
        except KeyError as exc:
            raise click.BadParameter(str(exc), param_hint="--source-topic") from None
        if as_json:
            click.echo(json.dumps(report.as_dict()))
            return
        verb = "would replay" if dry_run else "replayed"
        for item in report.replayed:
            topic, p, o = item["source"]
            dp, do = item["dead_letter"]
            to = f" -> {topic}[{item['replayed_to'][0]}]@{item['replayed_to'][1]}" if item.get("replayed_to") else ""
            click.echo(f"{verb} dead-letters[{dp}]@{do} ({item['error_type']}) from {topic}[{p}]@{o}{to}")
        for item in report.not_replayable:
            dp, do = item["dead_letter"]
            click.echo(f"cannot replay dead-letters[{dp}]@{do} ({item['error_type']}): {item['why']}")
        click.echo(f"{len(report.replayed)} {verb}, {len(report.already_replayed)} replayed before (skipped), "
                   f"{len(report.not_replayable)} not replayable")
