"""Prometheus metrics of the milter and the policy service (label ``service``).

Each runs in its own process with its own ``/metrics`` endpoint
(``milter.metrics_listen``, ``policy_service.metrics_listen``), so the two share the
metric names and the label tells them apart in a dashboard. Labelled children are
bound once: a labelled child costs a dict lookup and a lock per use otherwise.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from smtpguard.policy.metrics import SUPPRESSION_HITS
from smtpguard.postfix.answers import Answer

SERVICES = ("milter", "policy")
#: Answers that refuse (or drop) a recipient.
REFUSALS = ("reject", "tempfail", "discard")
#: What can go wrong; ``lookup``: the recipient check failed; ``record``: a bounce
#: could not be recorded in time; ``malformed`` / ``oversized``: a policy request;
#: ``busy``: a policy connection over ``policy_service.max_connections``; ``non_smtp``: a
#: refusal Postfix does not allow for locally submitted mail (the recipient passes);
#: ``rewrite``: the envelope sender could not be signed (the message left unsigned).
ERROR_KINDS = (
    "lookup", "record", "malformed", "oversized", "busy", "internal", "non_smtp", "rewrite",
)  # fmt: skip

_REQUESTS = Counter(
    "smtpguard_postfix_requests_total", "Recipient checks asked by Postfix.", ["service"]
)
_REJECTIONS = Counter(
    "smtpguard_postfix_rejections_total",
    "Recipients refused or dropped (reject, tempfail, discard).",
    ["service", "answer"],
)
_ERRORS = Counter(
    "smtpguard_postfix_errors_total",
    "Requests answered with the configured on_error action, by what went wrong.",
    ["service", "kind"],
)
_LATENCY = Histogram(
    "smtpguard_postfix_check_seconds",
    "Time to answer one recipient check (lookup included).",
    ["service"],
    buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0),
)
BOUNCES = Counter(
    "smtpguard_milter_bounces_total",
    "Verdicts from incoming bounces handed to the verdict sink, by evidence and outcome.",
    ["evidence", "outcome"],
)
REWRITES = Counter(
    "smtpguard_milter_rewrites_total",
    "Outgoing messages whose envelope sender the milter signed (rewritten), or left alone"
    " because they have several recipients (several_recipients) or it failed (failed).",
    ["result"],
)
REWRITE_RESULTS = {r: REWRITES.labels(r) for r in ("rewritten", "several_recipients", "failed")}
POLICY_CONNECTIONS = Gauge(
    "smtpguard_policy_connections", "Postfix connections to the policy service open now."
)


class ServiceMetrics:
    """The counters of one service, children bound once."""

    def __init__(self, service: str) -> None:
        self.requests = _REQUESTS.labels(service)
        self.rejections = {a: _REJECTIONS.labels(service, a) for a in REFUSALS}
        self.errors = {k: _ERRORS.labels(service, k) for k in ERROR_KINDS}
        self.latency = _LATENCY.labels(service)

    def answered(self, answer: Answer) -> None:
        """Count one answer, and the suppression list's hit behind it."""
        if answer.verb in self.rejections:
            self.rejections[answer.verb].inc()
        if answer.hit is not None:
            SUPPRESSION_HITS.labels(answer.hit or "unknown").inc()
