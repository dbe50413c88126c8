"""`smtpguard report`: the numbers in the database, as tables, JSON and one self-contained page."""

from __future__ import annotations

import json
import re
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from smtpguard.store import daily
from smtpguard.store.db import connect
from smtpguard.store.entries import make_observation
from smtpguard.store.suppression import SuppressionStore

NOW = time.time()
TODAY = daily.day_of(NOW)
YESTERDAY = daily.day_of(NOW - 86_400)
# Values a database could hold that must print as themselves, never as markup or HTML.
HOSTILE_DOMAIN = "[bold red]evil[/].example"
HOSTILE_REASON = '<script src="https://evil.example/x.js"></script>'


@pytest.fixture
def filled(data_dir: Path) -> Path:
    """Two days of counts for three domains, suppressions added and removed, a complaint."""
    conn = connect(data_dir)
    daily.add(
        conn,
        {
            (YESTERDAY, "gmail.com"): [900, 20, 30, 0, 4],
            (TODAY, "gmail.com"): [1000, 10, 50, 2, 6],
            (TODAY, "yahoo.com"): [400, 40, 0, 0, 0],
            (TODAY, HOSTILE_DOMAIN): [7, 0, 3, 0, 0],
        },
        {
            (TODAY, "bounced", "userunknown"): 45,
            (TODAY, "deferred", "mailboxfull"): 50,
            (YESTERDAY, "bounced", HOSTILE_REASON): 30,
        },
        max_domains=500,
    )
    conn.close()
    store = SuppressionStore.open(data_dir)
    for i in range(3):
        store.record_observation(
            make_observation(f"u{i}@gmail.com", "userunknown", evidence="rcpt-reply"), actor="relay"
        )
    store.record_observation(
        make_observation("old@gmail.com", "userunknown", evidence="log"),
        actor="logscan",
        now=NOW - 86_400,
    )
    store.record_observation(
        make_observation("c@yahoo.com", "complaint", evidence="arf"), actor="intake"
    )
    store.remove("u0@gmail.com", actor="cli:root")
    store.close()
    return data_dir


def test_json_report_has_the_numbers(cli, filled):
    out = cli("report", "--since", "2d", "--format", "json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["days"] == [YESTERDAY, TODAY]
    today = r["by_day"][1]
    assert (today["sent"], today["bounced"], today["expired"], today["deferred"]) == (
        1407,
        53,
        2,
        50,
    )
    assert today["complaints"] == 1
    assert today["bounce_rate"] == pytest.approx(53 / (1407 + 53 + 2))
    domains = {d["domain"]: d for d in r["domains"]}
    assert next(iter(domains)) == "gmail.com"  # the busiest first
    assert domains["gmail.com"]["sent"] == 1900 and domains["gmail.com"]["suppressed"] == 10
    assert domains["yahoo.com"]["complaints"] == 1
    assert domains["yahoo.com"]["complaint_rate"] == pytest.approx(1 / 400)
    assert [d["bounce_rate"] for d in domains["gmail.com"]["by_day"]] == [
        pytest.approx(30 / 930),
        pytest.approx(50 / 1052),
    ]
    assert r["reasons"][0] == {"status": "deferred", "reason": "mailboxfull", "count": 50}
    sup = {s["day"]: s for s in r["suppressions"]}
    assert (sup[TODAY]["added"], sup[TODAY]["removed"]) == (4, 1)  # 3 bounces + a complaint
    assert sup[YESTERDAY]["added"] == 1
    assert r["suppressions_added_by_evidence"] == {"arf": 1, "log": 1, "rcpt-reply": 3}


def test_since_one_day_is_today_only(cli, filled):
    r = json.loads(cli("report", "--since", "1d", "--format", "json").stdout)
    assert r["days"] == [TODAY]
    assert r["total"]["sent"] == 1407


def test_terminal_tables_print_database_values_as_text(cli, filled):
    out = cli("report", "--since", "2d")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert HOSTILE_DOMAIN in text  # rich markup printed as it is, not interpreted
    assert HOSTILE_REASON in text
    assert "gmail.com" in text and "1,900" in text
    assert "█" in text  # bars
    assert "added by evidence: arf 1, log 1, rcpt-reply 3" in text


class _Page(HTMLParser):
    """Every tag, attribute and text node of a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        (self.styles if self._in_style else self.text).append(data)


def test_html_page_is_self_contained_and_has_the_numbers(cli, filled, tmp_path):
    page_path = tmp_path / "report.html"
    out = cli("report", "--since", "2d", "--html", str(page_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout == ""
    raw = page_path.read_text(encoding="utf-8")
    page = _Page()
    page.feed(raw)
    names = {tag for tag, _ in page.tags}
    assert {"html", "style", "svg", "rect", "polyline", "table"} <= names
    assert not names & {"script", "link", "img", "iframe", "object", "embed", "base", "image"}
    for tag, attrs in page.tags:
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name)  # no event handlers
            if name in ("src", "href", "xlink:href", "action", "data", "poster", "srcset"):
                raise AssertionError(f"{tag} has {name}={value!r}")
            assert "url(" not in (value or "") and "://" not in (value or ""), (tag, name, value)
    assert not any("url(" in s or "@import" in s for s in page.styles)
    text = " ".join(page.text)
    assert HOSTILE_REASON in text and HOSTILE_DOMAIN in text  # as text, escaped in the source
    assert "&lt;script src=&quot;https://evil.example" in raw
    for number in ("1,407", "1,900", "3.63%", "2,307"):
        assert number in text, number
    # The numbers are in the charts' tooltips too (no JavaScript needed to read them).
    assert f"{TODAY} sent: 1,407" in text


def test_html_to_stdout(cli, filled):
    out = cli("report", "--html", "-")
    assert out.returncode == 0
    assert out.stdout.startswith("<!DOCTYPE html>")


def test_bad_since_is_a_usage_error(cli, filled):
    out = cli("report", "--since", "yesterday")
    assert out.returncode == 2
    assert "--since" in out.stderr and "Traceback" not in out.stderr


def test_a_directory_without_a_database_is_an_error(cli, tmp_path):
    out = cli("--data-dir", str(tmp_path / "nowhere"), "report")
    assert out.returncode == 2
    assert re.search(r"smtpguard: error: .*no smtpguard database here", out.stderr)


@pytest.mark.slow
def test_report_counts_what_the_relay_did(start_relay, dns_server, test_mx):
    from tests.fixtures.cli import _run
    from tests.fixtures.relay import route_to_mx
    from tests.test_relay_delivery import BODY, wait_states

    route_to_mx(dns_server, "example.com", "example.net")
    test_mx.script("gone@example.com", "550 5.1.1 <gone@example.com>: User unknown")
    test_mx.script("later@example.net", "452 4.2.2 Mailbox full")
    relay = start_relay(dsn={"enabled": False}, delivery={"retry_initial": 600.0})
    rcpts = ["a@example.com", "b@example.com", "gone@example.com", "later@example.net"]
    relay.send("s@example.org", rcpts, BODY)
    wait_states(
        relay.data_dir,
        {
            "a@example.com": "delivered",
            "b@example.com": "delivered",
            "gone@example.com": "bounced",
            "later@example.net": "queued",
        },
    )
    assert relay.stop() == 0  # the counts are written at the latest when the relay stops
    out = _run(["--data-dir", str(relay.data_dir), "report", "--since", "1d", "--format", "json"])
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    domains = {d["domain"]: d for d in r["domains"]}
    assert (domains["example.com"]["sent"], domains["example.com"]["bounced"]) == (2, 1)
    assert domains["example.net"]["deferred"] == 1
    assert {(x["status"], x["reason"]) for x in r["reasons"]} == {
        ("bounced", "userunknown"),
        ("deferred", "mailboxfull"),
    }
    assert r["suppressions"][-1]["added"] == 1
    assert r["suppressions_added_by_evidence"] == {"rcpt-reply": 1}
    assert r["queue"]["messages"] == 1 and r["queue"]["recipients"]["queued"] == 1
    (waiting,) = r["waiting"]
    assert (waiting["domain"], waiting["reason"]) == ("example.net", "mailboxfull")
