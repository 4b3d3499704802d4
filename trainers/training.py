"""PyTorch training of a candidate: full retraining or fine-tuning from the champion, on CUDA (mixed
precision, bfloat16 autocast) when available, else on the CPU. Minibatch Adam with early stopping on a
validation split (hash of the prediction id) of the training part."""
from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from trainers.dataset import Dataset, split_mask
from trainers.models import DEFAULT_FACTORY, StandardizedClassifier, build_model, model_config

log = logging.getLogger(__name__)


def resolve_device(setting: str = "auto") -> str:
    """The torch device of the ``trainer_device`` setting: ``auto`` gives cuda:0 when CUDA is available,
    else cpu; ``cuda`` means cuda:0. Raises ValueError for cuda without CUDA, or a value other than auto,
    cpu or cuda[:N]."""
    setting = (setting or "auto").strip().lower()
    if setting == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"trainer_device={setting!r} but CUDA is not available on this machine")
        return setting if ":" in setting else "cuda:0"
    if setting != "cpu":
        raise ValueError(f"trainer_device must be auto, cpu or cuda:N, got {setting!r}")
    return "cpu"


def configure_threads(threads: int = 0) -> int:
    """torch intra-op threads: the setting, or the cores available (capped at 8)."""
    n = threads if threads > 0 else max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


@dataclass
class TrainResult:
    """A trained candidate: the module, its factory and ``model_config`` (str to JSON str), classes and
    feature names, the device, epochs run, samples seen (rows, over all epochs), ``train_seconds`` and
    ``mode`` (full or finetune: what was actually done)."""
    module: StandardizedClassifier
    factory: str
    config: dict[str, str]
    classes: list[str]
    feature_names: list[str]
    device: str
    epochs: int
    samples_seen: int
    train_seconds: float
    mode: str                       # full or finetune (what was actually done)

    @property
    def samples_per_second(self) -> float:
        """Training throughput: samples seen / train_seconds (0.0 when no time was measured)."""
        return self.samples_seen / self.train_seconds if self.train_seconds > 0 else 0.0


def flip_labels(y: np.ndarray, classes: list[str], fraction: float, seed: int = 0) -> np.ndarray:
    """Fault injection: replace ``fraction`` of labels by a different class."""
    if fraction <= 0:
        return y
    rng = np.random.default_rng(seed)
    y = y.copy()
    idx = rng.choice(len(y), size=int(round(fraction * len(y))), replace=False)
    for i in idx:
        others = [c for c in classes if c != y[i]]
        y[i] = others[rng.integers(len(others))]
    return y


def train_classifier(train: Dataset, *, factory: str = DEFAULT_FACTORY, device: str = "cpu", max_epochs: int = 40,
                     patience: int = 4, lr: float = 3e-3, batch_size: int | None = None, seed: int = 0,
                     min_steps: int = 100, min_batch: int = 32,
                     init_from: tuple[StandardizedClassifier, list[str], list[str]] | None = None,
                     label_noise: float = 0.0, factory_options: dict | None = None) -> TrainResult:
    """Train on ``train`` (the training split). ``init_from`` = (champion module, its features, its
    classes): fine-tune when the architecture matches, else fall back to full training."""
    torch.manual_seed(seed)
    classes = sorted(set(train.y.tolist()))
    if init_from is not None:
        # keep the champion's classes (and order) so its weights fit; unseen new classes force full training
        champ_module, champ_features, champ_classes = init_from
        if list(champ_features) == list(train.feature_names) and set(classes) <= set(champ_classes):
            classes = list(champ_classes)
        else:
            log.info("fine-tuning impossible (features or classes changed); training from scratch")
            init_from = None
    config = model_config(train.feature_names, classes, **(factory_options or {}))
    module = build_model(factory, config)
    mode = "full"
    if init_from is not None:
        try:
            module.load_state_dict(init_from[0].state_dict())
            mode = "finetune"
            lr = lr / 3
        except RuntimeError as exc:  # different architecture options
            log.info("fine-tuning impossible (%s); training from scratch", exc)
            module = build_model(factory, config)
    if mode == "full":
        module.set_standardization(train.x)

    y = flip_labels(train.y, classes, label_noise, seed)
    index = {c: i for i, c in enumerate(classes)}
    targets = np.fromiter((index[v] for v in y), dtype=np.int64, count=len(y))
    val_mask = split_mask(train.ids.tolist(), 10, salt="val:")
    if val_mask.all() or not val_mask.any() or len(y) < 40:
        val_mask = np.zeros(len(y), dtype=bool)
    use_cuda = device.startswith("cuda")
    x_all = torch.as_tensor(train.x, dtype=torch.float32)
    t_all = torch.as_tensor(targets)
    x_tr, t_tr = x_all[~torch.as_tensor(val_mask)].to(device), t_all[~torch.as_tensor(val_mask)].to(device)
    x_va, t_va = x_all[torch.as_tensor(val_mask)].to(device), t_all[torch.as_tensor(val_mask)].to(device)
    module = module.to(device)
    n = x_tr.shape[0]
    bs = batch_size or int(min(8192, max(min_batch, n // 16)))
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator(device="cpu").manual_seed(seed)
    best_loss, best_state, bad_epochs, epochs, seen, steps = float("inf"), None, 0, 0, 0, 0
    amp = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if use_cuda else _null()
    started = time.perf_counter()
    for epoch in range(max_epochs):
        module.train()
        perm = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n, bs):
            idx = perm[start:start + bs]
            with amp:
                loss = loss_fn(module(x_tr[idx]).float(), t_tr[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
        seen += n
        epochs = epoch + 1
        if x_va.shape[0]:
            module.eval()
            with torch.no_grad(), amp:
                val_loss = float(loss_fn(module(x_va).float(), t_va))
            if val_loss < best_loss - 1e-4:
                best_loss, bad_epochs = val_loss, 0
                best_state = copy.deepcopy(module.state_dict())
            else:
                bad_epochs += 1
                if bad_epochs >= patience and steps >= min_steps:
                    break
    if use_cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    if best_state is not None:
        module.load_state_dict(best_state)
    module = module.to("cpu").eval()
    return TrainResult(module, factory, config, classes, list(train.feature_names), device, epochs, seen, elapsed, mode)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
