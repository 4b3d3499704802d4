"""Dead-letter commands: ``ctloop dead-letters replay`` (re-inject dead letters into their source topics
once the cause is fixed; see streams/dead_letter_replay.py)."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import click

from infra.commands.core import require_bootstrap


def register(cli: click.Group) -> None:
    """Add the ``dead-letters replay`` command to ``cli``."""
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
    @click.option("--again", is_flag=True,
                  help="Also replay dead letters of records that were themselves replays (skipped by default: "
                       "replaying them again fails again unless the cause is fixed).")
    @click.option("--reclaim-after", "reclaim_after_s", type=float, default=None, metavar="SECONDS",
                  help="Take over dead letters claimed by another replay more than SECONDS ago and never recorded "
                       "as replayed (that replay crashed); they may then reach their topic twice (deduplicated "
                       "by event id).")
    @click.option("--json", "as_json", is_flag=True, help="The report as one JSON object.")
    @click.pass_obj
    def replay(settings, source_topic, error_types, partition, from_offset, to_offset, dry_run, again, reclaim_after_s,
               as_json):
        """Produce the original bytes of matching dead letters to their source topics, once each: what is
        replayed is recorded in <prefix>dead-letter-replays and never replayed again, even by a replay
        running at the same time (each run claims its dead letters on that topic first; the first claim
        wins). A dead letter claimed by a run that never recorded the replay (it crashed) is listed as
        "claimed, not replayed": take it over with --reclaim-after. Dead letters of replayed records (the
        cause was not fixed) are skipped unless --again. Dead letters whose value was truncated
        (record_too_large) cannot be replayed and are listed."""
        from streams.dead_letter_replay import replay_dead_letters

        require_bootstrap(settings)
        if from_offset is not None and to_offset is not None and from_offset > to_offset:
            raise click.BadParameter(f"--from-offset {from_offset} is after --to-offset {to_offset}")
        try:
            report = replay_dead_letters(settings, source_topic=source_topic, error_types=error_types,
                                         partition=partition, from_offset=from_offset, to_offset=to_offset,
                                         dry_run=dry_run, again=again, reclaim_after_s=reclaim_after_s)
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
        for item in report.claimed:
            dp, do = item["dead_letter"]
            click.echo(f"claimed, not replayed: dead-letters[{dp}]@{do} ({item['error_type']}) by run "
                       f"{item.get('claimed_by_run')} ({item.get('claimed_by')}) at {_when(item.get('claimed_ms'))}: "
                       "in progress, or that run crashed (then --reclaim-after SECONDS)")
        for item in report.of_replayed:
            dp, do = item["dead_letter"]
            click.echo(f"skipped dead-letters[{dp}]@{do} ({item['error_type']}): dead letter of a replayed record "
                       f"(replay of dead-letters {item['replay_of']}); --again to replay it")
        extra = "".join(f", {n} {what}" for n, what in ((len(report.claimed), "claimed by another run, not replayed"),
                                                       (len(report.of_replayed), "of replayed records (skipped)")) if n)
        click.echo(f"{len(report.replayed)} {verb}, {len(report.already_replayed)} replayed before (skipped), "
                   f"{len(report.not_replayable)} not replayable{extra}")


def _when(ms) -> str:
    if not ms:
        return "?"
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
