"""Dataset compilation: a trigger's snapshot of labeled examples (+ the deployment's base dataset)
turned into a feature matrix, with a deterministic train/holdout split and a content hash.

The snapshot is read exactly: each partition from ``start_offset`` up to (excluding) ``end_offset``,
by assigning partitions (no consumer group). Of several examples of one prediction the one at the
highest offset wins (corrections replace labels; prediction ids are keys, so all examples of one
prediction are in one partition).

**Training window.** The trigger's snapshot offsets ARE the window (the triggers stage chooses them
from the deployment's ``training_window``); its evidence names it: ``training_window`` (all, sliding,
since_change), and for since_change ``change_point`` (words) and ``post_change_labels``. The base
dataset is added only for ``all`` (and for triggers written before windows existed, whose evidence has
no ``training_window``): rows of an earlier concept must not poison a model of the current one. The
window (name, exact offsets, change point) is recorded in the lineage.

Which rows the gate judges on comes from the log, never from a client's clock (a single row with a wrong
event_time, e.g. written in microseconds, changes nothing):

* window ``all``: *historical* rows (the forgetting check) are base-dataset rows and stream examples at
  offsets below the champion's own snapshot end offsets (the examples the champion was trained on or
  held out from); *current* rows ("better") are the examples that arrived after the champion's snapshot;
* window ``sliding`` / ``since_change``: every row is of the current concept, so *current* is the whole
  window; *historical* are the window's rows that the champion's snapshot also held (offsets inside the
  champion's own [start, end) ranges): still valid under the current concept, so a candidate may not
  forget them. Rows before the window (before the change point) and the base dataset never count.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence
from urllib.parse import unquote, urlparse

import numpy as np

from streams import catalog as ev
from streams.serde import DecodeError, Serde
from streams.validation import unrepresentable_rows

log = logging.getLogger(__name__)

HOLDOUT_PERCENT = 20


class DatasetError(ValueError):
    """The dataset cannot be trained on; ``error_type`` is machine readable."""

    def __init__(self, reason: str, error_type: str):
        super().__init__(reason)
        self.reason = reason
        self.error_type = error_type


@dataclass
class Dataset:
    """A compiled training set: ``ids`` (str [n], sorted), ``x`` (float64 [n, d]), ``y`` (str labels [n]),
    feature names (d), per-row prediction ``times`` (epoch ms) and ``historical`` flags, and its lineage."""
    ids: np.ndarray            # str, sorted
    x: np.ndarray              # float64 [n, d]
    y: np.ndarray              # str labels (object)
    feature_names: list[str]
    times: np.ndarray          # int64 prediction time in ms, the client's clock (0 for base-dataset rows); informational
    historical: np.ndarray     # bool: rows the forgetting check uses (module doc: depends on the window)
    lineage: dict
    current: np.ndarray | None = None
    """bool: rows of the current concept, on which "better" is judged (None: the rows not historical)."""
    scope: dict | None = None
    """Words naming the row subsets for the gate's reasons: ``current``, ``historical`` (see :class:`GateRows`)."""

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def classes(self) -> list[str]:
        """The distinct labels of ``y``, sorted."""
        return sorted(set(self.y.tolist()))

    @property
    def current_mask(self) -> np.ndarray:
        """Rows "better" is judged on: :attr:`current`, or (not given) the rows not historical."""
        return ~self.historical if self.current is None else self.current

    def subset(self, mask: np.ndarray) -> "Dataset":
        """The rows where ``mask`` (bool [n]) is True, every per-row array cut alike; lineage and scope shared."""
        return Dataset(self.ids[mask], self.x[mask], self.y[mask], self.feature_names, self.times[mask],
                       self.historical[mask], self.lineage,
                       None if self.current is None else self.current[mask], self.scope)

    def holdout_mask(self, percent: int = HOLDOUT_PERCENT) -> np.ndarray:
        """Bool [n]: the rows whose id falls in the holdout (``bucket(id) < percent``)."""
        return split_mask(self.ids, percent)


def bucket(identifier: str, salt: str = "") -> int:
    """0..99 from the sha1 of the id: the same id always lands in the same split."""
    return int.from_bytes(hashlib.sha1((salt + identifier).encode()).digest()[:8], "big") % 100

def split_mask(ids: Iterable[str], percent: int = HOLDOUT_PERCENT, salt: str = "") -> np.ndarray:
    """Bool array, one per id: ``bucket(id, salt) < percent`` (a stable split by id)."""
    return np.fromiter((bucket(i, salt) < percent for i in ids), dtype=bool)


def content_hash(ids: np.ndarray, x: np.ndarray, y: np.ndarray, feature_names: Sequence[str]) -> str:
    """sha256 hex of the dataset's content: feature names, ids, labels and ``x`` as little-endian
    float64, separated by control characters (the same rows always give the same hash)."""
    h = hashlib.sha256()
    h.update("\x1f".join(feature_names).encode())
    h.update(b"\x1e")
    h.update("\x1f".join(ids.tolist()).encode())
    h.update(b"\x1e")
    h.update("\x1f".join(y.tolist()).encode())
    h.update(b"\x1e")
    h.update(np.ascontiguousarray(x, dtype="<f8").tobytes())
    return h.hexdigest()


# -- reading --------------------------------------------------------------------------------------
def read_snapshot(settings, topic: str, partitions: Sequence[dict], deployment: str, *, serde: Serde | None = None,
                  timeout_s: float = 120.0, positions: dict | None = None) -> dict[str, dict]:
    """LabeledExamples of ``deployment`` in the offset ranges, latest per prediction id. When
    ``positions`` is a dict it receives ``prediction_id -> (partition, offset)`` of each kept example."""
    from confluent_kafka import Consumer, TopicPartition

    serde = serde or Serde.from_settings(settings)
    ranges = {int(p["partition"]): (int(p.get("start_offset", 0)), int(p["end_offset"])) for p in partitions}
    wanted = {p: r for p, r in ranges.items() if r[1] > r[0]}
    examples: dict[str, dict] = {}
    if not wanted:
        return examples
    from streams.kafka_config import client_config

    consumer = Consumer(client_config(settings, {"group.id": "ctloop-dataset",
                                                 "enable.auto.commit": False, "enable.partition.eof": False,
                                                 "fetch.max.bytes": 52428800, "max.partition.fetch.bytes": 10485760}))
    try:
        consumer.assign([TopicPartition(topic, p, start) for p, (start, _end) in wanted.items()])
        remaining = set(wanted)
        deadline = time.monotonic() + timeout_s
        decode = serde.decode
        while remaining:
            if time.monotonic() > deadline:
                raise DatasetError(f"reading {topic} partitions {sorted(remaining)} to the snapshot offsets took more "
                                   f"than {timeout_s}s (were the records deleted?)", "snapshot_unavailable")
            for msg in consumer.consume(10000, 0.2):
                if msg.error():
                    continue
                p, offset = msg.partition(), msg.offset()
                end = wanted[p][1]
                if offset >= end:
                    remaining.discard(p)
                    continue
                if offset + 1 >= end:
                    remaining.discard(p)
                try:
                    d = decode(msg.value())
                except DecodeError:
                    continue
                if d.event_type != ev.LABELED_EXAMPLE or d.value.get("deployment") != deployment:
                    continue
                examples[d.value["prediction_id"]] = d.value   # later offset wins (same partition per id)
                if positions is not None:
                    positions[d.value["prediction_id"]] = (p, offset)
    finally:
        consumer.close()
    return examples


def read_base_dataset(uri: str):
    """A CSV or Parquet file: feature columns, a ``label`` column, optionally ``prediction_id``."""
    import pandas as pd

    parsed = urlparse(uri)
    path = Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(uri)
    if parsed.scheme not in ("", "file"):
        raise DatasetError(f"dataset_version {uri!r}: only local files are supported", "invalid_dataset")
    if not path.exists():
        raise DatasetError(f"dataset_version {uri!r}: file not found", "invalid_dataset")
    try:
        frame = pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - any parse error is the file's fault
        raise DatasetError(f"dataset_version {uri!r}: cannot read it ({exc})", "invalid_dataset") from None
    if "label" not in frame.columns:
        raise DatasetError(f"dataset_version {uri!r}: no 'label' column (columns: {list(frame.columns)})",
                           "invalid_dataset")
    return frame


# -- assembling ----------------------------------------------------------------------------------
def build_dataset(examples: dict[str, dict] | Sequence[dict], *, base_frame=None, base_uri: str | None = None,
                  lineage_topic: str = "", partitions: Sequence[dict] = (), positions: dict | None = None,
                  seen_until: dict[int, int] | None = None, min_examples: int = 1,
                  window: "TrainingWindow | None" = None, seen_from: dict[int, int] | None = None) -> Dataset:
    """Assemble and check a dataset. Raises DatasetError (too_few_examples, nan_values, single_class,
    invalid_dataset).

    ``positions``: prediction_id -> (partition, offset) of the stream examples (from :func:`read_snapshot`);
    ``seen_until``: partition -> end offset of the champion's snapshot of the same topic (``seen_from``:
    its start offsets, default 0). ``window``: the trigger's training window (None: ``all``).

    Window ``all``: a stream example at an offset below ``seen_until`` is historical, every other stream
    example is current (no positions or no champion snapshot: all current); base-dataset rows are
    historical. Window ``sliding`` / ``since_change``: every row is current; historical are the examples
    inside the champion's own [seen_from, seen_until) range (the window's rows the champion already held)."""
    rows = list(examples.values()) if isinstance(examples, dict) else list(examples)
    ids = [r["prediction_id"] for r in rows]
    labels = [str(r["label"]) for r in rows]
    times = [int(r.get("prediction_time") or r.get("event_time") or 0) for r in rows]
    positions, seen_until = positions or {}, seen_until or {}
    windowed = window is not None and window.windowed
    starts = (seen_from or {}) if windowed else {}
    known = [_seen(positions.get(pid), seen_until, starts) for pid in ids]
    names: set[str] = set()
    for r in rows:
        names.update(r["features"])
    base_cols: list[str] = []
    if base_frame is not None:
        base_cols = [c for c in base_frame.columns if c not in ("label", "prediction_id")]
        non_numeric = [c for c in base_cols if not np.issubdtype(base_frame[c].dtype, np.number)]
        if non_numeric:
            raise DatasetError(f"dataset_version {base_uri!r}: non-numeric feature column(s) {non_numeric}",
                               "invalid_dataset")
        names.update(base_cols)
    feature_names = sorted(names)
    col = {n: i for i, n in enumerate(feature_names)}
    n_stream = len(rows)
    n_base = 0 if base_frame is None else len(base_frame)
    x = np.full((n_stream + n_base, len(feature_names)), np.nan)
    for i, r in enumerate(rows):
        for name, value in r["features"].items():
            x[i, col[name]] = value
    all_ids = list(ids)
    all_labels = list(labels)
    all_times = list(times)
    all_known = list(known)
    if n_base:
        for c in base_cols:
            x[n_stream:, col[c]] = base_frame[c].to_numpy(dtype=float, na_value=np.nan)
        if "prediction_id" in base_frame.columns:
            base_ids = [str(v) for v in base_frame["prediction_id"].tolist()]
        else:
            base_ids = [f"base:{base_uri}#{i}" for i in range(n_base)]
        all_ids += base_ids
        all_labels += [str(v) for v in base_frame["label"].tolist()]
        all_times += [0] * n_base
        all_known += [True] * n_base
    ids_arr = np.asarray(all_ids, dtype=object)
    # stream examples replace base rows of the same prediction id
    if n_base:
        seen: set[str] = set()
        keep = np.ones(len(ids_arr), dtype=bool)
        for i, pid in enumerate(all_ids):
            if pid in seen:
                keep[i] = False
            seen.add(pid)
        ids_arr, x = ids_arr[keep], x[keep]
        all_labels = [l for l, k in zip(all_labels, keep) if k]
        all_times = [t for t, k in zip(all_times, keep) if k]
        all_known = [h for h, k in zip(all_known, keep) if k]
    dataset = dataset_from_arrays(ids_arr.astype(str), x, np.asarray(all_labels, dtype=object),
                                  np.asarray(all_times, dtype=np.int64), feature_names, lineage_topic=lineage_topic,
                                  partitions=partitions, base_uri=base_uri, historical=np.asarray(all_known, dtype=bool),
                                  min_examples=min_examples, has_base=bool(n_base), window=window)
    dataset.scope = _scope(window, partitions, seen_until, starts, bool(n_base))
    return dataset


def _seen(position: tuple[int, int] | None, seen_until: dict[int, int], seen_from: dict[int, int] | None = None) -> bool:
    """Whether a stream example lies inside the champion's snapshot range [seen_from (default 0), seen_until)
    of its partition."""
    if position is None:
        return False
    partition, offset = position
    end = seen_until.get(int(partition))
    return end is not None and (seen_from or {}).get(int(partition), 0) <= offset < end


def format_offsets(ranges: Sequence[dict]) -> str:
    """``[{partition, start_offset, end_offset}]`` as ``0:120-400,1:98-377`` (empty ranges left out)."""
    parts = [f"{int(p['partition'])}:{int(p.get('start_offset', 0))}-{int(p['end_offset'])}" for p in ranges
             if int(p["end_offset"]) > int(p.get("start_offset", 0))]
    return ",".join(parts) or "none"


def _scope(window: "TrainingWindow | None", partitions: Sequence[dict], seen_until: dict[int, int],
           seen_from: dict[int, int], has_base: bool) -> dict:
    """Words naming the gate's row subsets (which rows decided a check), for its reasons."""
    window_text = format_offsets(partitions)
    champion = format_offsets([{"partition": p, "start_offset": seen_from.get(p, 0), "end_offset": e}
                               for p, e in sorted(seen_until.items())]) if seen_until else "none known"
    if window is not None and window.windowed:
        where = f"offsets {window_text}"
        if window.name == "since_change" and window.change_point:
            where = f"after the change point ({window.change_point}), {where}"
        current = f"{window.name} window rows, {where}"
        held = []
        for p in partitions:
            part, start, end = int(p["partition"]), int(p.get("start_offset", 0)), int(p["end_offset"])
            if part in seen_until:
                lo, hi = max(start, seen_from.get(part, 0)), min(end, seen_until[part])
                if hi > lo:
                    held.append({"partition": part, "start_offset": lo, "end_offset": hi})
        historical = (f"{window.name} window rows the champion's snapshot also held, offsets {format_offsets(held)}"
                      " (rows before the window and the base dataset do not count)")
        return {"current": current, "historical": historical, "holdout": f"the {window.name} window's holdout"}
    ends = ",".join(f"{p}:{e}" for p, e in sorted(seen_until.items())) or "none known"
    return {"current": f"recent rows: examples after the champion's snapshot (ends {ends}) of offsets {window_text}",
            "historical": (("base-dataset rows and " if has_base else "")
                           + f"examples below the champion's snapshot ends ({champion})"),
            "holdout": "the holdout"}


def champion_snapshot_ends(lineage: dict | None, topic: str) -> dict[int, int]:
    """partition -> end offset of a champion's training snapshot of ``topic`` (empty: none known)."""
    if not lineage or lineage.get("topic") != topic:
        return {}
    return {int(p["partition"]): int(p["end_offset"]) for p in lineage.get("partitions") or ()}


def dataset_from_arrays(ids: np.ndarray, x: np.ndarray, y: np.ndarray, times: np.ndarray, feature_names: Sequence[str], *,
                        lineage_topic: str = "", partitions: Sequence[dict] = (), base_uri: str | None = None,
                        historical: np.ndarray | None = None, min_examples: int = 1, has_base: bool = False,
                        window: "TrainingWindow | None" = None) -> Dataset:
    """Sort by id, check, mark historical rows, split and hash: the vectorised part of compilation
    (also used directly by benchmarks). ``times`` 0 marks base-dataset rows; ``historical`` (aligned with
    ``ids``; default: the base-dataset rows) marks the rows the gate's forgetting check uses. ``window``
    (sliding / since_change): every row is current; the window goes into the lineage."""
    order = np.argsort(ids, kind="stable")
    ids_arr, x = ids[order], np.asarray(x, dtype=np.float64)[order]
    y = np.asarray([str(v) for v in y], dtype=object)[order]
    t = np.asarray(times, dtype=np.int64)[order]
    hist = (np.asarray(times, dtype=np.int64) == 0) if historical is None else np.asarray(historical, dtype=bool)
    hist = hist[order]
    feature_names = list(feature_names)
    unrepresentable = unrepresentable_rows(x)  # defence in depth: the edge refuses these (streams/validation.py)
    if unrepresentable.any():
        log.warning("dataset: dropped %d of %d rows with a feature value beyond float32's range (|x| > 3.4e38 "
                    "or infinite): one such row would make the trained model all-NaN", int(unrepresentable.sum()),
                    len(ids_arr))
        keep = ~unrepresentable
        ids_arr, x, y, t, hist = ids_arr[keep], x[keep], y[keep], t[keep], hist[keep]

    n = len(ids_arr)
    if n < max(min_examples, 2):
        where = f" ({window.name} window, offsets {format_offsets(partitions)})" if window is not None and partitions else ""
        raise DatasetError(f"only {n} labeled example(s) in the snapshot{where}"
                           + (" and base dataset" if has_base else "")
                           + f"; the deployment needs at least {max(min_examples, 2)} (min_training_examples)",
                           "too_few_examples")
    bad = np.isnan(x)
    if bad.any():
        cols = [feature_names[j] for j in np.flatnonzero(bad.any(axis=0))]
        raise DatasetError(f"{int(bad.any(axis=1).sum())} of {n} rows have missing or NaN values in feature(s) "
                           f"{cols[:10]}", "nan_values")
    classes = sorted(set(y.tolist()))
    if len(classes) < 2:
        raise DatasetError(f"all {n} examples have the label {classes[0]!r}: a classifier needs at least two classes",
                           "single_class")
    windowed = window is not None and window.windowed
    historical = hist if windowed else hist | (t == 0)
    id_list = [str(i) for i in ids_arr.tolist()]
    holdout = split_mask(id_list)
    lineage = {
        "topic": lineage_topic,
        "partitions": [{"partition": int(p["partition"]), "start_offset": int(p.get("start_offset", 0)),
                        "end_offset": int(p["end_offset"])} for p in partitions],
        "row_count": int(n), "train_rows": int((~holdout).sum()), "holdout_rows": int(holdout.sum()),
        "content_hash": content_hash(np.asarray(id_list, dtype=object), x, y, feature_names),
        "base_dataset": base_uri,
        "training_window": window.name if window is not None else None,
        "change_point": window.change_point if window is not None else None,
    }
    if lineage["holdout_rows"] == 0 or lineage["train_rows"] == 0:
        raise DatasetError(f"{n} examples leave an empty train or holdout split; add more examples", "too_few_examples")
    current = np.ones(n, dtype=bool) if windowed else None
    return Dataset(np.asarray(id_list, dtype=object), x, y, feature_names, t, historical, lineage, current)


def champion_snapshot_starts(lineage: dict | None, topic: str) -> dict[int, int]:
    """partition -> start offset of a champion's training snapshot of ``topic`` (empty: none known)."""
    if not lineage or lineage.get("topic") != topic:
        return {}
    return {int(p["partition"]): int(p.get("start_offset") or 0) for p in lineage.get("partitions") or ()}


WINDOWS = ("all", "sliding", "since_change")


@dataclass(frozen=True)
class TrainingWindow:
    """The training window a trigger names in its evidence (the snapshot offsets are its exact rows).

    ``name``: all, sliding or since_change; ``change_point``: the words of the detected change
    (since_change), or None; ``post_change_labels``: labeled examples after it, as the trigger counted."""

    name: str
    change_point: str | None = None
    post_change_labels: int | None = None

    @property
    def windowed(self) -> bool:
        """True for sliding and since_change: only the window's rows are of the current concept."""
        return self.name in ("sliding", "since_change")

    @classmethod
    def of_trigger(cls, trigger: dict) -> "TrainingWindow | None":
        """The window of a TrainingTriggered record; None when its evidence names none (a trigger
        written before training windows existed: compiled as ``all``). Raises DatasetError
        (invalid_dataset) naming the field for an unknown window name or a non-integer count."""
        evidence = trigger.get("evidence") or {}
        name = evidence.get("training_window")
        if not name:
            return None
        if name not in WINDOWS:
            raise DatasetError(f"trigger evidence training_window must be one of {WINDOWS}, got {name!r}",
                               "invalid_dataset")
        raw = evidence.get("post_change_labels")
        try:
            post = int(raw) if raw not in (None, "") else None
        except ValueError:
            raise DatasetError(f"trigger evidence post_change_labels must be an integer, got {raw!r}",
                               "invalid_dataset") from None
        return cls(name, evidence.get("change_point") or None, post)


def compile_dataset(settings, trigger: dict, deployment_settings: dict, *, serde: Serde | None = None,
                    timeout_s: float = 120.0, champion_lineage: dict | None = None) -> Dataset:
    """The training set of a TrainingTriggered event: exactly its snapshot offsets (the window), plus the
    deployment's base dataset for window ``all`` only. ``champion_lineage`` (the champion's training
    lineage) separates current from historical rows by log offsets (module doc). Raises DatasetError."""
    window = TrainingWindow.of_trigger(trigger)
    positions: dict = {}
    examples = read_snapshot(settings, trigger["snapshot_topic"], trigger["snapshot"], trigger["deployment"],
                             serde=serde, timeout_s=timeout_s, positions=positions)
    base_uri = deployment_settings.get("dataset_version") if window is None or not window.windowed else None
    frame = read_base_dataset(base_uri) if base_uri else None
    return build_dataset(examples, base_frame=frame, base_uri=base_uri, lineage_topic=trigger["snapshot_topic"],
                         partitions=trigger["snapshot"], positions=positions,
                         seen_until=champion_snapshot_ends(champion_lineage, trigger["snapshot_topic"]),
                         seen_from=champion_snapshot_starts(champion_lineage, trigger["snapshot_topic"]),
                         min_examples=int(deployment_settings.get("min_training_examples") or 0), window=window)
