"""How well the trainer learns from a small post-change window (issue 12, item 3): holdout accuracy of
``trainers.training.train_classifier`` trained on N labels of a river stream, tested on the next 3,000
examples of the same concept, mean over seeds. Offline (no Kafka); the default model and settings.

    python bench/small_window_training.py [--sizes 200,400,1000] [--seeds 1,2,3] [--streams agrawal,sea]
        [--min-batch 32] [--min-steps 100]

Streams: river's Agrawal (classification_function 2), SEA (variant 1, noise 0.1), Hyperplane (10
features), RandomRBF (3 classes, 10 features, 20 centroids). ``--min-batch 256 --min-steps 0`` gives the
trainer's behaviour before issue 12 (batch floor 256, early stopping from the first epochs).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def stream(name: str, seed: int):
    """A river synthetic stream by name (raises ValueError naming the allowed ones)."""
    from river.datasets import synth

    makers = {"agrawal": lambda: synth.Agrawal(classification_function=2, seed=seed),
              "sea": lambda: synth.SEA(variant=1, seed=seed, noise=0.1),
              "hyperplane": lambda: synth.Hyperplane(seed=seed, n_features=10),
              "rbf": lambda: synth.RandomRBF(seed_model=seed, seed_sample=seed, n_classes=3, n_features=10,
                                             n_centroids=20)}
    if name not in makers:
        raise ValueError(f"--streams: unknown stream {name!r}; one of {sorted(makers)}")
    return makers[name]()


def accuracy_after(name: str, n: int, seed: int, *, min_batch: int, min_steps: int) -> tuple[float, int, float]:
    """(test accuracy, epochs, train seconds) of a model trained on the first ``n`` examples."""
    from trainers.dataset import build_dataset
    from trainers.models import Predictor
    from trainers.training import train_classifier

    rows = [({str(k): float(v) for k, v in x.items()}, str(int(y))) for x, y in stream(name, seed).take(n + 3000)]
    ds = build_dataset([{"prediction_id": f"p{i:06d}", "label": label, "features": features, "prediction_time": 1}
                        for i, (features, label) in enumerate(rows[:n])])
    started = time.perf_counter()
    result = train_classifier(ds, seed=seed, min_batch=min_batch, min_steps=min_steps)
    seconds = time.perf_counter() - started
    predictor = Predictor(result.module, result.feature_names, result.classes)
    test = rows[n:]
    x = np.array([[features[c] for c in result.feature_names] for features, _ in test])
    y = np.array([label for _, label in test], dtype=object)
    return float(np.mean(predictor.predict_labels(x) == y)), result.epochs, seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="200,400,1000")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--streams", default="agrawal,sea,hyperplane,rbf")
    parser.add_argument("--min-batch", type=int, default=32)
    parser.add_argument("--min-steps", type=int, default=100)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"{'stream':10s} {'labels':>6s} {'accuracy':>8s}  epochs per seed  (min batch {args.min_batch}, "
          f"min steps {args.min_steps}, mean of seeds {seeds})")
    for name in args.streams.split(","):
        for n in (int(v) for v in args.sizes.split(",")):
            runs = [accuracy_after(name, n, s, min_batch=args.min_batch, min_steps=args.min_steps) for s in seeds]
            print(f"{name:10s} {n:6d} {np.mean([r[0] for r in runs]):8.3f}  {[r[1] for r in runs]}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
