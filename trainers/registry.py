"""Moved to :mod:`streams.registry` (the registry fold is part of the floor); re-exported for the modules that still import it here."""
from streams.registry import *  # noqa: F401,F403
from streams.registry import ALIASES, UPDATE_TYPES, HeldUpdateRelease, ModelRegistry, ModelVersion, Refusal, RunRecord, named_version  # noqa: F401
