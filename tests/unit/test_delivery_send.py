"""One attempt on the wire (``DeliveryWorker.send``), against a real local receiver: the connection
goes to the address that was checked while ``Host`` and TLS (SNI and the certificate) keep the
URL's name; the signature verifies with the official library; a redirect is not followed; the
whole attempt ends at ``LEDGER_DELIVERY_TIMEOUT``; the reply is read up to a small cap."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from httpx_aiohttp import AiohttpTransport
from standardwebhooks.webhooks import Webhook

from ledger.settings import decode_secret
from reactors.delivery import DeliveryWorker
from reactors.destinations import new_secret

NAME = "hooks.example.com"


def _certificate(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A CA and a certificate for ``NAME`` it signed: the receiver's context and the sender's."""
    now = datetime.datetime.now(datetime.UTC)

    def issue(subject: str, key: Any, issuer: str, signer: Any, *, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = issue("test CA", ca_key, "test CA", ca_key, ca=True)
    leaf = issue(NAME, leaf_key, "test CA", ca_key, ca=False)
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "leaf.key").write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    server.sni_callback = lambda tls, name, _: setattr(tls, "sni", name)  # what the sender asked for
    client = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    return server, client


class Receiver:
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.answer: web.StreamResponse = web.Response(status=204)
        self.delay = 0.0

    async def hook(self, request: web.Request) -> web.StreamResponse:
        tls = request.transport.get_extra_info("ssl_object") if request.transport else None
        self.seen.append(
            {
                "host": request.headers["host"],
                "sni": getattr(tls, "sni", None),
                "headers": dict(request.headers),
                "body": await request.read(),
            }
        )
        await asyncio.sleep(self.delay)
        return self.answer


@pytest.fixture
async def receiver(tmp_path: Path) -> AsyncIterator[tuple[Receiver, int, int, ssl.SSLContext]]:
    """One receiver on plain HTTP and on HTTPS (certificate for ``NAME``): its two ports and the
    context that trusts its certificate."""
    server_tls, client_tls = _certificate(tmp_path)
    state = Receiver()
    app = web.Application()
    app.router.add_post("/hook", state.hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    plain, secure = web.TCPSite(runner, "127.0.0.1", 0), web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls)
    await plain.start()
    await secure.start()
    ports = [s._server.sockets[0].getsockname()[1] for s in (plain, secure)]  # type: ignore[union-attr]
    try:
        yield state, ports[0], ports[1], client_tls
    finally:
        await runner.cleanup()


def _worker(client_tls: ssl.SSLContext, *, timeout: float = 5.0) -> DeliveryWorker:
    return DeliveryWorker(
        "postgresql://unused",
        None,  # send() needs no database
        asyncio.Event(),
        schedule=(0.0,),
        timeout=timeout,
        allow_private=True,  # the receiver is on this machine
        transport=AiohttpTransport(verify=client_tls),
    )


def _name_answers_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo

    async def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        return await real("127.0.0.1" if host == NAME else host, port, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_an_attempt_keeps_the_url_s_name_and_verifies(
    receiver: tuple[Receiver, int, int, ssl.SSLContext], monkeypatch: pytest.MonkeyPatch, scheme: str
) -> None:
    state, http_port, https_port, client_tls = receiver
    _name_answers_loopback(monkeypatch)
    port = https_port if scheme == "https" else http_port
    secret = new_secret()
    body = b'{"type":"order.updated","data":{"checkout_session_id":"fcs_1"}}'
    worker = _worker(client_tls)
    async with worker.sending():
        outcome = await worker.send(f"{scheme}://{NAME}:{port}/hook", [decode_secret(secret)], "msg_1_ab", body)
    assert outcome.delivered, outcome.error
    [seen] = state.seen
    assert seen["host"] == f"{NAME}:{port}"
    assert seen["sni"] == (NAME if scheme == "https" else None)
    assert seen["body"] == body
    assert Webhook(secret).verify(body, seen["headers"]) == {
        "type": "order.updated",
        "data": {"checkout_session_id": "fcs_1"},
    }


async def test_a_certificate_for_another_name_is_refused(
    receiver: tuple[Receiver, int, int, ssl.SSLContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    state, _, https_port, client_tls = receiver
    worker = _worker(client_tls)
    async with worker.sending():
        outcome = await worker.send(f"https://127.0.0.1:{https_port}/hook", [b"k" * 24], "msg_1_ab", b"{}")
    assert outcome.status is None
    assert outcome.error is not None
    assert "certificate" in outcome.error.lower()
    assert state.seen == []


async def test_a_refused_connection_says_so(receiver: tuple[Receiver, int, int, ssl.SSLContext]) -> None:
    _, _, _, client_tls = receiver
    worker = _worker(client_tls)
    async with worker.sending():
        outcome = await worker.send("http://127.0.0.1:9/hook", [b"k" * 24], "msg_1_ab", b"{}")
    assert outcome.status is None
    assert outcome.error is not None
    assert "127.0.0.1:9" in outcome.error
    assert "no answer within" not in outcome.error


async def test_a_redirect_is_not_followed(receiver: tuple[Receiver, int, int, ssl.SSLContext]) -> None:
    state, http_port, _, client_tls = receiver
    state.answer = web.Response(status=302, headers={"location": "http://169.254.169.254/latest"})
    worker = _worker(client_tls)
    async with worker.sending():
        outcome = await worker.send(f"http://127.0.0.1:{http_port}/hook", [b"k" * 24], "msg_1_ab", b"{}")
    assert outcome.status == 302
    assert outcome.error == "the receiver answered 302 (redirects are not followed)"
    assert len(state.seen) == 1


async def test_the_whole_attempt_ends_at_the_timeout(receiver: tuple[Receiver, int, int, ssl.SSLContext]) -> None:
    state, http_port, _, client_tls = receiver
    state.delay = 1.5
    worker = _worker(client_tls, timeout=0.5)
    started = asyncio.get_running_loop().time()
    async with worker.sending():
        outcome = await worker.send(f"http://127.0.0.1:{http_port}/hook", [b"k" * 24], "msg_1_ab", b"{}")
    assert outcome.status is None
    assert outcome.error == "no answer within 0.5s"
    assert asyncio.get_running_loop().time() - started < 3


async def test_an_error_reply_is_read_up_to_a_cap_and_retry_after_kept(
    receiver: tuple[Receiver, int, int, ssl.SSLContext],
) -> None:
    state, http_port, _, client_tls = receiver
    state.answer = web.Response(status=503, body=b"busy " * 200_000, headers={"retry-after": "120"})
    worker = _worker(client_tls)
    async with worker.sending():
        outcome = await worker.send(f"http://127.0.0.1:{http_port}/hook", [b"k" * 24], "msg_1_ab", b"{}")
    assert outcome.status == 503
    assert outcome.retry_after == 120
    assert outcome.error is not None
    assert outcome.error.startswith("the receiver answered 503: busy busy")
    assert len(outcome.error) < 300
