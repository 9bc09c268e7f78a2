"""Content scoring in the request path: read the page (or the AI answer, or the
prompt) and block or flag it by what it says, for sites no list decides.

Which responses are scored: HTML, JSON, text and server-sent-event bodies from
hosts that no list decided (the verdict's rule is the group's default), and
from hosts listed only in categories the policy names as carrying risk
(`[content] categories`: forums, blogs, chat...). Answers of the AI chat
services are always scored (over HTTP, event streams and WebSockets), and the
prompts the request path reads from their requests too.

Bounded work: only the first `max_kib` KiB of decoded content is read (gzip,
deflate, br and zstd are decoded incrementally, with bounded output, so a
compression bomb cannot grow), and each URL's score is cached for
`cache_minutes`: a blocked URL is refused before it is fetched again, and a
site with SITE_EVIDENCE pages blocked for one category has its other pages
refused too. Small bodies are buffered by mitmproxy and scored in `response`,
where a block page can replace them. Bodies that stream (larger than
`stream_large_bodies`, of unknown length, or event streams) are wrapped: an
HTML or JSON body is held back until its first `max_kib` KiB are scored, then
released or replaced by the block page; an event stream passes as it comes and
is cut, with a closing event, when its score reaches the threshold.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import brotli
from mitmproxy import http
from mitmproxy.net import encoding as mitm_encoding

from schoolgate import metrics
from schoolgate.addons.decision import Decision, Kind, Outcome, decision_of
from schoolgate.addons.judge import Judge
from schoolgate.addons.policywatch import PolicyWatch
from schoolgate.addons.recorder import Recorder
from schoolgate.addons.responses import block_response, fail_closed
from schoolgate.addons.searchterms import AI_CHAT, engine_for_host, extract_search_from_request
from schoolgate.categories.content import (
    UNTYPED,
    ContentScore,
    ContentScorer,
    ContentVerdict,
    judge,
    message_text,
    page_text,
    sniffed_type,
)
from schoolgate.categories.taxonomy import CATEGORIES, Severity
from schoolgate.decide import Rule, Verdict
from schoolgate.decrypt import scores_content
from schoolgate.flags import Flag
from schoolgate.mediatypes import charset_of, media_type
from schoolgate.policy import Action, ContentSettings, Policy
from schoolgate.records import new_reference

try:
    from compression import zstd  # Python 3.14
except ImportError:  # pragma: no cover - depends on the Python version
    from backports import zstd  # installed with mitmproxy

log = logging.getLogger("schoolgate.content")

# Bodies a person reads; images, scripts, fonts and downloads are not scored.
SCORED_TYPES = ("text/html", "application/xhtml+xml", "text/plain", "application/json", "text/event-stream")
METADATA_KEY = "schoolgate.content"  # the ContentJob of a response being scored
ANSWER_KEY = "schoolgate.content.answer"  # what an AI chat WebSocket has answered so far
# Pages of one site blocked for the same category before its other pages are blocked unread.
SITE_EVIDENCE = 3
# A passing stream is re-scored once this much has arrived, then each time it has grown by
# a quarter (and at its end): a short answer is judged early, a long one costs a few full scorings.
RESCORE_FIRST = 256
# Slices fed to brotli and zstd, whose output per call is bounded separately.
_SLICE = 4096


def scored_type(content_type: str) -> bool:
    kind = media_type(content_type)
    return kind in SCORED_TYPES or kind.endswith("+json")


def untyped(content_type: str) -> bool:
    """No usable type: a browser sniffs the body, and so does the scoring (ContentJob.typed)."""
    return media_type(content_type) in UNTYPED


# --- decoding a bounded prefix ------------------------------------------------------------

class UnsupportedEncoding(ValueError):
    pass


class BodyPrefix:
    """The first `limit` bytes of a body's decoded content, fed raw chunk by chunk.

    Output is bounded at every step (zlib max_length, brotli output_buffer_limit,
    zstd max_length), so a small compressed chunk cannot expand without limit.
    """

    def __init__(self, content_encoding: str, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.broken = False  # the encoding could not be decoded: the caller decides what that means
        coding = content_encoding.strip().lower()
        self._decode: Callable[[bytes, int], bytes]
        if coding in ("", "identity", "none"):
            self._decode = lambda chunk, room: chunk[:room]
        elif coding in ("gzip", "x-gzip", "deflate"):
            self._zlib = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header, detected
            self._raw_deflate = coding == "deflate"
            self._decode = self._zlib_decode
        elif coding == "br":
            self._brotli = brotli.Decompressor()
            self._decode = self._brotli_decode
        elif coding == "zstd":
            self._zstd = zstd.ZstdDecompressor()
            self._decode = self._zstd_decode
        else:
            raise UnsupportedEncoding(coding)

    @property
    def full(self) -> bool:
        return len(self.data) >= self.limit

    def feed(self, chunk: bytes) -> None:
        if self.full or self.broken or not chunk:
            return
        try:
            self.data += self._decode(chunk, self.limit - len(self.data))
        except (zlib.error, brotli.error, zstd.ZstdError, EOFError, ValueError) as e:
            log.debug("cannot decode body: %s", e)
            self.broken = True

    def text(self, charset: str) -> str:
        try:
            return self.data.decode(charset, errors="replace")
        except LookupError:
            return self.data.decode("utf-8", errors="replace")

    def _zlib_decode(self, chunk: bytes, room: int) -> bytes:
        try:
            return self._zlib.decompress(chunk, room)
        except zlib.error:
            if not (self._raw_deflate and not self.data):
                raise
            # Some servers send "deflate" without the zlib header (raw deflate).
            self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
            self._raw_deflate = False
            return self._zlib.decompress(chunk, room)

    def _brotli_decode(self, chunk: bytes, room: int) -> bytes:
        out = bytearray()
        for i in range(0, len(chunk), _SLICE):
            out += self._brotli.process(chunk[i:i + _SLICE], output_buffer_limit=room - len(out))
            if len(out) >= room:
                break
        return bytes(out[:room])

    def _zstd_decode(self, chunk: bytes, room: int) -> bytes:
        out = bytearray()
        for i in range(0, len(chunk), _SLICE):
            out += self._zstd.decompress(chunk[i:i + _SLICE], max_length=room - len(out))
            if len(out) >= room or self._zstd.eof:
                break
        return bytes(out[:room])


# --- the score cache --------------------------------------------------------------------

class ScoreCache:
    """Scores of recently scored URLs (not verdicts: thresholds differ by group), LRU with a
    TTL; and per site, the SITE_EVIDENCE strongest of them in each category, so that a site
    whose pages keep being blocked can be recognised in constant time, however many of its
    pages are remembered."""

    def __init__(self, ttl_seconds: float, size: int = 20_000) -> None:
        self.ttl = ttl_seconds
        self.size = size
        self._entries: OrderedDict[str, tuple[float, str, ContentScore]] = OrderedDict()
        # host -> category -> [(score, url)], strongest first, at most SITE_EVIDENCE long
        self._strongest: dict[str, dict[str, list[tuple[int, str]]]] = {}

    def get(self, url: str) -> ContentScore | None:
        entry = self._entries.get(url)
        if entry is None:
            return None
        if time.monotonic() - entry[0] > self.ttl:
            self._forget(url)
            return None
        self._entries.move_to_end(url)
        return entry[2]

    def put(self, url: str, host: str, score: ContentScore) -> None:
        if self.ttl <= 0:
            return
        if url in self._entries:
            self._forget(url)
        self._entries[url] = (time.monotonic(), host, score)
        if score.top is not None:
            category, value = score.top
            strongest = self._strongest.setdefault(host, {}).setdefault(category, [])
            strongest.append((value, url))
            strongest.sort(reverse=True)
            del strongest[SITE_EVIDENCE:]
        while len(self._entries) > self.size:
            self._forget(next(iter(self._entries)))

    def strongest(self, host: str) -> dict[str, list[ContentScore]]:
        """Per category, the remembered scores of the host's strongest pages in it."""
        found: dict[str, list[ContentScore]] = {}
        for category, pages in list(self._strongest.get(host, {}).items()):
            scores = [score for _, url in list(pages) if (score := self.get(url)) is not None]
            if scores:
                found[category] = scores
        return found

    def _forget(self, url: str) -> None:
        _, host, score = self._entries.pop(url)
        if score.top is None:
            return
        by_category = self._strongest.get(host, {})
        pages = by_category.get(score.top[0], [])
        pages[:] = [page for page in pages if page[1] != url]
        if not pages:
            by_category.pop(score.top[0], None)
        if not by_category:
            self._strongest.pop(host, None)


# --- one response being scored ------------------------------------------------------------

@dataclass(slots=True)
class ContentJob:
    """A response chosen for scoring, and what came of it."""

    url: str
    content_type: str
    block_at: int
    flag_at: int
    score: ContentScore | None = None
    verdict: ContentVerdict | None = None
    # Only a page fetched by address says the same next time: an AI chat endpoint, or a POST,
    # answers something new each time, so its score is neither remembered nor reused.
    cacheable: bool = True
    untyped: bool = False  # sent with no usable Content-Type: the body's first bytes say (typed)

    def typed(self, head: bytes) -> bool:
        """Whether the body is read: an untyped one takes the type a browser would sniff from
        `head`, and is not read when that is neither HTML nor text (an image, a download)."""
        if self.untyped:
            kind = sniffed_type(head)
            if kind is None:
                return False
            self.content_type, self.untyped = kind, False
        return True

    def judge(self, score: ContentScore) -> ContentVerdict:
        self.score = score
        self.verdict = judge(score, block_at=self.block_at, flag_at=self.flag_at)
        return self.verdict


class ScoredStream:
    """`flow.response.stream` for a response being scored as it streams.

    held (HTML, JSON, text): nothing reaches the client until the first
    `limit` bytes are scored (or the body ends); then the held chunks are released,
    or replaced by `block_body` and the rest of the body is dropped.
    passing (event streams): chunks pass as they come; as the text grows (RESCORE_FIRST)
    it is scored again, and a block sends `block_body` and drops the rest.
    A body that cannot be decoded is replaced as a blocked one is (`block_body(True)`).
    Empty chunks are never handed on: to an HTTP/1.1 client an empty chunk ends the body.
    """

    def __init__(self, job: ContentJob, prefix: BodyPrefix, score: Callable[[str], ContentScore],
                 block_body: Callable[[bool], bytes], *, hold: bool,
                 then: Callable[[bytes], bytes | Iterable[bytes]] | None = None) -> None:
        self.job = job
        self.prefix = prefix
        self._score = score
        self._block_body = block_body  # called with unreadable=True when the body could not be decoded
        self.hold = hold
        self._then = then  # another add-on's stream function, which sees what we let through
        self._held: list[bytes] = []
        self._scored_at = 0
        self.blocked = False
        self.passed = False

    def __call__(self, data: bytes) -> list[bytes]:
        end = data == b""
        if self.blocked:
            return self._onward([], end)
        if self.passed:
            return self._onward([data], end)
        self.prefix.feed(data)
        if self.hold:
            self._held.append(data)
            if not (end or self.prefix.full or self.prefix.broken):
                return []
            out, self._held = self._held, []
            return self._onward(self._decide(out, final=True), end)
        grown = len(self.prefix.data) - self._scored_at >= max(RESCORE_FIRST, self._scored_at // 4)
        if end or self.prefix.full or self.prefix.broken or grown:
            return self._onward(self._decide([data], final=end or self.prefix.full), end)
        return self._onward([data], end)

    def _decide(self, out: list[bytes], *, final: bool) -> list[bytes]:
        self._scored_at = len(self.prefix.data)
        if self.prefix.broken:
            self.blocked = True
            return [self._block_body(True)]
        if not self.job.typed(bytes(self.prefix.data)):
            self.passed = True
            return out
        verdict = self.job.judge(self._score(self.prefix.text(charset_of(self.job.content_type))))
        if verdict.blocks:
            self.blocked = True
            return [self._block_body(False)]
        if final:
            self.passed = True
        return out

    def _onward(self, chunks: list[bytes], end: bool) -> list[bytes]:
        if self._then is not None:
            onward: list[bytes] = []
            for chunk in [c for c in chunks if c] + ([b""] if end else []):  # it is told of the end as mitmproxy tells us
                result = self._then(chunk)
                onward.extend([result] if isinstance(result, bytes) else result)
            chunks = onward
        return [c for c in chunks if c]


def make_length_flexible(flow: http.HTTPFlow) -> None:
    """Let a streamed body be replaced by one of another length: to an HTTP/1.1 client the
    answer goes out chunked (whatever the server spoke); HTTP/2 and 3 need no length header."""
    response = flow.response
    assert response is not None
    if "content-length" in response.headers:
        del response.headers["content-length"]
    if flow.request.http_version == "HTTP/1.1" and "chunked" not in response.headers.get("transfer-encoding", "").lower():
        response.headers["transfer-encoding"] = "chunked"


def encoded(body: bytes, content_encoding: str) -> bytes:
    """A replacement body in the encoding the client was already told about."""
    coding = content_encoding.strip().lower()
    if coding in ("", "identity", "none"):
        return body
    return mitm_encoding.encode(body, "gzip" if coding == "x-gzip" else coding)



@dataclass(slots=True)
class _Answer:
    """The text an AI chat has sent over one WebSocket so far (up to `limit` characters)."""

    job: ContentJob
    limit: int
    pieces: list[str] = field(default_factory=list)
    size: int = 0
    scored_at: int = 0
    flagged: bool = False  # a flag is recorded once per conversation

    def add(self, text: str) -> bool:
        """Keep the text; whether it is time to score again (same schedule as event streams)."""
        room = self.limit - self.size
        if room <= 0 or not text:
            return False
        self.pieces.append(text[:room])
        self.size += min(len(text), room)
        if self.size - self.scored_at < max(RESCORE_FIRST, self.scored_at // 4) and self.size < self.limit:
            return False
        self.scored_at = self.size
        return True

    @property
    def text(self) -> str:
        return "".join(self.pieces)


# --- the add-on ---------------------------------------------------------------------------

def content_flag(verdict: ContentVerdict, minimum: Severity) -> Flag | None:
    """The DSL's flag for a page that scored: the category's full severity when it was
    blocked, one step lower when it only reached the flag threshold."""
    if verdict.action == "pass" or verdict.category is None:
        return None
    category = CATEGORIES[verdict.category]
    severity = category.severity if verdict.blocks else Severity(max(Severity.LOW, category.severity - 1))
    if severity < minimum or category.heading is None:
        return None
    return Flag(category.heading, severity, f"page text scored {verdict.detail}")


def _what(decision: Decision) -> str:
    """What a response is called in reasons and notes."""
    return "answer" if engine_for_host(decision.target.host) in AI_CHAT else "page"


def _worse(a: Flag | None, b: Flag | None) -> Flag | None:
    if a is None or b is None:
        return a or b
    return b if b.severity > a.severity else a


class ContentScoring:
    """Scores what pages, AI answers and AI prompts say, and blocks or flags them.

    In addons/script.py after the add-on that decides requests (it reads each flow's
    Decision) and before the Recorder (it may still turn an allowed response into a block).
    Answers that AI chat services send over WebSockets (Copilot, character.ai) are read as
    they come too; one that reaches the block threshold is stopped there, the chat closed,
    and the attempt recorded on its own.
    """

    def __init__(self, policy: PolicyWatch, judge: Judge, recorder: Recorder) -> None:
        self.policy = policy
        self.judge = judge  # for the answers of AI chat WebSockets, each recorded on its own
        self.recorder = recorder
        self._scorer: tuple[Policy | None, ContentScorer] | None = None
        self.cache = ScoreCache(ContentSettings().cache_minutes * 60)

    # --- what to score -------------------------------------------------------------

    def settings(self) -> ContentSettings:
        engine = self.policy.engine
        assert engine is not None
        settings = engine.policy.content
        self.cache.ttl = settings.cache_minutes * 60
        return settings

    def scorer(self) -> ContentScorer:
        """The shipped phrase lists plus the school's (`[content] phrase_files`), compiled once per
        loaded policy: an edit to a phrase file reloads the policy, so it is compiled again."""
        policy = self.policy.engine.policy if self.policy.engine else None
        if self._scorer is None or self._scorer[0] is not policy:
            files = self.settings().phrase_files
            self._scorer = (policy, ContentScorer.load(files) if files else ContentScorer.default())
        return self._scorer[1]

    def _wants(self, flow: http.HTTPFlow, decision: Decision | None, settings: ContentSettings) -> bool:
        """Whether this allowed flow's content is for scoring: a site no list decided, a
        listed site in a category that carries risk, or an AI chat service."""
        if decision is None or decision.kind is not Kind.HTTP or decision.refused or not settings.enabled:
            return False
        if decision.outcome not in (Outcome.ALLOW, Outcome.MONITOR):
            return False  # a warning page, or a block page of our own
        return scores_content(decision.target.host, decision.verdict, decision.who.group, settings)

    def _job(self, flow: http.HTTPFlow, decision: Decision, settings: ContentSettings) -> ContentJob:
        block_at, flag_at = settings.thresholds(decision.who.group)
        url = flow.request.pretty_url
        content_type = flow.response.headers.get("content-type", "") if flow.response else ""
        cacheable = flow.request.method == "GET" and engine_for_host(decision.target.host) not in AI_CHAT
        return ContentJob(url, content_type, block_at, flag_at, cacheable=cacheable)

    # --- prompts ---------------------------------------------------------------------

    @fail_closed
    def request(self, flow: http.HTTPFlow) -> None:
        """A prompt to an AI chat service (read as a search term by the request path) is
        scored like a page; a page-level score blocks it before it is sent. A page
        already blocked by content in the last `cache_minutes` is blocked at once."""
        decision = decision_of(flow)
        if flow.response is not None or decision is None:
            return
        settings = self.settings()
        if not self._wants(flow, decision, settings):
            return
        job = self._job(flow, decision, settings)
        if engine_for_host(decision.target.host) in AI_CHAT:
            # Read here too when search terms are not recorded ([monitoring] search_terms = false).
            request = flow.request
            prompt = decision.search or extract_search_from_request(
                decision.target, request.method, request.headers.get("content-type"), request.raw_content or b"")
            if prompt is not None:
                self._apply(flow, decision, job, self._score(prompt.query), what="prompt")
            return
        if not job.cacheable:
            return
        cached = self.cache.get(job.url)
        if cached is not None and job.judge(cached).blocks:
            self._apply(flow, decision, job, cached, what="page (remembered)", cached=True)
            return
        site = self._site_verdict(decision.target.host, job)
        if site is not None:
            self._apply(flow, decision, job, site[0], what=f"site ({site[1]} of its pages blocked lately)", cached=True)

    def score_prompt(self, flow: http.HTTPFlow, opening: Decision, decision: Decision, prompt: str) -> None:
        """A prompt sent over an AI chat's WebSocket (`opening`: the decision on the upgrade;
        `decision`: the prompt's own): scored like one sent over HTTP, the flag or block put
        on `decision` (AiChatMessages records it, and closes the chat on a block)."""
        settings = self.settings()
        if self._wants(flow, opening, settings):
            self._apply(flow, decision, self._job(flow, opening, settings), self._score(prompt), what="prompt",
                        replace_response=False)

    def _site_verdict(self, host: str, job: ContentJob) -> tuple[ContentScore, int] | None:
        """The strongest of a site's remembered pages, when SITE_EVIDENCE of them block for one category."""
        for scores in self.cache.strongest(host).values():
            blocking = [score for score in scores if judge(score, block_at=job.block_at, flag_at=job.flag_at).blocks]
            if len(blocking) >= SITE_EVIDENCE:
                return blocking[0], len(blocking)
        return None

    # --- responses -------------------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        # Not fail_closed: a response set at this point would be filled with the site's body
        # as it arrives. Killing the flow is what keeps it from the client.
        try:
            self._prepare(flow)
        except Exception:
            log.exception("schoolgate could not prepare a response for checking; refused")
            metrics.DECISION_ERRORS.inc()
            decision = decision_of(flow)
            if decision is not None:
                decision.block(replace(decision.verdict, action=Action.BLOCK), "the filter failed while checking the page")
            flow.kill()

    def _prepare(self, flow: http.HTTPFlow) -> None:
        """Choose whether to score this response, and wrap its stream if it will stream."""
        decision = decision_of(flow)
        response = flow.response
        if response is None or decision is None or flow.metadata.get(METADATA_KEY) is not None:
            return
        settings = self.settings()
        content_type = response.headers.get("content-type", "")
        if not self._wants(flow, decision, settings) or not (scored_type(content_type) or untyped(content_type)):
            return
        job = self._job(flow, decision, settings)
        job.untyped = untyped(content_type)
        cached = self.cache.get(job.url) if job.cacheable else None
        if cached is not None and not job.judge(cached).blocks:
            self._apply(flow, decision, job, cached, what="page (remembered)", cached=True)
            return
        flow.metadata[METADATA_KEY] = job
        job.verdict = None
        event_stream = media_type(response.headers.get("content-type")) == "text/event-stream"
        length = response.headers.get("content-length", "")
        if not (response.stream or event_stream or not length.isdigit()):
            return  # buffered by mitmproxy: scored whole in `response`, where a block page can replace it
        # It will stream (large, of unknown length, or events): score it as it passes.
        try:
            prefix = BodyPrefix(response.headers.get("content-encoding", ""), settings.max_kib * 1024)
        except UnsupportedEncoding:
            self._refuse_unreadable(decision, job)
            flow.kill()  # bytes we cannot read are not passed on, and the headers are not sent yet
            return
        scorer = self.scorer()
        make_length_flexible(flow)
        response.stream = ScoredStream(
            job, prefix, lambda text: self._score(text, job.content_type, scorer),
            lambda unreadable: self._streamed_block(flow, decision, job, unreadable), hold=not event_stream,
            then=response.stream if callable(response.stream) else None)

    @fail_closed
    def response(self, flow: http.HTTPFlow) -> None:
        job: ContentJob | None = flow.metadata.get(METADATA_KEY)
        decision = decision_of(flow)
        if job is None or decision is None or flow.response is None or decision.recorded:
            return
        if isinstance(flow.response.stream, ScoredStream):
            if job.score is not None:
                self._remember(job, decision.target.host, job.score)
                if not flow.response.stream.blocked:
                    self._apply(flow, decision, job, job.score, what=_what(decision), replace_response=False)
            return
        try:
            prefix = BodyPrefix(flow.response.headers.get("content-encoding", ""), self.settings().max_kib * 1024)
        except UnsupportedEncoding:
            prefix = None
        if prefix is not None:
            prefix.feed(flow.response.raw_content or b"")
        if prefix is None or prefix.broken:
            self._refuse_unreadable(decision, job)
            flow.response = self._block_page(flow, decision)
            return
        if not job.typed(bytes(prefix.data)):
            return
        score = self._score(prefix.text(charset_of(job.content_type)), job.content_type)
        self._remember(job, decision.target.host, score)
        self._apply(flow, decision, job, score, what=_what(decision))

    def _remember(self, job: ContentJob, host: str, score: ContentScore) -> None:
        if job.cacheable:
            self.cache.put(job.url, host, score)

    # --- AI answers over WebSockets ---------------------------------------------------

    @fail_closed
    def websocket_message(self, flow: http.HTTPFlow) -> None:
        assert flow.websocket is not None
        message = flow.websocket.messages[-1]
        opening = decision_of(flow)  # the decision on the upgrade request
        if message.from_client or opening is None or engine_for_host(opening.target.host) not in AI_CHAT:
            return
        settings = self.settings()
        if not self._wants(flow, opening, settings):
            return
        answer: _Answer | None = flow.metadata.get(ANSWER_KEY)
        if answer is None:
            block_at, flag_at = settings.thresholds(opening.who.group)
            answer = flow.metadata[ANSWER_KEY] = _Answer(ContentJob(flow.request.pretty_url, "", block_at, flag_at),
                                                         settings.max_kib * 1024)
        if not answer.add(message_text(message.text if message.is_text else message.content.decode("utf-8", "replace"))):
            return
        verdict = answer.job.judge(self._score(answer.text))
        if verdict.action == "pass" or (verdict.action == "flag" and answer.flagged):
            return
        answer.flagged = True
        decision = self.judge.decide(opening.who, opening.target, method="WEBSOCKET", url=opening.url)
        assert answer.job.score is not None
        self._apply(flow, decision, answer.job, answer.job.score, what="answer", replace_response=False)
        self.recorder.record(decision, bytes_out=answer.size)
        if verdict.blocks:
            message.drop()
            flow.kill()

    # --- acting on a verdict ------------------------------------------------------------

    def _score(self, text: str, content_type: str = "", scorer: ContentScorer | None = None) -> ContentScore:
        """The score of a body's text (or a prompt's, with no type), timed for the metrics."""
        started = time.perf_counter()
        score = (scorer or self.scorer()).score(page_text(text, content_type) if content_type else text)
        metrics.CONTENT_SECONDS.observe(time.perf_counter() - started)
        return score

    def _apply(self, flow: http.HTTPFlow, decision: Decision, job: ContentJob, score: ContentScore, *,
               what: str, replace_response: bool = True, cached: bool = False) -> None:
        """Record the phrases behind a flag or block on the decision; a block also puts
        the block page in place of the response (when it has not been sent yet)."""
        verdict = job.judge(score)
        metrics.CONTENT_SCORED.labels("cached" if cached else verdict.action).inc()
        engine = self.policy.engine
        assert engine is not None
        flag = content_flag(verdict, engine.policy.monitoring.flag_min_severity)
        if verdict.action == "pass" or (not verdict.blocks and flag is None):
            return  # nothing to act on, or a flag under [monitoring] flag_min_severity
        if not verdict.blocks:
            decision.verdict = replace(decision.verdict, flag=_worse(decision.verdict.flag, flag))
            decision.note = f"content flagged: {what}"
            return
        assert verdict.category is not None
        title = CATEGORIES[verdict.category].title
        decision.block(Verdict(
            action=Action.BLOCK, rule=Rule.CONTENT, group=decision.who.group.name,
            reason=f"the {what}'s words read as {title} (score {verdict.score}, blocked from {job.block_at})",
            categories=tuple(dict.fromkeys((verdict.category, *decision.verdict.categories))),
            matched=verdict.detail, source="content phrase lists", category=verdict.category,
            flag=_worse(decision.verdict.flag, flag),
        ))
        if replace_response:
            flow.response = self._block_page(flow, decision)

    def _block_page(self, flow: http.HTTPFlow, decision: Decision) -> http.Response:
        engine, signer = self.policy.engine, self.policy.signer
        assert engine is not None and signer is not None
        return block_response(decision, flow.request.pretty_url, engine.policy, signer)

    def _streamed_block(self, flow: http.HTTPFlow, decision: Decision, job: ContentJob, unreadable: bool) -> bytes:
        """What the client gets instead of the rest of a streamed body: the block page (in
        the encoding its headers announced), or for an event stream a closing event."""
        assert flow.response is not None
        if unreadable:
            self._refuse_unreadable(decision, job)
        else:
            assert job.score is not None
            self._apply(flow, decision, job, job.score, what=_what(decision), replace_response=False)
        response = flow.response
        if media_type(response.headers.get("content-type")) == "text/event-stream":
            decision.reference = decision.reference or new_reference()
            message = json.dumps({"error": {"message": "The school's web filter stopped this answer.",
                                            "reference": decision.reference}})
            return f"event: error\ndata: {message}\n\n".encode()
        page = self._block_page(flow, decision).content or b""
        return encoded(page, response.headers.get("content-encoding", ""))

    def _refuse_unreadable(self, decision: Decision, job: ContentJob) -> None:
        """A body in an encoding we cannot decode is not shown: it could not be checked."""
        job.verdict = ContentVerdict("block", None, 0, "a body that could not be decoded")
        decision.block(replace(decision.verdict, action=Action.BLOCK, rule=Rule.CONTENT,
                               reason="the page could not be read to check it", matched="undecodable body"))
