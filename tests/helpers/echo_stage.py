"""A one-agent stage for smoke tests: counts predictions into a Prometheus counter."""
from __future__ import annotations


def register(app, ctx) -> None:
    seen = ctx.metrics.counter("ctloop_test_echo_events_total", "Events seen by the smoke-test stage.")

    @app.agent(ctx.faust_topics["predictions"], name="smoke-echo")
    async def echo(stream):
        async for _value in stream:
            seen.inc()
