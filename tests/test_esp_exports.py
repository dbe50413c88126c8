"""ESP suppression exports: each provider's documented format in, the same format out."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from smtpguard.errors import UserError
from smtpguard.intake import exports
from smtpguard.intake.exports import Problem
from smtpguard.store.suppression import Observation, SuppressionEntry

SAMPLES = Path(__file__).parent / "esp"


def read(fmt: str, text: str | None = None, **kw: object) -> list[Observation | Problem]:
    if text is None:
        text = (SAMPLES / SAMPLE_FILES[fmt]).read_text()
    lines = io.StringIO(text, newline="")
    return [item for _, item in exports.read_export(fmt, lines, f"<{fmt}>", **kw)]  # type: ignore[arg-type]


def observations(fmt: str, text: str | None = None, **kw: object) -> dict[str, Observation]:
    items = read(fmt, text, **kw)
    assert all(isinstance(i, Observation) for i in items), items
    return {i.address: i for i in items}  # type: ignore[union-attr]


SAMPLE_FILES = {
    "ses": "ses-list-suppressed-destinations.json",
    "mailgun": "mailgun-bounces.csv",
    "sendgrid": "sendgrid-bounces.csv",
    "postmark": "postmark-suppressions-dump.json",
}


# --------------------------------------------------------------------------- Amazon SES


def test_ses_bounce_is_userunknown_and_complaint_is_complaint() -> None:
    obs = observations("ses")
    assert obs["bounce@example.com"].reason == "userunknown"
    assert obs["complaint@example.com"].reason == "complaint"
    assert obs["bounce@example.com"].source == "import"
    assert obs["bounce@example.com"].note == "from ses: BOUNCE"


def test_ses_last_update_time_becomes_the_sighting_time() -> None:
    o = observations("ses")["bounce@example.com"]
    assert o.first_seen == o.last_seen == pytest.approx(1586552585.752)


def test_ses_epoch_timestamps_and_lowercase_reasons_are_read() -> None:
    text = json.dumps(
        {
            "SuppressedDestinationSummaries": [
                {
                    "EmailAddress": "a@example.com",
                    "Reason": "bounce",
                    "LastUpdateTime": 1586552585.752,
                }
            ]
        }
    )
    assert observations("ses", text)["a@example.com"].last_seen == pytest.approx(1586552585.752)


def test_ses_pages_pasted_together_are_one_list() -> None:
    page = json.dumps(
        {
            "SuppressedDestinationSummaries": [{"EmailAddress": "%s", "Reason": "BOUNCE"}],
            "NextToken": "x",
        }
    )
    assert set(observations("ses", page % "a@example.com" + page % "b@example.com")) == {
        "a@example.com",
        "b@example.com",
    }


def test_ses_unknown_reason_is_a_problem_naming_the_record() -> None:
    text = (
        '{"SuppressedDestinationSummaries": [{"EmailAddress": "a@example.com", "Reason": "SPAM"}]}'
    )
    (problem,) = read("ses", text)
    assert isinstance(problem, Problem)
    assert str(problem) == "record 1: Reason: expected BOUNCE or COMPLAINT, not 'SPAM'"


def test_ses_file_of_another_shape_is_one_error() -> None:
    with pytest.raises(UserError, match="not an Amazon SES suppression list"):
        read("ses", '{"Suppressions": []}')


def test_ses_invalid_json_is_one_error() -> None:
    with pytest.raises(UserError, match="invalid JSON"):
        read("ses", '{"SuppressedDestinationSummaries": [')


# --------------------------------------------------------------------------- Mailgun


def test_mailgun_rows_are_classified_from_code_and_error() -> None:
    obs = observations("mailgun")
    alice = obs["alice@example.com"]
    assert alice.reason == "userunknown"  # "No such mailbox": Mailgun's list is permanent failures
    assert alice.reply_code == "550"
    assert alice.diagnostic == "No such mailbox"
    assert alice.first_seen == alice.last_seen == 1319194975.0  # Fri, 21 Oct 2011 11:02:55 UTC
    assert obs["bob@example.com"].status == "5.1.1"


def test_mailgun_row_with_only_an_address_defaults_to_a_hard_bounce() -> None:
    carol = observations("mailgun")["carol@example.com"]
    assert carol.reason == "userunknown"
    assert carol.reply_code == "" and carol.status == ""  # nothing invented


def test_mailgun_row_whose_text_names_a_full_mailbox_keeps_that_reason() -> None:
    text = 'address,code,error,created_at\nd@example.com,552,"5.2.2 Mailbox full",\n'
    assert observations("mailgun", text)["d@example.com"].reason == "mailboxfull"


def test_mailgun_bad_date_and_bad_address_are_problems_with_line_numbers() -> None:
    text = (
        "address,code,error,created_at\n"
        "ok@example.com,550,No such mailbox,\n"
        "not-an-address,550,x,\n"
        'e@example.com,550,x,"someday"\n'
    )
    problems = [i for i in read("mailgun", text) if isinstance(i, Problem)]
    assert [p.line for p in problems] == [3, 4]
    assert "created: expected a time" in problems[1].message


def test_csv_without_the_address_column_is_one_error() -> None:
    with pytest.raises(UserError, match="no 'address' column"):
        read("mailgun", "email,code\nx@example.com,550\n")


# --------------------------------------------------------------------------- SendGrid


def test_sendgrid_rows_keep_status_reply_and_time() -> None:
    obs = observations("sendgrid")
    first = obs["testemail1@test.com"]
    assert first.reason == "userunknown"
    assert (first.status, first.reply_code) == ("5.1.1", "550")
    assert first.last_seen == 1443651125.0
    assert "does not exist" in first.diagnostic
    assert obs["testemail2@testing.com"].reason == "userunknown"


def test_sendgrid_v2_date_times_are_read_as_utc() -> None:
    text = (
        "email,created,reason,status\nx@example.com,2014-12-06 08:34:48,550 5.1.1 unknown,5.1.1\n"
    )
    assert observations("sendgrid", text)["x@example.com"].last_seen == 1417854888.0


def test_sendgrid_vague_text_still_names_the_address_because_the_list_is_of_hard_bounces() -> None:
    text = "email,created,reason,status\nx@example.com,1,500 unknown recipient,5.0.0\n"
    assert observations("sendgrid", text)["x@example.com"].reason == "userunknown"


# --------------------------------------------------------------------------- Postmark


def test_postmark_reasons_map_and_manual_suppression_by_the_recipient_is_unsubscribe() -> None:
    obs = observations("postmark")
    assert obs["bounce.address@wildbit.com"].reason == "userunknown"
    assert obs["spam.complaint.address@wildbit.com"].reason == "complaint"
    assert obs["address@wildbit.com"].reason == "unsubscribe"
    assert obs["address@wildbit.com"].note == "from postmark: ManualSuppression (Recipient)"
    assert obs["address@wildbit.com"].first_seen == 1576591113.0  # 2019-12-17T08:58:33-05:00


def test_postmark_manual_suppression_by_the_sender_is_manual() -> None:
    record = {"EmailAddress": "a@example.com", "SuppressionReason": "ManualSuppression"}
    text = json.dumps({"Suppressions": [{**record, "Origin": "Customer"}]})
    assert observations("postmark", text)["a@example.com"].reason == "manual"


def test_postmark_record_that_is_not_an_object_is_a_problem() -> None:
    (problem,) = read("postmark", '{"Suppressions": ["a@example.com"]}')
    assert str(problem) == "record 1: expected a JSON object"


# --------------------------------------------------------------------------- plain lists


def test_plain_list_takes_the_given_reason_and_skips_comments() -> None:
    text = "# unsubscribed in the old system\nA@Example.com\n\n<b@example.com>\n@gone.example\n"
    obs = observations("plain", text, reason="unsubscribe")
    assert set(obs) == {"a@example.com", "b@example.com", "gone.example"}
    assert {o.reason for o in obs.values()} == {"unsubscribe"}
    assert obs["gone.example"].kind == "domain"


def test_plain_list_bare_word_is_a_problem_not_a_domain() -> None:
    (problem,) = read("plain", "example\n")
    assert isinstance(problem, Problem) and problem.line == 1


# --------------------------------------------------------------------------- detection


@pytest.mark.parametrize("fmt", sorted(SAMPLE_FILES))
def test_sniff_recognises_each_sample(fmt: str) -> None:
    assert exports.sniff((SAMPLES / SAMPLE_FILES[fmt]).read_text()[:4096]) == fmt


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        ("bob@example.com\ncarol@example.org\n", "plain"),
        ("\ufeffbob@example.com\n", "plain"),
        ("address,reason\nbob@example.com,manual\n", None),
        ('{"address": "bob@example.com"}\n', None),
    ],
)
def test_sniff_leaves_smtpguards_own_formats_alone(head: str, expected: str | None) -> None:
    assert exports.sniff(head) == expected


# --------------------------------------------------------------------------- writers


def entry(address: str, reason: str, kind: str = "address", **kw: object) -> SuppressionEntry:
    fields = {
        "status": "", "reply_code": "", "diagnostic": "", "source": "smtp-reply",
        "first_seen": 1796983200.0, "last_seen": 1796990400.0, "count": 1, "expires": None,
    }  # fmt: skip
    fields.update(kw)
    return SuppressionEntry(address=address, kind=kind, reason=reason, **fields)  # type: ignore[arg-type]


ENTRIES = [
    entry("bob@example.com", "userunknown", status="5.1.1", reply_code="550",
          diagnostic="550 5.1.1 <bob@example.com>: Recipient address rejected"),
    entry("carol@example.com", "complaint", source="arf"),
    entry("dan@example.com", "unsubscribe"),
    entry("eve@example.com", "manual"),
    entry("frank@example.com", "mailboxfull", status="4.2.2", reply_code="452"),
    entry("gone.example", "hostunknown", kind="domain"),
]  # fmt: skip


def write(fmt: str) -> tuple[str, exports.Written]:
    out = io.StringIO()
    written = exports.WRITERS[fmt](iter(ENTRIES), out)
    return out.getvalue(), written


def test_ses_export_is_a_list_suppressed_destinations_document() -> None:
    text, written = write("ses")
    doc = json.loads(text)
    reasons = {s["EmailAddress"]: s["Reason"] for s in doc["SuppressedDestinationSummaries"]}
    assert reasons == {
        "bob@example.com": "BOUNCE",
        "carol@example.com": "COMPLAINT",
        "dan@example.com": "COMPLAINT",
        "eve@example.com": "BOUNCE",
        "frank@example.com": "BOUNCE",
    }
    assert doc["SuppressedDestinationSummaries"][0]["LastUpdateTime"] == "2026-12-11T12:00:00Z"
    assert (written.written, written.skipped_domains) == (5, 1)


def test_postmark_export_keeps_who_asked() -> None:
    text, _ = write("postmark")
    pm = {
        s["EmailAddress"]: (s["SuppressionReason"], s["Origin"])
        for s in json.loads(text)["Suppressions"]
    }
    assert pm["carol@example.com"] == ("SpamComplaint", "Recipient")
    assert pm["dan@example.com"] == ("ManualSuppression", "Recipient")
    assert pm["eve@example.com"] == ("ManualSuppression", "Customer")
    assert pm["bob@example.com"] == ("HardBounce", "Recipient")


def test_bounce_list_exports_leave_out_complaints_unsubscribes_and_domains() -> None:
    for fmt in ("mailgun", "sendgrid"):
        text, written = write(fmt)
        assert "carol@" not in text and "dan@" not in text and "gone.example" not in text
        assert (written.written, written.skipped_reasons, written.skipped_domains) == (3, 2, 1)


def test_mailgun_export_has_the_documented_header_and_rfc2822_dates() -> None:
    text, _ = write("mailgun")
    lines = text.splitlines()
    assert lines[0] == "address,code,error,created_at"
    assert lines[1] == (
        "bob@example.com,550,550 5.1.1 <bob@example.com>: Recipient address rejected,"
        '"Fri, 11 Dec 2026 12:00:00 GMT"'
    )


def test_empty_json_export_is_still_a_valid_document() -> None:
    out = io.StringIO()
    assert exports.write_ses([], out).written == 0
    assert json.loads(out.getvalue()) == {"SuppressedDestinationSummaries": []}


@pytest.mark.parametrize("fmt", exports.ESP_FORMATS)
def test_every_export_reimports_with_mapped_reasons(fmt: str) -> None:
    text, written = write(fmt)
    obs = observations(fmt, text)
    assert len(obs) == written.written
    assert obs["bob@example.com"].reason == "userunknown"
    if fmt in ("ses", "postmark"):
        assert obs["carol@example.com"].reason == "complaint"
    if fmt == "postmark":
        assert obs["dan@example.com"].reason == "unsubscribe"
        assert obs["eve@example.com"].reason == "manual"
    if fmt in ("mailgun", "sendgrid"):
        assert obs["frank@example.com"].reason == "mailboxfull"
        assert obs["bob@example.com"].status == "5.1.1"
