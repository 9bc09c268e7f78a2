"""Prompts sent to AI chat services over WebSockets (Copilot, character.ai): each
one a pupil sends is a search term, decided and recorded as an access attempt of
its own, so the DSL sees them as they see searches; a prompt severe enough to block
(`[monitoring] block_searches_at`) is not passed on and the chat is closed.

Prompts sent in HTTP request bodies (ChatGPT, Claude, Gemini...) are read by the
request hook (addons/gateway.py) through the same extractor.
"""

from __future__ import annotations

from mitmproxy import http

from schoolgate.addons.decision import decision_of
from schoolgate.addons.judge import Judge
from schoolgate.addons.policywatch import PolicyWatch
from schoolgate.addons.recorder import Recorder
from schoolgate.addons.responses import fail_closed
from schoolgate.addons.searchterms import extract_prompt_from_message
from schoolgate.categories.lexicon import RiskLexicon


class AiChatMessages:
    def __init__(self, policy: PolicyWatch, judge: Judge, recorder: Recorder) -> None:
        self.policy = policy
        self.judge = judge
        self.recorder = recorder
        self.lexicon = RiskLexicon.default()

    @fail_closed
    def websocket_message(self, flow: http.HTTPFlow) -> None:
        assert flow.websocket is not None
        message = flow.websocket.messages[-1]
        opening = decision_of(flow)  # the decision on the upgrade request
        engine = self.policy.engine
        if not message.from_client or opening is None or engine is None or not engine.policy.monitoring.search_terms:
            return
        search = extract_prompt_from_message(opening.target, message.content)
        if search is None:
            return
        decision = self.judge.decide(opening.who, opening.target, method="WEBSOCKET", search=search,
                                     search_hit=self.lexicon.worst(search.query), url=opening.url)
        self.recorder.record(decision, bytes_in=len(message.content))
        if decision.refused:
            message.drop()
            flow.kill()
