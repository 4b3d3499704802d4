"""``ctloop app`` (infra/traffic.py), the compose stack's serving app, over the embedded broker: it
writes to the shared topics of its settings (no private prefix), so the stack's processors, trainer and
sink see its events; it registers an initial champion only when there is none."""
from __future__ import annotations

import pytest

from infra.traffic import AppOptions, run_app
from streams import catalog as ev
from tests.helpers.collect import Collector


@pytest.mark.slow
def test_app_serves_on_the_shared_topics_and_registers_a_champion_once(settings, topics):
    options = AppOptions(deployment="shop", rate=0, events=240, drift_every=100, review_fraction=0.5,
                         initial_examples=300, min_samples=50)
    first = run_app(settings, options)
    assert first.registered_initial and first.predictions == 240 and first.drifts == 2
    assert first.feedback > 0 and first.primary_version
    again = run_app(settings, AppOptions(deployment="shop", rate=0, events=20, drift_every=0, initial_examples=300))
    assert not again.registered_initial, "a restarted app must not register a second initial model"
    assert again.primary_version == first.primary_version

    with Collector(settings, topics.predictions, topics.feedback, topics.deployments, topics.model_lifecycle) as c:
        want_feedback = first.feedback + again.feedback
        c.wait(lambda c: len(c.of(ev.PREDICTION_LOGGED, deployment="shop")) >= 260
               and len(c.of(ev.FEEDBACK_RECEIVED, deployment="shop")) >= want_feedback,
               30, "the app's events on the shared topics")
        assert {e.topic for e in c.events} <= {topics.predictions, topics.feedback, topics.deployments,
                                              topics.model_lifecycle}
        assert all(e.topic.startswith(settings.topic_prefix) and ".demo-" not in e.topic for e in c.events)
        assert len(c.of(ev.PREDICTION_LOGGED, deployment="shop", role="primary")) == 260
        assert len(c.of(ev.FEEDBACK_RECEIVED, deployment="shop")) == want_feedback
        assert len(c.of(ev.MODEL_REGISTERED, deployment="shop")) == 1
        configured = c.of(ev.DEPLOYMENT_CONFIGURED, deployment="shop")
        assert configured, "the app configures its deployment"


def test_app_options_name_the_bad_field():
    with pytest.raises(ValueError, match="review_fraction"):
        AppOptions(review_fraction=1.5)
    with pytest.raises(ValueError, match="drift_every"):
        AppOptions(drift_every=-1)
    with pytest.raises(ValueError, match="bootstrap_servers"):
        from infra.settings import Settings

        run_app(Settings(bootstrap_servers=""), AppOptions(events=1))
