"""Model artifact store: a local directory of weights files.

Writes are atomic (temporary file in the same directory, then ``os.replace``); every load verifies the
sha256 recorded in the registry before deserialising, and deserialises with
``torch.load(weights_only=True)``, so a stored file can never run code. Files that no lifecycle event
names (a run killed between saving and publishing) are found by :func:`find_orphans` and removed by
:func:`delete_orphans` (``ctloop artifacts orphans [--delete]``).
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import torch

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


class TamperedArtifactError(RuntimeError):
    """The stored bytes do not match the sha256 the registry recorded."""


class ArtifactNotFoundError(FileNotFoundError):
    """No artifact at the URI the registry recorded."""
    pass


def _safe(part: str) -> str:
    cleaned = _SAFE.sub("_", part).strip("._")
    if not cleaned:
        raise ValueError(f"unusable name for an artifact path: {part!r}")
    return cleaned


def uri_to_path(uri: str) -> Path:
    """The local path of an artifact URI (``file://`` or a bare path). Raises ValueError for any other
    scheme."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path) if parsed.scheme else uri)
    raise ValueError(f"artifact URI scheme {parsed.scheme!r} is not supported (only local files): {uri}")


class ArtifactStore:
    """Weights files under ``root/<deployment>/<version>.pt``; URIs are ``file://`` URLs."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    @classmethod
    def from_settings(cls, settings) -> "ArtifactStore":
        """The store at ``settings.resolved_artifact_store`` (default ``<data_dir>/artifacts``)."""
        return cls(settings.resolved_artifact_store)

    def save(self, deployment: str, version: str, state_dict: dict) -> tuple[str, str]:
        """Store ``state_dict`` (tensors only); returns (uri, sha256)."""
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, buffer)
        data = buffer.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        directory = self.root / _safe(deployment)
        directory.mkdir(parents=True, exist_ok=True)
        final = directory / f"{_safe(version)}.pt"
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        return final.resolve().as_uri(), digest

    def load_state_dict(self, uri: str, sha256: str) -> dict:
        """Read, verify and deserialise (weights only). Raises TamperedArtifactError on mismatch."""
        path = uri_to_path(uri)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ArtifactNotFoundError(f"artifact {uri} does not exist") from None
        actual = hashlib.sha256(data).hexdigest()
        if not sha256 or actual != sha256:
            raise TamperedArtifactError(
                f"artifact {uri} has sha256 {actual}, the registry recorded {sha256 or '(nothing)'}: refusing to load it")
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


# -- orphaned artifacts -----------------------------------------------------------------------------
# A trainer stores the weights before it publishes TrainingRunFinished / ModelRegistered /
# CandidateRejected, so a run killed in between (or superseded by another trainer) leaves a file that
# no event names. These functions find such files; nothing else ever deletes from the store.

NAMING_EVENTS = ("ModelRegistered", "TrainingRunFinished", "CandidateRejected")
"""Event types whose (deployment, model_version) or artifact_uri name an artifact of the store."""


@dataclass(frozen=True)
class StoredArtifact:
    """One file of the store: ``path``; ``deployment`` (its folder); ``age_s``, seconds since it was
    last written; ``status``: ``named`` (an event names it: kept), ``recent`` (younger than the
    minimum age: possibly a run in progress, kept) or ``orphan``."""
    path: Path
    deployment: str
    size_bytes: int
    age_s: float
    status: str


def stored_files(root: str | os.PathLike) -> list[Path]:
    """The artifact files under ``root``: ``<deployment>/<version>.pt`` and the temporary files a
    killed ``save`` leaves (``<deployment>/.<version>.pt.*.tmp``). Other files are not the store's
    and are never listed."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for directory in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(directory.iterdir()):
            if f.is_file() and (f.suffix == ".pt" and not f.name.startswith(".")
                                or f.name.startswith(".") and ".pt." in f.name and f.name.endswith(".tmp")):
                found.append(f)
    return found


def named_paths(root: str | os.PathLike, events) -> set[Path]:
    """Resolved paths of every artifact the ``events`` name: each ``(event_type, value)`` of
    :data:`NAMING_EVENTS` names its ``artifact_uri`` (when it has one) and the store path of its
    (deployment, model_version), so a store moved to another root keeps its names."""
    root = Path(root)
    names: set[Path] = set()
    for event_type, value in events:
        if event_type not in NAMING_EVENTS:
            continue
        uri = value.get("artifact_uri")
        if uri:
            try:
                names.add(uri_to_path(uri).resolve())
            except ValueError:  # a non-local URI cannot name a file of this store
                pass
        dep, version = value.get("deployment"), value.get("model_version")
        if dep and version:
            try:
                names.add((root / _safe(dep) / f"{_safe(version)}.pt").resolve())
            except ValueError:
                pass
    return names


def classify(root: str | os.PathLike, names: set[Path], *, min_age_s: float, now: float | None = None) -> list[StoredArtifact]:
    """Every stored file (:func:`stored_files`) with its status (see :class:`StoredArtifact`):
    ``named`` when its resolved path is in ``names``, else ``recent`` when written less than
    ``min_age_s`` seconds before ``now`` (``time.time()`` by default), else ``orphan``."""
    now = time.time() if now is None else now
    out = []
    for f in stored_files(root):
        st = f.stat()
        age = max(0.0, now - st.st_mtime)
        status = "named" if f.resolve() in names else "recent" if age < min_age_s else "orphan"
        out.append(StoredArtifact(f, f.parent.name, st.st_size, age, status))
    return out


class RegistryUnavailableError(RuntimeError):
    """The model-lifecycle topic is missing or empty while the store holds artifacts: the events that
    name them cannot be read (wrong CTLOOP_BOOTSTRAP_SERVERS / CTLOOP_TOPIC_PREFIX, or a fresh
    in-memory broker), so no file may be called an orphan."""


def find_orphans(settings, *, min_age_s: float | None = None, timeout_s: float = 15.0,
                 now: float | None = None) -> list[StoredArtifact]:
    """Classify every file of the settings' artifact store against the events on model-lifecycle and
    model-updates (read to their end). ``min_age_s`` defaults to ``settings.trigger_timeout_s``: a file
    younger than that may belong to a run still in progress and is ``recent``, never an orphan.
    Raises RegistryUnavailableError when model-lifecycle has no events but the store has files, and
    TimeoutError when a topic cannot be read within ``timeout_s``."""
    from streams.consumer import read_to_end
    from streams.topics import Topics

    root = settings.resolved_artifact_store
    if not stored_files(root):
        return []
    topics = Topics.from_settings(settings)
    lifecycle = read_to_end(settings, topics.model_lifecycle, timeout_s=timeout_s)
    if not lifecycle:
        raise RegistryUnavailableError(
            f"{topics.model_lifecycle} has no events but the artifact store {root} has files: refusing to call "
            "any of them orphaned (check CTLOOP_BOOTSTRAP_SERVERS and CTLOOP_TOPIC_PREFIX)")
    updates = read_to_end(settings, topics.model_updates, timeout_s=timeout_s)
    names = named_paths(root, [(e.event_type, e.value) for e in lifecycle + updates])
    return classify(root, names, min_age_s=settings.trigger_timeout_s if min_age_s is None else min_age_s, now=now)


def delete_orphans(artifacts: list[StoredArtifact]) -> list[Path]:
    """Delete the files whose status is ``orphan`` (and nothing else); returns the deleted paths.
    A file already gone is skipped."""
    deleted = []
    for a in artifacts:
        if a.status != "orphan":
            continue
        try:
            a.path.unlink()
        except FileNotFoundError:
            continue
        deleted.append(a.path)
    return deleted
