"""Loopback receivers for alert tests: a minimal SMTP sink and an HTTP webhook
receiver, both asyncio servers on 127.0.0.1 that record what they were sent."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any, Self


class _LoopbackServer:
    """An asyncio server on 127.0.0.1 (a free port unless given); subclasses `_serve` one connection."""

    def __init__(self) -> None:
        self.received = asyncio.Event()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self, port: int = 0) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class SmtpSink(_LoopbackServer):
    """Enough SMTP (RFC 5321) for smtplib: greets, accepts any envelope, stores DATA."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[EmailMessage] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 sink ESMTP\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"DATA":
                writer.write(b"354 end with .\r\n")
                await writer.drain()
                lines = []
                while (data := await reader.readline()) not in (b".\r\n", b""):
                    lines.append(data[1:] if data.startswith(b"..") else data)
                message = message_from_bytes(b"".join(lines), policy=policy.default)
                assert isinstance(message, EmailMessage)
                self.messages.append(message)
                self.received.set()
                writer.write(b"250 queued\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:  # EHLO, MAIL, RCPT, RSET, NOOP
                writer.write(b"250 ok\r\n")
            await writer.drain()
        await writer.drain()
        writer.close()


class WebhookReceiver(_LoopbackServer):
    """HTTP/1.1 server recording each request's path and JSON body; answers `status`."""

    def __init__(self, status: int = 200) -> None:
        super().__init__()
        self.status = status
        self.requests: list[tuple[str, dict[str, Any]]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook?token=s3cret"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request_line = (await reader.readline()).decode()
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        if self.status < 300:
            self.requests.append((request_line.split(" ")[1], json.loads(body)))
            self.received.set()
        writer.write(f"HTTP/1.1 {self.status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        writer.close()


def free_port() -> int:
    """A loopback port nothing is listening on (yet)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served_from_a_thread[R: (SmtpSink, WebhookReceiver)](receiver: R) -> Iterator[R]:
    """An asyncio loopback receiver served from its own thread, so sync tests, CLIs and gateways can reach it."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    started = asyncio.run_coroutine_threadsafe(receiver.start(), loop).result(10)
    try:
        yield started
    finally:
        asyncio.run_coroutine_threadsafe(receiver.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
