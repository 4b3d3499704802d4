"""Model artifact store: a local directory of weights files.

Writes are atomic (temporary file in the same directory, then ``os.replace``); every load verifies the
sha256 recorded in the registry before deserialising, and deserialises with
``torch.load(weights_only=True)``, so a stored file can never run code.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

import torch

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


class TamperedArtifactError(RuntimeError):
    """The stored bytes do not match the sha256 the registry recorded."""


class ArtifactNotFoundError(FileNotFoundError):
    pass


def _safe(part: str) -> str:
    cleaned = _SAFE.sub("_", part).strip("._")
    if not cleaned:
        raise ValueError(f"unusable name for an artifact path: {part!r}")
    return cleaned


def uri_to_path(uri: str) -> Path:
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
