"""`ctloop report`: a self-contained HTML report from ClickHouse, rendered in headless Chromium."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from infra.report import write_report
from infra.clickhouse_sink import ClickHouseSink
from tests.clickhouse_scenario import publish_scenario, scenario_settings


@pytest.fixture(scope="module")
def report_run(kafka_bootstrap, clickhouse_url, tmp_path_factory):
    settings = scenario_settings(kafka_bootstrap, clickhouse_url, tmp_path_factory.mktemp("report"), "r")
    publish_scenario(settings)
    with ClickHouseSink(settings) as sink:
        sink.run_until_caught_up(timeout_s=60)
        return settings, write_report(settings, settings.data_path / "report.html", client=sink.client)


@pytest.fixture
def report_path(report_run):
    return report_run[1]


@pytest.mark.slow
def test_report_is_self_contained_with_every_plot(report_path):
    text = report_path.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), "the report must not load anything"
    assert "<script" not in text
    for plot in ("accuracy-fraud", "funnel-fraud", "shadow-fraud", "accuracy-churn", "funnel-churn"):
        assert f'id="{plot}"' in text
    accuracy = text[text.index('id="accuracy-fraud"'):text.index("</svg>", text.index('id="accuracy-fraud"'))]
    assert 'class="series accuracy"' in accuracy
    # loop events of the scenario are marked on the accuracy plot
    assert accuracy.count('class="marker drift"') == 1
    assert accuracy.count('class="marker trigger"') == 1
    assert accuracy.count('class="marker run"') == 2 and accuracy.count('class="marker failed"') == 1
    assert accuracy.count('class="marker promoted"') == 1 and accuracy.count('class="marker rolled_back"') == 1
    assert accuracy.count('class="marker rejected"') == 1
    funnel = text[text.index('id="funnel-fraud"'):]
    assert ">20<" in funnel and "12 (60% of logged)" in funnel
    # model versions with their current alias (v2 promoted then rolled back to v1, v3 rejected)
    for version, alias in (("v1", "champion"), ("v2", "rolled_back"), ("v3", "rejected")):
        assert f"<td>{version}</td><td>{alias}</td>" in text, version
    shadow = text[text.index('id="shadow-fraud"'):]
    assert 'class="series primary"' in shadow and 'class="series shadow"' in shadow


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
def test_report_renders_in_headless_chromium(report_path, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium); the CI script installs it")
    proc = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chromium'}", "--dump-dom", report_path.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    # the rendered DOM holds the SVG plots as elements, with their data
    svgs = re.findall(r'<svg[^>]*\bid="([^"]+)"', dom)
    assert {"accuracy-fraud", "funnel-fraud", "shadow-fraud"} <= set(svgs)
    assert dom.count("<polyline") >= 3
    assert re.search(r'<line[^>]*class="marker promoted"', dom)
    assert "ctloop report" in dom


@pytest.mark.slow
def test_ctloop_report_command_writes_the_file(report_run, tmp_path):
    from click.testing import CliRunner

    from infra.cli import cli

    out = tmp_path / "cli-report.html"
    settings, _ = report_run
    env = {"CTLOOP_CLICKHOUSE_URL": settings.resolved_clickhouse_url, "CTLOOP_CLICKHOUSE_DATABASE": settings.clickhouse_database,
           "CTLOOP_DATA_DIR": str(tmp_path)}
    result = CliRunner().invoke(cli, ["report", "-o", str(out)], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(out)
    assert 'id="accuracy-fraud"' in out.read_text()
