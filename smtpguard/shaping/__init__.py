"""Traffic shaping: per-site limits, pacing and feedback for outbound delivery.

A *site* is where mail goes after routing: a provider (every domain whose MX
ends in one suffix), one unknown MX set, or the smarthost. Limits are data
(a shipped TOML file overlaid by the operator's); rates are token buckets
behind :class:`~smtpguard.shaping.budget.RateBudget`, local to this process by
default or shared by a fleet through Redis (``shaping.shared``).
"""
