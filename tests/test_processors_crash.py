"""A worker killed with SIGKILL in the middle of a stream and restarted neither loses nor double
counts reviewed examples: counters are exact (offset-guarded records, see feedback_counters), every
prediction id gets its labeled example, and duplicates of labeled examples are bounded by the events
replayed after the crash (at most the uncommitted batch)."""
from __future__ import annotations

from collections import Counter

import pytest

from streams import catalog as ev
from streams.sdk import CtloopClient
from tests.helpers.collect import Collector
from tests.helpers.processes import running_processors

N = 4000


@pytest.mark.slow
def test_sigkill_and_restart_neither_loses_nor_double_counts(settings, topics):
    settings = settings.replace(stats_min_interval_s=0.1)
    dep = "crash-dep"
    with CtloopClient(settings) as client, Collector(settings, topics.labeled_examples, topics.feedback_stats) as out:
        client.setup_feedback_loop(dep, model_name="m")
        pids = [client.log_prediction(dep, {"x": float(i)}, label="a", model_version="1") for i in range(N)]
        client.flush()
        with running_processors(settings, stages=["processors.feedback_join"], timeout_s=60) as proc:
            for pid in pids:
                client.log_feedback(pid, dep, label="a" if hash(pid) % 2 else "b")
            client.flush()
            out.wait(lambda c: len(c.of(ev.LABELED_EXAMPLE)) >= 300, 60, "some labeled examples")
            proc.kill()                                    # SIGKILL: no flush, no commit, no goodbye
            proc.wait(10)
            at_kill = len(out.of(ev.LABELED_EXAMPLE))
        with running_processors(settings, stages=["processors.feedback_join"], timeout_s=60):
            def done(c):
                stats = c.of(ev.FEEDBACK_LOOP_STATS, deployment=dep)
                return stats and stats[-1].value["reviewed"] >= N and stats[-1].value
            stats = out.wait(done, 180, f"stats with {N} reviewed after the restart")
            out.wait(lambda c: len({e.value["prediction_id"] for e in c.of(ev.LABELED_EXAMPLE)}) >= N, 30, "all examples")
        examples = out.of(ev.LABELED_EXAMPLE)
        per_pid = Counter(e.value["prediction_id"] for e in examples)
        assert set(per_pid) == set(pids)                   # nothing lost
        assert stats["reviewed"] == N and stats["added_to_training"] == N and stats["feedback_received"] == N
        assert stats["predictions_logged"] == N            # not double counted either
        duplicates = len(examples) - N
        print(f"killed with {at_kill}/{N} labeled examples out; {duplicates} duplicate labeled examples after restart")
        assert max(per_pid.values()) <= 2                 # a replayed event re-emits its example at most once
