"""Entry point for `mitmdump -s addons/script.py` (what `schoolgate run` starts).

The request path as small add-ons, composed the way mitmproxy composes its
built-ins; order matters, as mitmproxy calls each hook on them in this order:
the policy first (every other add-on reads it), the Recorder last (so an add-on
before it can still change a flow's decision in `response` before it is written).
"""

from schoolgate.addons.accounting import Accounting
from schoolgate.addons.aichat import AiChatMessages
from schoolgate.addons.connections import Connections
from schoolgate.addons.content import ContentScoring
from schoolgate.addons.gateway import SchoolGate
from schoolgate.addons.health import Health
from schoolgate.addons.identify import Identification
from schoolgate.addons.judge import Judge
from schoolgate.addons.limits import Limits
from schoolgate.addons.lists import Lists
from schoolgate.addons.logformat import LogFormat
from schoolgate.addons.malformed import MalformedRequests
from schoolgate.addons.policywatch import PolicyWatch
from schoolgate.addons.portal import Portal
from schoolgate.addons.pupildirectory import PupilDirectory
from schoolgate.addons.recorder import Recorder
from schoolgate.addons.sessions import SharedSessions
from schoolgate.addons.upstream import UpstreamChain

policy = PolicyWatch()
recorder = Recorder(policy)
identification = Identification(policy, recorder)
judge = Judge(policy)
content = ContentScoring(policy, judge, recorder)

addons = [
    LogFormat(),  # first: every later add-on logs in the chosen format, from its first line
    Limits(),  # first: refuses a client over its connection cap before anything else runs; streamed bodies; quiet journal
    policy,
    Health(policy, recorder),  # /healthz, /readyz, systemd readiness; /proxy.pac asked of the gateway itself
    Lists(policy),  # category index health in the log and metrics; first-start download of the lists
    SharedSessions(policy, identification.sessions),  # sign-in sessions shared by every worker, through the database
    PupilDirectory(policy, identification),  # pupils' year groups and forms from the directory, for the DSL
    Accounting(policy, identification.sessions),  # [accounting]: Wi-Fi controllers say who is on which address
    Portal(policy, identification),  # [portal]: the sign-in page, answered before anything decides its host
    Connections(policy, identification, judge, recorder),
    MalformedRequests(policy, identification, judge, recorder),  # refused by mitmproxy before any hook: recorded
    SchoolGate(policy, identification, judge, recorder),  # the recorder's alert channels announce access requests
    content,  # after the request decision, before the Recorder: may block a response
    AiChatMessages(policy, judge, recorder, content),  # prompts sent to AI chat over WebSockets: decided, scored, recorded
    UpstreamChain(policy),  # [gateway] upstream_proxy; after the request decision (and the pupil's credentials gone)
    recorder,
]
