"""Run and observe ctloop over real connections: subprocess workers (:mod:`infra.harness.processes`) and
an event collector with deadline waits (:mod:`infra.harness.collect`). Used by the benchmarks (``bench/``)
and the tests; ships in the wheel so ``ctloop bench`` runs without ``tests/``."""
