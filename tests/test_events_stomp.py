"""fedd's STOMP sink against real brokers: an ActiveMQ 5.17 of our own (Debian `activemq`, started
once for this module on loopback ports, with a user and a write-restricted destination) and RabbitMQ's
STOMP plugin on the machine's RabbitMQ (127.0.0.1:61613). Consumers are stomp.py clients.
Delivery counts (delivered / duplicated / lost) are printed for the report."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import stomp

from tests.daemon import Fedd, start_fedd, wait_for
from tests.gridpki import CA, run
from tests.servers import free_port, wait_for_port

N = 2000
RABBIT_STOMP = 61613

ACTIVEMQ_SECURITY = """<plugins>
  <simpleAuthenticationPlugin anonymousAccessAllowed="false"><users>
    <authenticationUser username="fedd" password="secret" groups="users"/>
  </users></simpleAuthenticationPlugin>
  <authorizationPlugin><map><authorizationMap><authorizationEntries>
    <authorizationEntry queue="fedd.>" read="users" write="users" admin="users"/>
    <authorizationEntry topic="fedd.>" read="users" write="users" admin="users"/>
    <authorizationEntry topic="ActiveMQ.Advisory.>" read="users" write="users" admin="users"/>
  </authorizationEntries></authorizationMap></map></authorizationPlugin>
</plugins>
"""


class ActiveMQ:
    """One broker process of our own: stomp://127.0.0.1:<port>, user fedd/secret, may write
    `fedd.>` queues and topics only. No web console (the Debian instance config has none)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        (base / "conf").mkdir(parents=True)
        for f in Path("/etc/activemq/instances-available/main").iterdir():
            shutil.copy(f, base / "conf" / f.name)
        self.port, openwire = free_port(), free_port()
        self.tls_port, self.mtls_port = free_port(), free_port()  # stomp+ssl, the second needs a client cert
        self._make_pki(base / "pki")
        conf = base / "conf" / "activemq.xml"
        text = conf.read_text()
        connectors = (
            f'<transportConnector name="openwire" uri="tcp://127.0.0.1:{openwire}"/>\n'
            f'<transportConnector name="stomp" uri="stomp://127.0.0.1:{self.port}"/>\n'
            f'<transportConnector name="stomps" uri="stomp+ssl://127.0.0.1:{self.tls_port}"/>\n'
            f'<transportConnector name="stompm" uri="stomp+ssl://127.0.0.1:{self.mtls_port}?needClientAuth=true"/>'
        )
        ssl_context = (
            f'<sslContext><sslContext keyStore="file:{self.keystore}" keyStorePassword="changeit" '
            f'trustStore="file:{self.truststore}" trustStorePassword="changeit"/></sslContext>\n'
        )
        text = text.replace('<transportConnector name="openwire" uri="tcp://127.0.0.1:61616"/>', connectors)
        text = text.replace("<persistenceAdapter>", ACTIVEMQ_SECURITY + "<persistenceAdapter>", 1)
        text = text.replace("<transportConnectors>", ssl_context + "<transportConnectors>", 1)
        assert connectors in text and "simpleAuthenticationPlugin" in text and ssl_context in text
        conf.write_text(text)
        self.proc: subprocess.Popen[bytes] | None = None

    def _make_pki(self, pki: Path) -> None:
        """A throwaway CA, the broker's certificate for 127.0.0.1 in a PKCS#12 key store, the CA in
        the trust store (for client certificates), a client certificate, and an unrelated CA."""
        self.ca = CA(pki, "ca", "/CN=fedd test STOMP CA")
        self.other_ca = CA(pki, "other", "/CN=fedd test other CA")
        host, host_key = self.ca.issue("broker", "/CN=127.0.0.1", "host")
        self.client_cert, self.client_key = self.ca.issue("client", "/CN=fedd client", "usr")
        self.keystore, self.truststore = pki / "broker.p12", pki / "trust.p12"
        run("openssl", "pkcs12", "-export", "-in", str(host), "-inkey", str(host_key), "-name", "broker",
            "-out", str(self.keystore), "-passout", "pass:changeit")  # fmt: skip
        run("keytool", "-importcert", "-noprompt", "-alias", "ca", "-file", str(self.ca.pem), "-storetype", "PKCS12",
            "-keystore", str(self.truststore), "-storepass", "changeit")  # fmt: skip

    def start(self) -> None:
        b = self.base
        command = [
            "java",
            "-Xmx256M",
            "-Dactivemq.home=/usr/share/activemq",
            f"-Dactivemq.base={b}",
            f"-Dactivemq.conf={b}/conf",
            f"-Dactivemq.data={b}/data",
            "-jar",
            "/usr/share/activemq/bin/activemq.jar",
            "start",
            f"xbean:file:{b}/conf/activemq.xml",
        ]
        self.proc = subprocess.Popen(command, stdout=(b / "activemq.log").open("ab"), stderr=subprocess.STDOUT)
        for port in (self.port, self.tls_port, self.mtls_port):
            wait_for_port(port, 90, self.proc)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)


@pytest.fixture(scope="module")
def activemq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ActiveMQ]:
    broker = ActiveMQ(tmp_path_factory.mktemp("activemq"))
    broker.start()
    yield broker
    broker.kill()


@pytest.fixture(scope="module")
def rabbit_stomp() -> int:
    """RabbitMQ's STOMP plugin, enabled here if it is not (tests/run.sh enables it too), on loopback."""
    subprocess.run(
        ["rabbitmqctl", "eval", 'application:set_env(rabbitmq_stomp, tcp_listeners, [{"127.0.0.1", 61613}]).'],
        check=True,
        capture_output=True,
        timeout=60,
    )
    subprocess.run(["rabbitmq-plugins", "enable", "rabbitmq_stomp"], check=True, capture_output=True, timeout=120)
    wait_for_port(RABBIT_STOMP, 30)
    return RABBIT_STOMP


class Consumer(stomp.ConnectionListener):  # type: ignore[misc]  # stomp.py ships no type information
    """A stomp.py subscriber that keeps every message (headers, parsed body)."""

    def __init__(self, port: int, login: str, passcode: str, destination: str) -> None:
        self.messages: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.errors: list[str] = []
        self.cond = threading.Condition()
        self.conn = stomp.Connection12([("127.0.0.1", port)], vhost="/", heartbeats=(0, 0))
        self.conn.set_listener("c", self)
        self.conn.connect(login, passcode, wait=True)
        self.conn.subscribe(destination, id="1", ack="auto")
        self.port = self.conn.transport.socket.getsockname()[1]

    def on_message(self, frame: Any) -> None:
        with self.cond:
            self.messages.append((dict(frame.headers), json.loads(frame.body)))
            self.cond.notify_all()

    def on_error(self, frame: Any) -> None:
        self.errors.append(frame.body)

    def take(self, n: int, timeout: float = 60.0) -> list[tuple[dict[str, str], dict[str, Any]]]:
        with self.cond:
            self.cond.wait_for(lambda: len(self.messages) >= n, timeout)
            return list(self.messages)

    def settle(self, quiet: float = 1.0) -> list[tuple[dict[str, str], dict[str, Any]]]:
        """Everything, once nothing new arrived for `quiet` seconds (duplicates come late)."""
        with self.cond:
            while self.cond.wait(quiet):
                pass
            return list(self.messages)

    def close(self) -> None:
        if self.conn.is_connected():
            self.conn.disconnect()


def config(port: int, data: Path, broker: str, destination: str, extra: str = "") -> str:
    return f"""[server]
listen = tcp:{port}:interface=127.0.0.1
[events]
broker = {broker}
destination = {destination}
types = get-redirect
flush_interval = 0.02
idle_interval = 0.2
timeout = 5
heartbeat = 2
{extra}
[endpoint data]
kind = local
path = {data}
map = /atlas /
space_source = none
"""


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    for i in range(20):
        (tmp_path / "data" / f"f{i}").write_text("x")
    return tmp_path / "data"


def redirects(fed: Fedd, n: int, start: int = 0) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", fed.port, timeout=10)
    for i in range(start, start + n):
        conn.request("GET", f"/atlas/f{i % 20}")
        r = conn.getresponse()
        r.read()
        assert r.status == 302
    conn.close()


def counts(messages: list[tuple[dict[str, str], dict[str, Any]]], emitted: int) -> dict[str, int]:
    ids = [body["id"] for _, body in messages]
    unique = len(set(ids))
    return {"emitted": emitted, "delivered": unique, "duplicated": len(ids) - unique, "lost": emitted - unique}


def report(what: str, c: dict[str, int]) -> None:
    print(f"\nSTOMP {what}: {c}")


def clean(log: str) -> None:
    assert "Traceback" not in log and "Unhandled" not in log, log


def test_activemq_topic_delivery_hermes_headers(activemq: ActiveMQ, data: Path, tmp_path: Path) -> None:
    """Hermes' shape: a topic, a stomp.py subscriber, event_type and fedd-id headers, every event."""
    topic = f"/topic/fedd.events.{uuid.uuid4().hex[:8]}"
    consumer = Consumer(activemq.port, "fedd", "secret", topic)
    port = free_port()
    fed = start_fedd(
        tmp_path / "run", config(port, data, f"stomp://fedd:secret@127.0.0.1:{activemq.port}", topic), port
    )
    try:
        wait_for(lambda: fed.status()["events"]["connected"], 20, "fedd connected to ActiveMQ")
        redirects(fed, N)
        got = consumer.take(N)
        headers, body = got[0]
        assert headers["event_type"] == "get-redirect" and headers["fedd-id"] == body["id"]
        assert headers["content-type"] == "application/json" and headers["persistent"] == "true"
        assert headers["destination"] == topic and headers["message-id"].startswith("ID:")
        assert set(body) == {"id", "event_type", "payload", "created_at"}
        assert [b["payload"]["path"] for _, b in got[:N]] == [f"/atlas/f{i % 20}" for i in range(N)]  # in order
        c = counts(consumer.settle(), N)
        report("ActiveMQ topic, no fault", c)
        assert c["lost"] == 0 and c["duplicated"] == 0
        status = fed.status()["events"]
        assert status["sent"] == N and status["outbox_depth"] == 0
        assert "secret" not in json.dumps(status) and f"stomp://127.0.0.1:{activemq.port}" in status["sink"]
        clean(fed.log_text())
    finally:
        fed.stop()
        consumer.close()


def test_activemq_restart_with_events_in_the_outbox(activemq: ActiveMQ, data: Path, tmp_path: Path) -> None:
    """ActiveMQ killed while fedd sends; events pile up in the outbox; the restarted broker gets
    every one (a persistent queue keeps them across the restart)."""
    queue = f"/queue/fedd.restart.{uuid.uuid4().hex[:8]}"
    port = free_port()
    conf = config(port, data, f"stomp://127.0.0.1:{activemq.port}", queue, "login = fedd\npasscode_env = STOMP_PASS")
    os.environ["STOMP_PASS"] = "secret"  # fedd inherits the environment
    try:
        fed = start_fedd(tmp_path / "run", conf, port)
    finally:
        del os.environ["STOMP_PASS"]
    try:
        wait_for(lambda: fed.status()["events"]["connected"], 20, "fedd connected to ActiveMQ")
        redirects(fed, N // 2)
        activemq.kill()  # while events are on the wire: some without receipt yet
        redirects(fed, N // 2, N // 2)  # answered at once, into the outbox
        wait_for(lambda: not fed.status()["events"]["connected"], 20, "fedd to see the broker gone")
        assert fed.status()["events"]["outbox_depth"] > 0
        activemq.start()
        wait_for(lambda: fed.status()["events"]["outbox_depth"] == 0, 60, "the outbox to drain")
        consumer = Consumer(activemq.port, "fedd", "secret", queue)
        try:
            consumer.take(N)
            c = counts(consumer.settle(), N)
        finally:
            consumer.close()
        report("ActiveMQ kill -9 and restart", c)
        assert c["lost"] == 0
        log = fed.log_text()
        lines = log.splitlines()
        first = next(n for n, line in enumerate(lines) if "connection lost" in line)
        back = next(n for n, line in enumerate(lines) if n > first and "connected to STOMP broker" in line)
        # once per outage, not on every retry while the broker is down (a freshly started broker on a
        # loaded machine may miss a receipt deadline after that: a second outage, logged as one)
        assert [line for line in lines[first:back] if "connection lost" in line] == [lines[first]], log
        clean(log)
    finally:
        fed.stop()


def test_activemq_wrong_password_then_fixed(activemq: ActiveMQ, data: Path, tmp_path: Path) -> None:
    queue = f"/queue/fedd.auth.{uuid.uuid4().hex[:8]}"
    secret = tmp_path / "passcode"
    secret.write_text("hunter2x\n")
    port = free_port()
    conf = config(port, data, f"stomp://127.0.0.1:{activemq.port}", queue, f"login = fedd\npasscode_file = {secret}")
    fed = start_fedd(tmp_path / "run", conf, port)
    try:
        redirects(fed, N)
        wait_for(lambda: fed.status()["events"]["outbox_depth"] == N, 20, "events kept in the outbox")
        wait_for(lambda: fed.status()["events"]["connect_failures"] >= 3, 20, "several attempts")
        status = fed.status()["events"]
        assert status["connected"] is False and "password is invalid" in status["last_error"], status
        log = fed.log_text()
        refused = [line for line in log.splitlines() if "refused the connection of user fedd" in line]
        assert len(refused) == 1 and "password is invalid" in refused[0], log  # once, with the broker's words
        assert "hunter2x" not in log
        clean(log)
        fed.stop()
        secret.write_text("secret\n")
        fed = start_fedd(tmp_path / "run", conf, port)
        consumer = Consumer(activemq.port, "fedd", "secret", queue)
        try:
            consumer.take(N)
            c = counts(consumer.settle(), N)
        finally:
            consumer.close()
        report("ActiveMQ wrong password, fixed by a restart", c)
        assert c == {"emitted": N, "delivered": N, "duplicated": 0, "lost": 0}
    finally:
        fed.stop()


def test_activemq_error_frame_then_fail_over(activemq: ActiveMQ, data: Path, tmp_path: Path) -> None:
    """A destination the user may not write: ActiveMQ answers the SEND with an ERROR frame. The events
    stay; logged once. Then a broker list whose first broker is dead: fedd fails over to the second."""
    port = free_port()
    dead = free_port()
    conf = config(port, data, f"stomp://fedd:secret@127.0.0.1:{activemq.port}", "/queue/other.forbidden")
    fed = start_fedd(tmp_path / "run", conf, port)
    try:
        redirects(fed, 10)
        wait_for(lambda: fed.status()["events"]["failed_publishes"] >= 3, 30, "several refused batches")
        status = fed.status()["events"]
        assert status["outbox_depth"] == 10 and status["sent"] == 0
        log = fed.log_text()
        errors = [line for line in log.splitlines() if "ERROR frame" in line]
        assert len(errors) == 1 and "not authorized to write to: queue://other.forbidden" in errors[0], log
        clean(log)
    finally:
        fed.stop()
    queue = f"/queue/fedd.failover.{uuid.uuid4().hex[:8]}"
    brokers = f"stomp://127.0.0.1:{dead}, stomp://fedd:secret@127.0.0.1:{activemq.port}"
    fed = start_fedd(tmp_path / "run2", config(port, data, brokers, queue), port)
    try:
        redirects(fed, 50)
        consumer = Consumer(activemq.port, "fedd", "secret", queue)
        try:
            got = consumer.take(50)
        finally:
            consumer.close()
        assert len({b["id"] for _, b in got}) == 50
        log = fed.log_text()
        assert f"stomp://127.0.0.1:{dead} unreachable" in log and "failing over to" in log, log
        clean(log)
    finally:
        fed.stop()


def cut_stomp_clients() -> None:
    """RabbitMQ closes every STOMP client connection (only STOMP ones: other tests' AMQP connections to
    this RabbitMQ stay; `close_connection` on a STOMP connection's id leaves its socket open)."""
    out = subprocess.run(
        ["rabbitmqctl", "eval", 'rabbit_stomp:close_all_client_connections("fedd test cut").'],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert out.startswith("{ok,") and out.strip() != "{ok,0}", out


def test_rabbitmq_stomp_delivery_and_cut_connection(rabbit_stomp: int, data: Path, tmp_path: Path) -> None:
    queue = f"/queue/fedd-stomp-{uuid.uuid4().hex[:8]}"
    port = free_port()
    fed = start_fedd(tmp_path / "run", config(port, data, f"stomp://guest:guest@127.0.0.1:{rabbit_stomp}", queue), port)
    consumer = None
    try:
        wait_for(lambda: fed.status()["events"]["connected"], 20, "fedd connected to RabbitMQ STOMP")
        redirects(fed, N // 2)
        cut_stomp_clients()  # while events are on the wire
        redirects(fed, N // 2, N // 2)
        wait_for(lambda: fed.status()["events"]["sent"] >= N, 60, "fedd to send everything")
        consumer = Consumer(rabbit_stomp, "guest", "guest", queue)  # the queue kept them
        got = consumer.take(N)
        headers, body = got[0]
        assert headers["event_type"] == "get-redirect" and headers["fedd-id"] == body["id"]
        c = counts(consumer.settle(), N)
        report("RabbitMQ STOMP, connection closed by the broker", c)
        assert c["lost"] == 0
        log = fed.log_text()
        assert log.count("connection lost") == 1, log
        clean(log)
    finally:
        fed.stop()
        if consumer is not None:
            consumer.close()


def test_rabbitmq_stomp_bundles_every_id_once(rabbit_stomp: int, data: Path, tmp_path: Path) -> None:
    queue = f"/queue/fedd-stomp-{uuid.uuid4().hex[:8]}"
    port = free_port()
    broker = f"stomp://guest:guest@127.0.0.1:{rabbit_stomp}"
    fed = start_fedd(tmp_path / "run", config(port, data, broker, queue, "bundle = 50"), port)
    consumer = None
    try:
        wait_for(lambda: fed.status()["events"]["connected"], 20, "fedd connected to RabbitMQ STOMP")
        redirects(fed, N)
        wait_for(lambda: fed.status()["events"]["sent"] >= N, 60, "fedd to send everything")
        consumer = Consumer(rabbit_stomp, "guest", "guest", queue)  # the queue kept them
        got = consumer.settle()
        envelopes: list[Any] = []
        for headers, docs in got:
            assert isinstance(docs, list) and 1 <= len(docs) <= 50 and headers["fedd-count"] == str(len(docs))
            assert headers["event_type"] == "get-redirect" and headers["fedd-id"] == docs[0]["id"]
            envelopes += docs
        ids = [doc["id"] for doc in envelopes]
        assert len(ids) == len(set(ids)) == N  # every event once, no fault
        assert [doc["payload"]["path"] for doc in envelopes] == [f"/atlas/f{i % 20}" for i in range(N)]  # in order
        assert len(got) < N // 10  # bundled
        report(f"RabbitMQ STOMP, bundle = 50: {len(got)} messages", counts([({}, d) for d in envelopes], N))
        clean(fed.log_text())
    finally:
        fed.stop()
        if consumer is not None:
            consumer.close()


def test_rabbitmq_stomp_wrong_password(rabbit_stomp: int, data: Path, tmp_path: Path) -> None:
    queue = f"/queue/fedd-stomp-{uuid.uuid4().hex[:8]}"
    port = free_port()
    conf = config(port, data, f"stomp://127.0.0.1:{rabbit_stomp}", queue, "login = guest\npasscode = nope")
    fed = start_fedd(tmp_path / "run", conf, port)
    try:
        redirects(fed, 20)
        wait_for(lambda: fed.status()["events"]["connect_failures"] >= 3, 20, "several attempts")
        status = fed.status()["events"]
        assert status["outbox_depth"] == 20 and not status["connected"]
        log = fed.log_text()
        refused = [line for line in log.splitlines() if "refused the connection of user guest" in line]
        assert len(refused) == 1, log
        clean(log)
    finally:
        fed.stop()


def test_activemq_tls_ca_bundle_and_client_certificate(activemq: ActiveMQ, data: Path, tmp_path: Path) -> None:
    """stomp+ssl:// to ActiveMQ's TLS connector: the broker's certificate is checked against a
    `ca_file` bundle whose second certificate is the broker's CA (every certificate of the bundle
    counts); then the connector that needs a client certificate, with tls_certificate/tls_private_key."""
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(activemq.other_ca.pem.read_bytes() + activemq.ca.pem.read_bytes())
    cases = [
        (activemq.tls_port, f"ca_file = {bundle}"),
        (
            activemq.mtls_port,
            f"ca_file = {activemq.ca.pem}\ntls_certificate = {activemq.client_cert}\n"
            f"tls_private_key = {activemq.client_key}",
        ),
    ]
    for n, (tls_port, extra) in enumerate(cases):
        queue = f"/queue/fedd.tls.{uuid.uuid4().hex[:8]}"
        port = free_port()
        broker = f"stomp+ssl://fedd:secret@127.0.0.1:{tls_port}"
        fed = start_fedd(tmp_path / f"run{n}", config(port, data, broker, queue, extra), port)
        try:

            def connected(f: Fedd = fed) -> Any:
                return f.status()["events"]["connected"]

            def all_sent(f: Fedd = fed) -> bool:
                return bool(f.status()["events"]["sent"] == 200)

            wait_for(connected, 20, "fedd connected to ActiveMQ over TLS")
            redirects(fed, 200)
            wait_for(all_sent, 20, "fedd to send every event")
            status = fed.status()["events"]
            assert f"stomp+ssl://127.0.0.1:{tls_port}" in status["sink"] and status["outbox_depth"] == 0
            consumer = Consumer(activemq.port, "fedd", "secret", queue)  # plain STOMP on the same broker
            try:
                consumer.take(200)
                c = counts(consumer.settle(0.5), 200)
            finally:
                consumer.close()
            report(f"ActiveMQ stomp+ssl {'client certificate' if n else 'CA bundle'}", c)
            assert c == {"emitted": 200, "delivered": 200, "duplicated": 0, "lost": 0}
            clean(fed.log_text())
        finally:
            fed.stop()


def test_activemq_tls_wrong_ca_then_fixed(activemq: ActiveMQ, data: Path, tmp_path: Path) -> None:
    """`ca_file` is another CA: fedd refuses the broker's certificate, says so once without a
    traceback, keeps the events; restarted with the right CA it delivers every one."""
    queue = f"/queue/fedd.tlsca.{uuid.uuid4().hex[:8]}"
    port = free_port()
    broker = f"stomp+ssl://fedd:secret@127.0.0.1:{activemq.tls_port}"
    fed = start_fedd(tmp_path / "run", config(port, data, broker, queue, f"ca_file = {activemq.other_ca.pem}"), port)
    try:
        redirects(fed, 50)
        wait_for(lambda: fed.status()["events"]["connect_failures"] >= 3, 20, "several refused handshakes")
        status = fed.status()["events"]
        assert not status["connected"] and status["outbox_depth"] == 50 and status["sent"] == 0, status
        assert "certificate verify failed" in status["last_error"], status
        log = fed.log_text()
        refused = [line for line in log.splitlines() if f"stomp+ssl://127.0.0.1:{activemq.tls_port}" in line]
        assert len(refused) == 1 and "failed the TLS handshake" in refused[0], log  # once per outage
        # `[fedd.events#error]`, with workers `[worker-N fedd.events#error]`
        assert "fedd.events#error]" in refused[0] and "certificate verify failed" in refused[0], log
        print(f"\nwrong CA log line: {refused[0]}")
        clean(log)
        fed.stop()
        fed = start_fedd(tmp_path / "run", config(port, data, broker, queue, f"ca_file = {activemq.ca.pem}"), port)
        consumer = Consumer(activemq.port, "fedd", "secret", queue)
        try:
            consumer.take(50)
            c = counts(consumer.settle(0.5), 50)
        finally:
            consumer.close()
        report("ActiveMQ stomp+ssl wrong CA, fixed by a restart", c)
        assert c == {"emitted": 50, "delivered": 50, "duplicated": 0, "lost": 0}
        clean(fed.log_text())
    finally:
        fed.stop()


def test_activemq_tls_client_certificate_missing(activemq: ActiveMQ, data: Path, tmp_path: Path) -> None:
    """The connector needs a client certificate and fedd has none: the broker ends the handshake;
    logged once as a TLS failure, events kept."""
    port = free_port()
    broker = f"stomp+ssl://fedd:secret@127.0.0.1:{activemq.mtls_port}"
    fed = start_fedd(
        tmp_path / "run", config(port, data, broker, "/queue/fedd.nocert", f"ca_file = {activemq.ca.pem}"), port
    )
    try:
        redirects(fed, 10)
        wait_for(lambda: fed.status()["events"]["connect_failures"] >= 3, 20, "several refused handshakes")
        status = fed.status()["events"]
        assert not status["connected"] and status["outbox_depth"] == 10 and status["sent"] == 0, status
        log = fed.log_text()
        refused = [line for line in log.splitlines() if f"stomp+ssl://127.0.0.1:{activemq.mtls_port}" in line]
        print(f"\nno client certificate log line: {refused}")
        assert len(refused) == 1 and "failed the TLS handshake" in refused[0], log
        clean(log)
    finally:
        fed.stop()


def test_malformed_ca_file_is_a_start_up_error(data: Path, tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    port = free_port()
    conf = config(port, data, "stomp+ssl://127.0.0.1:1", "/queue/fedd.x", f"ca_file = {bad}")
    with pytest.raises(RuntimeError) as err:
        start_fedd(tmp_path / "run", conf, port)
    text = str(err.value)
    assert f"fedd: [events] ca_file {bad}: not PEM certificates" in text, text
    assert "Traceback" not in text, text
