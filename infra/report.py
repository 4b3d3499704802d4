"""``ctloop report``: a self-contained HTML report of the loop, from ClickHouse.

Per deployment: live accuracy over time with drift detections, triggers, training runs, promotions,
rejections, rollbacks and online-fallback engagements/retirements marked; the feedback-loop funnel; the
shadow comparison; the online fallback; the model versions.
Plots are inline SVG generated here: no script, no CDN, no network.
"""
from __future__ import annotations

import datetime as dt
import html
import math
from dataclasses import dataclass, field
from pathlib import Path

from infra.clickhouse import connect

WIDTH, HEIGHT = 860, 300
PAD_L, PAD_R, PAD_T, PAD_B = 56, 150, 28, 44
COLORS = {"accuracy": "#1f77b4", "drift": "#d62728", "trigger": "#ff7f0e", "run": "#17becf",
          "failed": "#7f7f7f", "promoted": "#2ca02c", "rolled_back": "#9467bd", "rejected": "#8c564b",
          "primary": "#1f77b4", "shadow": "#ff7f0e", "fallback_on": "#e377c2", "fallback_off": "#bcbd22"}


@dataclass
class Marker:
    """A loop event drawn on the accuracy plot: ``time_ms`` epoch ms, ``kind`` a key of :data:`COLORS`
    (drift, trigger, run, failed, promoted, rolled_back, rejected, fallback_on, fallback_off), ``label`` its text."""
    time_ms: int
    kind: str
    label: str


@dataclass
class DeploymentData:
    """Everything the report shows of one deployment, from ClickHouse: accuracy buckets of ``bucket_s``
    seconds, markers, the funnel (logged, reviewed, added to training, trained on; events), shadow
    comparisons, model versions (version, alias, registered ms, accuracy or None, training rows), the
    feedback-to-model latency and the online fallback summary."""
    name: str
    accuracy: list[tuple[int, float, int]] = field(default_factory=list)
    """(bucket start ms, accuracy, labeled examples)"""
    bucket_s: int = 60
    markers: list[Marker] = field(default_factory=list)
    funnel: tuple[int, int, int, int] = (0, 0, 0, 0)
    shadow: list[tuple[int, str, str, float | None, float | None, int]] = field(default_factory=list)
    """(time ms, primary version, shadow version, primary accuracy, shadow accuracy, labeled samples)"""
    models: list[tuple] = field(default_factory=list)
    latency: tuple[int, float | None, float | None] = (0, None, None)
    """(feedback events learned from, median seconds, p90 seconds)"""
    fallback: dict = field(default_factory=dict)
    """The online fallback (see :func:`fallback_summary`): engagements, retirements, refused, active,
    predictions served by it."""


def fallback_summary(name: str, decisions: list[tuple]) -> tuple[dict, list[Marker]]:
    """Fold a deployment's rows of the ``online_fallback_decisions`` view (kafka_offset, event_time ms,
    event_id, kind, active, model_version, champion_version, reason, expected_decision), in any order,
    with the one fold rule (streams.fallback_fold): returns the summary and the markers of the applied
    engagements and of the retirements (a switch off, or a promotion/rollback while it served)."""
    from streams import catalog as ev
    from streams.fallback_fold import FallbackFold

    fold, markers = FallbackFold(), []
    types = {"fallback_engaged": ev.ONLINE_FALLBACK_SWITCHED, "fallback_retired": ev.ONLINE_FALLBACK_SWITCHED,
             "promoted": ev.MODEL_PROMOTED, "rolled_back": ev.MODEL_ROLLED_BACK}
    for _off, t, event_id, kind, active, version, champion, reason, expected in sorted(decisions, key=lambda r: r[0]):
        was = fold.active(name)
        value = {"event_id": str(event_id), "deployment": name, "event_time": int(t), "active": bool(active),
                 "model_version": version, "champion_version": champion, "reason": reason,
                 "expected_decision": expected}
        if not fold.apply(types[kind], value):
            continue
        now = fold.active(name)
        if now and not was:
            markers.append(Marker(int(t), "fallback_on", f"online fallback {version} serves (champion {champion})"))
        elif was and not now:
            markers.append(Marker(int(t), "fallback_off", f"online fallback retired ({reason or kind})"
                                  if kind == "fallback_retired" else f"online fallback retired by {kind} {version}"))
    summary = {"engagements": fold.engagements.get(name, 0), "retirements": fold.retirements.get(name, 0),
               "refused": len(fold.refused), "active": fold.active(name)}
    return summary, markers


# -- data -------------------------------------------------------------------------------------------
def collect(client, database: str) -> list[DeploymentData]:
    """Query ``database`` through the ClickHouse ``client`` for every deployment seen in predictions,
    labeled examples or registrations; one :class:`DeploymentData` each, sorted by name."""
    def rows(sql, **params):
        return client.query(sql.replace("{db}", database), parameters=params).result_rows

    names = sorted({r[0] for r in rows(
        "SELECT DISTINCT deployment FROM {db}.predictions UNION DISTINCT SELECT DISTINCT deployment FROM {db}.labeled_examples "
        "UNION DISTINCT SELECT DISTINCT deployment FROM {db}.models_registered")})
    out = []
    for name in names:
        d = DeploymentData(name)
        span = rows("SELECT toUnixTimestamp64Milli(min(prediction_time)), toUnixTimestamp64Milli(max(prediction_time)) "
                    "FROM {db}.labeled_examples FINAL WHERE deployment = {d:String} AND role != 'shadow'", d=name)
        if span and span[0][0] and span[0][1] is not None:
            d.bucket_s = max(1, math.ceil((span[0][1] - span[0][0]) / 1000 / 40))
            d.accuracy = [(int(t), float(a), int(n)) for t, a, n in rows(
                "SELECT toUnixTimestamp64Milli(toDateTime64(toStartOfInterval(prediction_time, toIntervalSecond({b:UInt32})), 3)) AS t, "
                "avg(correct), count() FROM {db}.labeled_examples FINAL WHERE deployment = {d:String} AND role != 'shadow' "
                "GROUP BY t ORDER BY t", d=name, b=d.bucket_s)]
        marker_sql = {
            "drift": "SELECT toUnixTimestamp64Milli(window_end), concat('drift ', toString(round(drift_share, 2))) "
                     "FROM {db}.drift FINAL WHERE deployment = {d:String} AND (drift_detected OR error_drift_detected)",
            "trigger": "SELECT toUnixTimestamp64Milli(event_time), concat('trigger: ', reason) FROM {db}.triggers FINAL "
                       "WHERE deployment = {d:String}",
            "run": "SELECT toUnixTimestamp64Milli(event_time), concat('trained ', model_version) "
                   "FROM {db}.training_runs_finished FINAL WHERE deployment = {d:String}",
            "failed": "SELECT toUnixTimestamp64Milli(event_time), concat('run failed: ', error_type) "
                      "FROM {db}.training_runs_failed FINAL WHERE deployment = {d:String}",
            "promoted": "SELECT toUnixTimestamp64Milli(event_time), concat('promoted ', model_version) "
                        "FROM {db}.models_promoted FINAL WHERE deployment = {d:String}",
            "rolled_back": "SELECT toUnixTimestamp64Milli(event_time), concat('rollback ', from_version, ' → ', to_version) "
                           "FROM {db}.models_rolled_back FINAL WHERE deployment = {d:String}",
            "rejected": "SELECT toUnixTimestamp64Milli(event_time), concat('rejected ', model_version, ' (', stage, ')') "
                        "FROM {db}.candidates_rejected FINAL WHERE deployment = {d:String}",
        }
        for kind, sql in marker_sql.items():
            d.markers += [Marker(int(t), kind, label) for t, label in rows(sql, d=name)]
        d.fallback, fallback_markers = fallback_summary(name, rows(
            "SELECT kafka_offset, toUnixTimestamp64Milli(event_time), event_id, kind, active, model_version, "
            "champion_version, reason, expected_decision FROM {db}.online_fallback_decisions "
            "WHERE deployment = {d:String}", d=name))
        d.fallback["predictions"] = int(rows("SELECT count() FROM {db}.predictions FINAL WHERE deployment = {d:String} "
                                             "AND role = 'primary' AND startsWith(model_version, 'online:')", d=name)[0][0])
        d.markers += fallback_markers
        d.markers.sort(key=lambda m: m.time_ms)
        funnel = rows("SELECT logged, reviewed, added_to_training, trained_on FROM {db}.feedback_funnel "
                      "WHERE deployment = {d:String}", d=name)
        if funnel:
            d.funnel = tuple(int(x) for x in funnel[0])
        d.shadow = [(int(t), pv, sv, pa, sa, int(n)) for t, pv, sv, pa, sa, n in rows(
            "SELECT toUnixTimestamp64Milli(event_time), primary_version, shadow_version, primary_accuracy, shadow_accuracy, "
            "labeled_samples FROM {db}.model_comparison WHERE deployment = {d:String} AND kind = 'shadow_comparison' "
            "ORDER BY event_time", d=name)]
        d.models = rows(
            "SELECT model_version, argMax(alias, event_time), toUnixTimestamp64Milli(min(event_time)), "
            "argMax(metrics['accuracy'], event_time), argMax(lineage_row_count, event_time) "
            "FROM {db}.models_registered FINAL WHERE deployment = {d:String} GROUP BY model_version "
            "ORDER BY min(event_time)", d=name)
        d.models = _with_current_alias(d.models, rows(
            "SELECT t, kind, a, b FROM ("
            " SELECT toUnixTimestamp64Milli(event_time) AS t, 'promoted' AS kind, model_version AS a, ifNull(previous_version, '') AS b "
            " FROM {db}.models_promoted FINAL WHERE deployment = {d:String}"
            " UNION ALL SELECT toUnixTimestamp64Milli(event_time), 'rolled_back', from_version, to_version "
            " FROM {db}.models_rolled_back FINAL WHERE deployment = {d:String}"
            " UNION ALL SELECT toUnixTimestamp64Milli(event_time), 'rejected', model_version, '' "
            " FROM {db}.candidates_rejected FINAL WHERE deployment = {d:String}) ORDER BY t", d=name))
        lat = rows("SELECT count(), quantileExact(0.5)(latency_s), quantileExact(0.9)(latency_s) "
                   "FROM {db}.feedback_latency WHERE deployment = {d:String}", d=name)
        if lat and lat[0][0]:
            d.latency = (int(lat[0][0]), float(lat[0][1]), float(lat[0][2]))
        out.append(d)
    return out


def _with_current_alias(models: list, events: list) -> list:
    """Registered aliases updated by promotions, rollbacks and rejections, in time order (the
    registry's fold rules)."""
    alias = {m[0]: m[1] for m in models}
    for _t, kind, a, b in events:
        if kind == "promoted":
            for version, current in alias.items():
                if current == "champion" and version != a:
                    alias[version] = "archived"
            alias[a] = "champion"
        elif kind == "rolled_back":
            alias[a], alias[b] = "rolled_back", "champion"
        elif kind == "rejected" and a in alias:
            alias[a] = "rejected"
    return [(m[0], alias.get(m[0], m[1]), *m[2:]) for m in models]


# -- SVG --------------------------------------------------------------------------------------------
def _v(version) -> str:
    version = str(version)
    return version if version[:1] in ("v", "V") else f"v{version}"


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _fmt_time(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%m-%d %H:%M:%S")


class _Axes:
    def __init__(self, x0: float, x1: float, y0: float, y1: float):
        if x1 <= x0:
            x0, x1 = x0 - 1, x1 + 1
        self.x0, self.x1, self.y0, self.y1 = x0, x1, y0, y1

    def x(self, v: float) -> float:
        """The SVG x coordinate (pixels) of data value ``v`` (time, epoch ms)."""
        return PAD_L + (v - self.x0) / (self.x1 - self.x0) * (WIDTH - PAD_L - PAD_R)

    def y(self, v: float) -> float:
        """The SVG y coordinate (pixels) of data value ``v`` (the y axis grows downwards)."""
        return HEIGHT - PAD_B - (v - self.y0) / (self.y1 - self.y0) * (HEIGHT - PAD_T - PAD_B)

    def frame(self, title: str, y_label: str) -> list[str]:
        """SVG elements of the plot's title, frame, y label, 5 horizontal grid lines with ticks and 4 UTC time
        ticks."""
        parts = [f'<text x="{PAD_L}" y="16" class="title">{_esc(title)}</text>',
                 f'<rect x="{PAD_L}" y="{PAD_T}" width="{WIDTH - PAD_L - PAD_R}" height="{HEIGHT - PAD_T - PAD_B}" class="frame"/>',
                 f'<text x="12" y="{(HEIGHT - PAD_B + PAD_T) / 2}" class="axis" transform="rotate(-90 12 {(HEIGHT - PAD_B + PAD_T) / 2})">{_esc(y_label)}</text>']
        for i in range(5):
            v = self.y0 + (self.y1 - self.y0) * i / 4
            parts.append(f'<line x1="{PAD_L}" x2="{WIDTH - PAD_R}" y1="{self.y(v):.1f}" y2="{self.y(v):.1f}" class="grid"/>'
                         f'<text x="{PAD_L - 6}" y="{self.y(v) + 4:.1f}" class="tick" text-anchor="end">{v:.2f}</text>')
        for i in range(4):
            v = self.x0 + (self.x1 - self.x0) * i / 3
            parts.append(f'<text x="{self.x(v):.1f}" y="{HEIGHT - PAD_B + 16}" class="tick" text-anchor="middle">'
                         f'{_esc(_fmt_time(int(v)))}</text>')
        parts.append(f'<text x="{(WIDTH - PAD_R + PAD_L) / 2}" y="{HEIGHT - 6}" class="axis" text-anchor="middle">time (UTC)</text>')
        return parts


def _svg(plot_id: str, parts: list[str], desc: str, height: int = HEIGHT) -> str:
    return (f'<svg id="{_esc(plot_id)}" class="plot" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
            f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{_esc(desc)}"><title>{_esc(desc)}</title>'
            + "".join(parts) + "</svg>")


def _legend(items: list[tuple[str, str]]) -> list[str]:
    out = []
    for i, (color, label) in enumerate(items):
        y = PAD_T + 10 + i * 16
        out.append(f'<rect x="{WIDTH - PAD_R + 10}" y="{y - 8}" width="10" height="10" fill="{color}"/>'
                   f'<text x="{WIDTH - PAD_R + 24}" y="{y + 1}" class="tick">{_esc(label)}</text>')
    return out


def accuracy_svg(d: DeploymentData) -> str:
    """Inline SVG of the deployment's live accuracy per bucket (0 to 1) over time, with its loop events as
    coloured vertical markers; a one-line placeholder SVG when there is nothing to plot."""
    times = [t for t, _, _ in d.accuracy] + [m.time_ms for m in d.markers]
    if not times:
        return _svg(f"accuracy-{d.name}", ['<text x="20" y="24">no labeled examples yet</text>'], "accuracy over time", 40)
    ax = _Axes(min(times), max(times) + d.bucket_s * 1000, 0.0, 1.0)
    parts = ax.frame(f"{d.name}: live accuracy ({d.bucket_s}s buckets) with loop events", "accuracy")
    if d.accuracy:
        pts = " ".join(f"{ax.x(t + d.bucket_s * 500):.1f},{ax.y(a):.1f}" for t, a, _ in d.accuracy)
        parts.append(f'<polyline class="series accuracy" points="{pts}" fill="none" stroke="{COLORS["accuracy"]}" stroke-width="2"/>')
        for t, a, n in d.accuracy:
            parts.append(f'<circle cx="{ax.x(t + d.bucket_s * 500):.1f}" cy="{ax.y(a):.1f}" r="2.5" fill="{COLORS["accuracy"]}">'
                         f'<title>{_esc(_fmt_time(t))}: {a:.3f} over {n} labeled</title></circle>')
    for m in d.markers:
        x, color = ax.x(m.time_ms), COLORS[m.kind]
        tip = f"<title>{_esc(_fmt_time(m.time_ms))} {_esc(m.label)}</title>"
        if m.kind == "drift":
            parts.append(f'<circle class="marker drift" cx="{x:.1f}" cy="{PAD_T + 8}" r="5" fill="{color}">{tip}</circle>')
        elif m.kind in ("run", "failed"):
            y = HEIGHT - PAD_B - 4
            parts.append(f'<path class="marker {m.kind}" d="M{x:.1f},{y - 10} l6,10 h-12 z" fill="{color}">{tip}</path>')
        else:
            dash = ' stroke-dasharray="5,3"' if m.kind in ("trigger", "rejected") else ""
            parts.append(f'<line class="marker {m.kind}" x1="{x:.1f}" x2="{x:.1f}" y1="{PAD_T}" y2="{HEIGHT - PAD_B}" '
                         f'stroke="{color}" stroke-width="2"{dash}>{tip}</line>')
    parts += _legend([(COLORS["accuracy"], "accuracy"), (COLORS["drift"], "drift detected"),
                      (COLORS["trigger"], "training trigger"), (COLORS["run"], "training run"),
                      (COLORS["failed"], "run failed"), (COLORS["promoted"], "promotion"),
                      (COLORS["rejected"], "rejection"), (COLORS["rolled_back"], "rollback"),
                      (COLORS["fallback_on"], "online fallback on"), (COLORS["fallback_off"], "online fallback off")])
    return _svg(f"accuracy-{d.name}", parts, f"{d.name}: accuracy over time")


def funnel_svg(d: DeploymentData) -> str:
    """Inline SVG bar chart of the feedback-loop funnel (logged, reviewed, added to training, trained on),
    each bar with its count and share of logged."""
    labels = ("logged", "reviewed", "added to training", "trained on")
    top = max(d.funnel) or 1
    h = 40 + 34 * len(labels)
    parts = [f'<text x="10" y="16" class="title">{_esc(d.name)}: feedback-loop funnel</text>']
    for i, (label, value) in enumerate(zip(labels, d.funnel)):
        y = 30 + i * 34
        w = (WIDTH - 330) * value / top
        pct = f" ({value / d.funnel[0]:.0%} of logged)" if d.funnel[0] and i else ""
        parts.append(f'<text x="150" y="{y + 17}" class="tick" text-anchor="end">{_esc(label)}</text>'
                     f'<rect class="bar" x="160" y="{y}" width="{w:.1f}" height="24" fill="{COLORS["primary"]}"/>'
                     f'<text x="{166 + w:.1f}" y="{y + 17}" class="tick">{value}{_esc(pct)}</text>')
    return (f'<svg id="funnel-{_esc(d.name)}" class="plot" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{h}" '
            f'viewBox="0 0 {WIDTH} {h}" role="img" aria-label="feedback funnel"><title>feedback funnel</title>'
            + "".join(parts) + "</svg>")


def shadow_svg(d: DeploymentData) -> str:
    """Inline SVG of champion (primary) versus shadow accuracy per shadow comparison over time; a placeholder
    SVG when no comparison has both accuracies."""
    pts = [(t, pa, sa) for t, _pv, _sv, pa, sa, _n in d.shadow if pa is not None and sa is not None]
    if not pts:
        return _svg(f"shadow-{d.name}", ['<text x="20" y="24">no shadow comparisons yet</text>'], "shadow comparison", 40)
    values = [v for _, pa, sa in pts for v in (pa, sa)]
    lo, hi = max(0.0, min(values) - 0.05), min(1.0, max(values) + 0.05)
    ax = _Axes(pts[0][0], pts[-1][0], lo, hi if hi > lo else lo + 0.1)
    parts = ax.frame(f"{d.name}: champion vs shadow accuracy", "accuracy")
    for idx, role in ((1, "primary"), (2, "shadow")):
        line = " ".join(f"{ax.x(p[0]):.1f},{ax.y(p[idx]):.1f}" for p in pts)
        parts.append(f'<polyline class="series {role}" points="{line}" fill="none" stroke="{COLORS[role]}" stroke-width="2"/>')
        for p in pts:
            parts.append(f'<circle cx="{ax.x(p[0]):.1f}" cy="{ax.y(p[idx]):.1f}" r="3" fill="{COLORS[role]}">'
                         f'<title>{role} {p[idx]:.3f}</title></circle>')
    versions = sorted({(pv, sv) for _, pv, sv, *_ in d.shadow})
    parts += _legend([(COLORS["primary"], "champion " + ",".join(sorted({_v(pv) for pv, _ in versions}))),
                      (COLORS["shadow"], "shadow " + ",".join(sorted({_v(sv) for _, sv in versions})))])
    return _svg(f"shadow-{d.name}", parts, f"{d.name}: shadow comparison")


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_esc('' if v is None else v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render(deployments: list[DeploymentData], *, generated_at: int | None = None) -> str:
    """The whole self-contained HTML page (str): one section per deployment; ``generated_at`` epoch ms
    (default: now) shown as the generation time."""
    generated = _fmt_time(generated_at or int(dt.datetime.now(dt.timezone.utc).timestamp() * 1000))
    sections = []
    for d in deployments:
        n, med, p90 = d.latency
        latency = (f"{n} feedback events learned from; median {med:.1f}s, p90 {p90:.1f}s from feedback to a registered "
                   "model trained on it" if n else "no registered model has learned from feedback yet")
        models = _table(["version", "alias", "registered (UTC)", "accuracy", "training rows"],
                        [[_v(v), alias, _fmt_time(int(t)), "" if acc is None else f"{acc:.3f}", rows_]
                         for v, alias, t, acc, rows_ in d.models])
        timeline = _table(["time (UTC)", "event"], [[_fmt_time(m.time_ms), m.label] for m in d.markers])
        fb = d.fallback or {}
        fallback = (f"engaged {fb.get('engagements', 0)} time(s), retired {fb.get('retirements', 0)}, "
                    f"{fb.get('refused', 0)} stale switch(es) refused; served {fb.get('predictions', 0)} primary "
                    f"predictions; {'serving now' if fb.get('active') else 'not serving now'}")
        sections.append(
            f'<section class="deployment" id="deployment-{_esc(d.name)}"><h2>{_esc(d.name)}</h2>'
            f"<h3>Accuracy over time</h3>{accuracy_svg(d)}"
            f"<h3>Feedback loop</h3>{funnel_svg(d)}<p>{_esc(latency)}</p>"
            f"<h3>Shadow comparison</h3>{shadow_svg(d)}"
            f'<h3>Online fallback</h3><p class="fallback">{_esc(fallback)}</p>'
            f"<h3>Model versions</h3>{models}<h3>Loop events</h3>{timeline}</section>")
    if not sections:
        sections.append("<p>No events in ClickHouse yet: run <code>ctloop sink</code>.</p>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ctloop report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; }}
svg.plot {{ display: block; margin: 8px 0 16px; background: #fff; }}
svg .title {{ font-size: 13px; font-weight: 600; }} svg .tick {{ font-size: 11px; fill: #444; }}
svg .axis {{ font-size: 11px; fill: #666; }} svg .frame {{ fill: none; stroke: #bbb; }}
svg .grid {{ stroke: #eee; }} table {{ border-collapse: collapse; margin-bottom: 16px; }}
td, th {{ border: 1px solid #ddd; padding: 3px 8px; font-size: 12px; text-align: left; }}
section.deployment {{ border-top: 2px solid #333; margin-top: 24px; }}
</style></head>
<body><h1>ctloop report</h1><p>Generated {generated} UTC from ClickHouse.</p>
{''.join(sections)}
</body></html>
"""


def write_report(settings, path, client=None) -> Path:
    """Query ClickHouse (``client`` or a new connection) and write the HTML report to ``path``."""
    own = client is None
    client = connect(settings) if own else client
    try:
        html_text = render(collect(client, settings.clickhouse_database))
    finally:
        if own:
            client.close()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(html_text, encoding="utf-8")
    tmp.replace(path)
    return path
