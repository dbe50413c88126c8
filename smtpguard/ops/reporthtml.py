"""The report as one self-contained HTML page: inline CSS, inline SVG charts, no scripts.

Mailed, archived or opened from a file share years later, the page shows the
same thing: it loads nothing (no external style sheet, font, image or script;
no ``url(...)``), needs no JavaScript (a bar's exact number is in its SVG
``<title>``, which browsers show on hover, and every chart has a table with the
numbers below it). Every value from the database is HTML-escaped where it is
written (:func:`e`), so a reason or domain holding ``<script>`` is text.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from smtpguard.ops.report import Counts, Report
from smtpguard.store.db import iso

#: Series colours (colour-blind safe: Okabe-Ito).
COLORS = {
    "sent": "#009E73", "deferred": "#E69F00", "bounced": "#D55E00", "expired": "#999999",
    "suppressed": "#0072B2", "complaints": "#CC79A7", "added": "#D55E00",
    "removed": "#009E73", "all": "#000000",
}  # fmt: skip
LINE_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0 1em; }
th, td { padding: .2em .6em; border-bottom: 1px solid #ddd; }
th { text-align: left; background: #f4f4f4; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #666; }
.legend span { margin-right: 1.2em; white-space: nowrap; }
.sw { display: inline-block; width: .8em; height: .8em; margin-right: .3em;
      vertical-align: middle; }
svg text { font: 11px system-ui, sans-serif; fill: #444; }
"""


def e(value: object) -> str:
    """Escape for HTML text and attribute values."""
    return html.escape(str(value), quote=True)


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{100 * rate:.2f}%"


def _legend(names: Sequence[tuple[str, str]]) -> str:
    items = "".join(
        f'<span><i class="sw" style="background:{color}"></i>{e(name)}</span>'
        for name, color in names
    )
    return f'<p class="legend">{items}</p>'


# --------------------------------------------------------------------------- charts


W, H, LEFT, BOTTOM, TOP = 900, 240, 56, 24, 10


def _frame(top_label: str, days: Sequence[str], body: str) -> str:
    """An SVG chart area with a y-axis top label and day labels along x."""
    plot_w = W - LEFT - 10
    step = plot_w / max(len(days), 1)
    labels = []
    every = max(1, len(days) // 15)
    for i, day in enumerate(days):
        if i % every == 0:
            x = LEFT + step * (i + 0.5)
            labels.append(f'<text x="{x:.1f}" y="{H - 6}" text-anchor="middle">{e(day[5:])}</text>')
    axis = (
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{H - BOTTOM}" stroke="#999"/>'
        f'<line x1="{LEFT}" y1="{H - BOTTOM}" x2="{W - 10}" y2="{H - BOTTOM}" stroke="#999"/>'
        f'<text x="{LEFT - 4}" y="{TOP + 8}" text-anchor="end">{e(top_label)}</text>'
        f'<text x="{LEFT - 4}" y="{H - BOTTOM}" text-anchor="end">0</text>'
    )
    return (
        f'<svg viewBox="0 0 {W} {H}" width="{W}" height="{H}"'
        f' role="img">{axis}{body}{"".join(labels)}</svg>'
    )


def stacked_days(days: Sequence[str], rows: Sequence[Any], series: Sequence[str]) -> str:
    """Stacked bars per day of the ``series`` attributes of ``rows`` (one row per day)."""
    top = max((sum(getattr(c, s) for s in series) for c in rows), default=0) or 1
    plot_h = H - BOTTOM - TOP
    step = (W - LEFT - 10) / max(len(days), 1)
    bars = []
    for i, (day, c) in enumerate(zip(days, rows, strict=True)):
        y = H - BOTTOM
        x = LEFT + step * i + step * 0.15
        for s in series:
            n = getattr(c, s)
            if not n:
                continue
            h = n / top * plot_h
            y -= h
            bars.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{step * 0.7:.1f}" height="{h:.1f}"'
                f' fill="{COLORS[s]}"><title>{e(day)} {e(s)}: {n:,}</title></rect>'
            )
    return _frame(f"{top:,}", days, "".join(bars))


def rate_lines(days: Sequence[str], lines: Sequence[tuple[str, Sequence[float | None]]]) -> str:
    """One polyline per ``(name, rate per day)``; days without a rate break the line."""
    top = max((r for _, rates in lines for r in rates if r is not None), default=0.0) or 0.01
    plot_h = H - BOTTOM - TOP
    step = (W - LEFT - 10) / max(len(days), 1)
    body = []
    for k, (name, rates) in enumerate(lines):
        color = COLORS["all"] if k == 0 else LINE_COLORS[(k - 1) % len(LINE_COLORS)]
        segment: list[str] = []
        segments = [segment]
        for i, r in enumerate(rates):
            if r is None:
                segment = []
                segments.append(segment)
                continue
            x, y = LEFT + step * (i + 0.5), H - BOTTOM - r / top * plot_h
            segment.append(f"{x:.1f},{y:.1f}")
            body.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}">'
                f"<title>{e(name)} {e(days[i])}: {_pct(r)}</title></circle>"
            )
        for seg in segments:
            if len(seg) > 1:
                body.append(f'<polyline points="{" ".join(seg)}" fill="none" stroke="{color}"'
                            ' stroke-width="1.5"/>')  # fmt: skip
    return _frame(_pct(top), days, "".join(body))


def hbars(items: Sequence[tuple[str, int]], color: str) -> str:
    """Horizontal bars, one per ``(label, count)``."""
    row, label_w = 22, 260
    height = row * len(items) + 10
    top = max((n for _, n in items), default=0) or 1
    body = []
    for i, (label, n) in enumerate(items):
        y = 5 + i * row
        w = n / top * (W - label_w - 80)
        body.append(
            f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end">{e(label)}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 6}" fill="{color}">'
            f"<title>{e(label)}: {n:,}</title></rect>"
            f'<text x="{label_w + w + 4:.1f}" y="{y + 14}">{n:,}</text>'
        )
    return (
        f'<svg viewBox="0 0 {W} {height}" width="{W}"'
        f' height="{height}" role="img">{"".join(body)}</svg>'
    )


# --------------------------------------------------------------------------- tables


def _table(head: Sequence[str], rows: Sequence[Sequence[object]], numeric: Sequence[int]) -> str:
    th = "".join(f"<th>{e(h)}</th>" for h in head)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="n">{e(v)}</td>' if i in numeric else f"<td>{e(v)}</td>"
            for i, v in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _counts_row(label: str, c: Counts) -> list[object]:
    return [label, f"{c.sent:,}", f"{c.deferred:,}", f"{c.bounced:,}", f"{c.expired:,}",
            f"{c.suppressed:,}", f"{c.complaints:,}", _pct(c.bounce_rate),
            _pct(c.complaint_rate)]  # fmt: skip


COUNT_HEAD = ("sent", "deferred", "bounced", "expired", "suppressed", "complaints",
              "bounce rate", "complaint rate")  # fmt: skip


# --------------------------------------------------------------------------- page


def render(r: Report) -> str:
    """The whole page."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>smtpguard report {e(r.days[0])} .. {e(r.days[-1])}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>smtpguard report: {e(r.days[0])} .. {e(r.days[-1])}</h1>",
        f'<p class="note">{len(r.days)} days (UTC), generated {e(iso(r.generated_at))}.'
        " Bounce rate: bounced / (sent + bounced + expired); complaint rate: complaints /"
        " sent.</p>",
    ]
    parts += [f'<p class="note">{e(note)}</p>' for note in r.notes]
    series = ("sent", "bounced", "expired", "suppressed")
    parts += [
        "<h2>Outcomes per day</h2>",
        _legend([(s, COLORS[s]) for s in series]),
        stacked_days(r.days, r.by_day, series),
        _table(
            ("day", *COUNT_HEAD),
            [_counts_row(d, c) for d, c in zip(r.days, r.by_day, strict=True)]
            + [_counts_row("total", r.total)],
            numeric=range(1, 9),
        ),
    ]
    shown = r.domains[:6]
    for title, attr in (("Bounce rate", "bounce_rate"), ("Complaint rate", "complaint_rate")):
        lines = [("all domains", [getattr(c, attr) for c in r.by_day])]
        lines += [(d.domain, [getattr(c, attr) for c in d.by_day]) for d in shown]
        names = [(name, COLORS["all"] if k == 0 else LINE_COLORS[(k - 1) % len(LINE_COLORS)])
                 for k, (name, _) in enumerate(lines)]  # fmt: skip
        parts += [f"<h2>{title} by destination domain</h2>", _legend(names),
                  rate_lines(r.days, lines)]  # fmt: skip
    more = f" ({r.other_domains:,} more not shown)" if r.other_domains else ""
    parts += [
        f"<h2>Destination domains{e(more)}</h2>",
        _table(
            ("domain", *COUNT_HEAD),
            [_counts_row(d.domain, d.total) for d in r.domains],
            numeric=range(1, 9),
        ),
        "<h2>Top reasons (failed and deferred attempts)</h2>",
        hbars([(f"{x.status}: {x.reason}", x.count) for x in r.reasons], COLORS["bounced"]),
        _table(
            ("status", "reason", "count"),
            [(x.status, x.reason, f"{x.count:,}") for x in r.reasons],
            numeric=(2,),
        ),
        "<h2>Suppression list</h2>",
        _legend(
            [
                ("added", COLORS["added"]),
                ("removed", COLORS["removed"]),
                ("expired", COLORS["expired"]),
            ]
        ),
        stacked_days(r.days, r.suppressions, ("added", "removed", "expired")),
        _table(
            ("day", "added", "removed", "expired", "pending", "recorded"),
            [
                (
                    s.day,
                    f"{s.added:,}",
                    f"{s.removed:,}",
                    f"{s.expired:,}",
                    f"{s.pending:,}",
                    f"{s.recorded:,}",
                )
                for s in r.suppressions
            ],
            numeric=range(1, 6),
        ),
    ]
    if r.added_by_evidence:
        parts.append(_table(("evidence", "added"),
                            [(k, f"{n:,}") for k, n in r.added_by_evidence.items()],
                            numeric=(1,)))  # fmt: skip
    q = r.queue
    oldest = "-" if r.oldest_age is None else f"{r.oldest_age / 3600:.1f} h"
    parts += [
        "<h2>Queue and throttling now</h2>",
        _table(
            ("messages", "queued", "active", "held", "oldest"),
            [
                (
                    f"{q.messages:,}",
                    f"{q.recipients.get('queued', 0):,}",
                    f"{q.recipients.get('active', 0):,}",
                    f"{q.recipients.get('held', 0):,}",
                    oldest,
                )
            ],
            numeric=range(5),
        ),
    ]
    if r.waiting:
        parts += [
            "<p>Waiting for a retry (deferred at least once) or held, by destination:</p>",
            _table(
                ("domain", "recipients", "held", "last reason", "next attempt"),
                [
                    (
                        w.domain,
                        f"{w.recipients:,}",
                        f"{w.held:,}",
                        w.reason or "-",
                        iso(w.next_attempt) or "-",
                    )
                    for w in r.waiting
                ],
                numeric=(1, 2),
            ),
        ]
    if r.storms:
        parts += [
            "<p>Storms: new suppressions held back (<code>smtpguard suppression pending</code>):"
            "</p>",
            _table(
                ("destination", "pending", "since"),
                [(s.destination, f"{s.pending:,}", iso(s.since)) for s in r.storms],
                numeric=(1,),
            ),
        ]
    parts.append("</body></html>\n")
    return "\n".join(parts)
