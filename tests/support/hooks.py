"""The request path's add-ons composed as addons/script.py composes them, for hook tests
pinned in milliseconds with mitmproxy's own taddons and tflow: a real policy file, and a
recorder whose writer keeps records in a list (the end-to-end tests use the database)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from mitmproxy import connection, http
from mitmproxy.test import taddons, tflow

from schoolgate.addons.aichat import AiChatMessages
from schoolgate.addons.connections import Connections
from schoolgate.addons.content import ContentScoring
from schoolgate.addons.gateway import SchoolGate
from schoolgate.addons.identify import Identification
from schoolgate.addons.judge import Judge
from schoolgate.addons.policywatch import PolicyWatch
from schoolgate.addons.recorder import Recorder


class ListWriter:
    def __init__(self) -> None:
        self.records: list = []

    def submit(self, record: Any) -> None:
        self.records.append(record)


@contextlib.contextmanager
def hook_stack(tmp_path: Path, policy_text: str) -> Iterator[SimpleNamespace]:
    """The add-ons with `{dir}` in the policy text standing for tmp_path."""
    path = tmp_path / "policy.toml"
    path.write_text(policy_text.replace("{dir}", str(tmp_path)))
    policy = PolicyWatch()
    recorder = Recorder(policy)
    identification = Identification(policy, recorder)
    judge = Judge(policy)
    connections = Connections(policy, identification, judge, recorder)
    gate = SchoolGate(policy, identification, judge)
    chat = AiChatMessages(policy, judge, recorder, ContentScoring(policy, judge, recorder))
    with taddons.context(policy, connections, gate, chat, recorder) as tctx:
        tctx.configure(policy, schoolgate_policy=str(path))
        tctx.configure(recorder)
        recorder.writer = ListWriter()
        yield SimpleNamespace(policy=policy, connections=connections, gate=gate, chat=chat, recorder=recorder,
                              records=recorder.writer.records, tctx=tctx)


def client(ip: str = "10.1.2.3") -> connection.Client:
    conn = tflow.tclient_conn()
    conn.peername, conn.sockname, conn.sni = (ip, 50000), ("10.0.0.1", 8080), None
    return conn


def request_flow(url: str, method: str = "GET", content: bytes = b"", *, ip: str = "10.1.2.3",
                 **headers: str) -> http.HTTPFlow:
    return tflow.tflow(client_conn=client(ip), req=http.Request.make(method, url, content, headers=headers))


def run(hook_result: Any) -> Any:
    """Await what a hook handed back, as mitmproxy does."""
    if inspect.isawaitable(hook_result):
        return asyncio.new_event_loop().run_until_complete(hook_result)
    return hook_result
