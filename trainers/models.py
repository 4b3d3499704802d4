"""Model architectures and the serving-side predictor.

A model factory is ``module:function`` called as ``factory(n_features, n_classes, **options)`` and
returning a ``torch.nn.Module`` mapping a float tensor [batch, n_features] to logits [batch, n_classes].
The trainer wraps it in :class:`StandardizedClassifier`, whose feature mean and standard deviation are
buffers: the state dict alone (loaded with ``weights_only=True``) rebuilds the whole model.

``model_config`` (in ModelRegistered) carries everything needed to rebuild the architecture, as JSON
strings: ``feature_names``, ``classes``, ``n_features``, ``n_classes`` and the factory options.
"""
from __future__ import annotations

import importlib
import json
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

DEFAULT_FACTORY = "trainers.models:tabular_mlp"
_RESERVED = ("feature_names", "classes", "n_features", "n_classes")


def tabular_mlp(n_features: int, n_classes: int, hidden: Sequence[int] = (64, 64), dropout: float = 0.1) -> nn.Module:
    """The default model for tabular classification: an MLP with ReLU and dropout."""
    layers: list[nn.Module] = []
    width = n_features
    for h in hidden:
        layers += [nn.Linear(width, int(h)), nn.ReLU(), nn.Dropout(float(dropout))]
        width = int(h)
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


def logistic_regression(n_features: int, n_classes: int) -> nn.Module:
    """A linear model (multinomial logistic regression)."""
    return nn.Linear(n_features, n_classes)


class StandardizedClassifier(nn.Module):
    """Standardises features with stored buffers, then applies the factory's network."""

    def __init__(self, core: nn.Module, n_features: int):
        super().__init__()
        self.core = core
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))

    def set_standardization(self, x: np.ndarray) -> None:
        """Store the per-feature mean and standard deviation of ``x``
        ([rows, n_features] float array); a standard deviation below 1e-8 is stored as 1."""
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        std[std < 1e-8] = 1.0
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [batch, n_classes] of ``x`` [batch, n_features] (float32), standardised
        first."""
        return self.core((x - self.mean) / self.std)


def resolve_factory(name: str) -> Callable[..., nn.Module]:
    """Import ``module:function``; a clear error names what is wrong."""
    if not isinstance(name, str) or ":" not in name:
        raise ValueError(f"model_factory must be 'module:function', got {name!r}")
    module_name, func_name = name.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"model_factory {name!r}: cannot import {module_name!r} ({exc})") from None
    factory = getattr(module, func_name, None)
    if not callable(factory):
        raise ValueError(f"model_factory {name!r}: {module_name} has no callable {func_name!r}")
    return factory


def model_config(feature_names: Sequence[str], classes: Sequence[str], **options) -> dict[str, str]:
    """The ModelRegistered ``model_config``: feature_names, classes, n_features, n_classes and the factory
    ``options``, each value JSON-encoded (dict of str to str)."""
    config = {"feature_names": list(feature_names), "classes": list(classes),
              "n_features": len(feature_names), "n_classes": len(classes), **options}
    return {k: json.dumps(v) for k, v in config.items()}


def parse_config(config: dict[str, str]) -> dict:
    """``model_config`` decoded: each value parsed from JSON. Raises ValueError when it is not a map of
    JSON strings."""
    try:
        return {k: json.loads(v) for k, v in config.items()}
    except (TypeError, ValueError) as exc:
        raise ValueError(f"model_config is not a map of JSON strings: {exc}") from None


def build_model(factory: str, config: dict[str, str]) -> StandardizedClassifier:
    """The architecture described by (factory, model_config), with fresh weights."""
    values = parse_config(config)
    for key in ("feature_names", "classes"):
        if key not in values:
            raise ValueError(f"model_config lacks {key!r}")
    n_features, n_classes = len(values["feature_names"]), len(values["classes"])
    options = {k: v for k, v in values.items() if k not in _RESERVED}
    core = resolve_factory(factory or DEFAULT_FACTORY)(n_features, n_classes, **options)
    return StandardizedClassifier(core, n_features)


class Predictor:
    """A loaded model version: ``predict(features) -> (label, probabilities)``. Missing features take
    the training mean (they standardise to 0); unknown features are ignored."""

    def __init__(self, module: StandardizedClassifier, feature_names: Sequence[str], classes: Sequence[str],
                 version: str = "", device: str = "cpu"):
        self.module = module.to(device).eval()
        self.feature_names = list(feature_names)
        self.classes = [str(c) for c in classes]
        self.version = version
        self.device = device
        self._mean = module.mean.detach().cpu().numpy().astype(np.float64)

    def matrix(self, rows: Sequence[dict[str, float]]) -> np.ndarray:
        """A float64 matrix [len(rows), n_features] of feature dicts, in ``feature_names`` order; a missing
        feature takes the training mean, an unknown one is ignored."""
        x = np.tile(self._mean, (len(rows), 1))
        index = {name: i for i, name in enumerate(self.feature_names)}
        for r, row in enumerate(rows):
            for name, value in row.items():
                i = index.get(name)
                if i is not None:
                    x[r, i] = value
        return x

    def align(self, x: np.ndarray, feature_names: Sequence[str]) -> np.ndarray:
        """Reorder a matrix whose columns are ``feature_names`` to this model's features."""
        pos = {name: i for i, name in enumerate(feature_names)}
        out = np.tile(self._mean, (x.shape[0], 1))
        for j, name in enumerate(self.feature_names):
            if name in pos:
                out[:, j] = x[:, pos[name]]
        return out

    @torch.no_grad()
    def predict_proba(self, x: np.ndarray, batch_size: int = 65536) -> np.ndarray:
        """Class probabilities [rows, n_classes] (softmax, float32) of ``x`` [rows, n_features],
        computed in batches of ``batch_size`` rows on the predictor's device."""
        out = []
        for start in range(0, x.shape[0], batch_size):
            xb = torch.as_tensor(x[start:start + batch_size], dtype=torch.float32, device=self.device)
            out.append(torch.softmax(self.module(xb).float(), dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)))

    def predict_labels(self, x: np.ndarray) -> np.ndarray:
        """The most probable class label (str) of each row of ``x`` [rows, n_features]; an object
        array [rows]."""
        proba = self.predict_proba(x)
        return np.asarray(self.classes, dtype=object)[proba.argmax(axis=1)] if len(proba) else np.array([], dtype=object)

    def predict(self, features: dict[str, float]) -> tuple[str, dict[str, float]]:
        """``(label, {class: probability})`` of one feature dict."""
        return self.predict_batch([features])[0]

    def predict_batch(self, rows: Sequence[dict[str, float]]) -> list[tuple[str, dict[str, float]]]:
        """``(label, {class: probability})`` of each feature dict in ``rows``, in order; [] for no rows."""
        if not rows:
            return []
        proba = self.predict_proba(self.matrix(rows))
        result = []
        for p in proba:
            probs = {c: float(v) for c, v in zip(self.classes, p)}
            result.append((self.classes[int(p.argmax())], probs))
        return result


def load_predictor(model_version, store, device: str = "cpu") -> Predictor:
    """Rebuild a registered version from its factory and config, load its verified weights."""
    module = build_model(model_version.model_factory or DEFAULT_FACTORY, model_version.model_config)
    state = store.load_state_dict(model_version.artifact_uri, model_version.artifact_sha256)
    module.load_state_dict(state)
    values = parse_config(model_version.model_config)
    return Predictor(module, values["feature_names"], values["classes"], model_version.version, device)
