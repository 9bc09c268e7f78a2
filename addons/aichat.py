"""Prompts sent to AI chat services over WebSockets (Copilot, character.ai): each
one a pupil sends is a search term, decided and recorded as an access attempt of
its own, so the DSL sees them as they see searches; a prompt severe enough to block
(`[monitoring] block_searches_at`) is not passed on and the chat is closed. Each is
also scored with the content phrase lists, as prompts sent over HTTP are, whether or
not search terms are recorded (`[monitoring] search_terms`): a prompt that scores is
recorded, and one that blocks closes the chat.

Prompts sent in HTTP request bodies (ChatGPT, Claude, Gemini...) are read by the
request hook (addons/gateway.py) through the same extractor.
"""

from __future__ import annotations

from mitmproxy import http

from schoolgate.addons.content import ContentScoring
from schoolgate.addons.decision import decision_of
from schoolgate.addons.judge import Judge
from schoolgate.addons.policywatch import PolicyWatch
from schoolgate.addons.recorder import Recorder
from schoolgate.addons.responses import fail_closed
from schoolgate.addons.searchterms import extract_prompt_from_message
from schoolgate.categories.lexicon import RiskLexicon


class AiChatMessages:
    def __init__(self, policy: PolicyWatch, judge: Judge, recorder: Recorder, content: ContentScoring) -> None:
        self.policy = policy
        self.content = content
        self.judge = judge
        self.recorder = recorder
        self.lexicon = RiskLexicon.default()

    @fail_closed
    def websocket_message(self, flow: http.HTTPFlow) -> None:
        assert flow.websocket is not None
        message = flow.websocket.messages[-1]
        opening = decision_of(flow)  # the decision on the upgrade request
        engine = self.policy.engine
        if not message.from_client or opening is None or engine is None:
            return
        prompt = extract_prompt_from_message(opening.target, message.content)
        if prompt is None:
            return
        searches = engine.policy.monitoring.search_terms
        search = prompt if searches else None
        decision = self.judge.decide(opening.who, opening.target, method="WEBSOCKET", search=search,
                                     search_hit=self.lexicon.worst(prompt.query) if searches else None, url=opening.url)
        decided = decision.verdict
        self.content.score_prompt(flow, opening, decision, prompt.query)
        if not searches and decision.verdict is decided:
            return  # no search terms kept, and the phrase lists found nothing in the prompt
        self.recorder.record(decision, bytes_in=len(message.content))
        if decision.refused:
            message.drop()
            flow.kill()
