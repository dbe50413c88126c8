"""``smtpguard policy`` asked by a REAL Postfix, configured with conf/postfix/policy.cf.

client --SMTP--> Postfix (check_policy_service = smtpguard policy) --relayhost--> test MX
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from smtpguard.store.suppression import SuppressionStore
from tests.fixtures.mx import TestMx
from tests.fixtures.net import free_port
from tests.fixtures.postfix import PostfixFactory, PostfixInstance
from tests.fixtures.relay import SUPPRESSED, RelayProcess, relay_refusal

pytestmark = [pytest.mark.postfix, pytest.mark.slow]

GOOD = "carol@example.com"
SENDER = "alice@sender.test"
MESSAGE = b"From: <alice@sender.test>\r\nSubject: hello\r\n\r\nHello.\r\n"


@pytest.fixture
def store(suppressed_store: SuppressionStore) -> SuppressionStore:
    return suppressed_store


@pytest.fixture
def policy(start_service: Callable[..., RelayProcess], store: SuppressionStore) -> RelayProcess:
    return start_service("policy", policy_service={"listen": f"127.0.0.1:{free_port()}"})


@pytest.fixture
def postfix(
    postfix_factory: PostfixFactory, test_mx: TestMx, policy: RelayProcess
) -> PostfixInstance:
    return postfix_factory(test_mx.port, policy_service=f"inet:{policy.where}")


def test_postfix_refuses_a_suppressed_recipient_with_the_relays_text(
    postfix: PostfixInstance, store: SuppressionStore
) -> None:
    relay_text = relay_refusal(store, SUPPRESSED)
    reply = postfix.send(SENDER, SUPPRESSED, MESSAGE)
    # Postfix inserts "Recipient address rejected:" after the address in every
    # access-map and policy rejection; code, status, address and our text are the relay's.
    code_status, _, text = relay_text.partition(f" <{SUPPRESSED}>: ")
    assert str(reply) == f"{code_status} <{SUPPRESSED}>: Recipient address rejected: {text}"
    postfix.wait_log(r"NOQUEUE: reject: RCPT from .*: 550 5\.1\.1 <bob@example\.com>: ")


def test_other_recipients_are_delivered(postfix: PostfixInstance, test_mx: TestMx) -> None:
    assert postfix.send(SENDER, [SUPPRESSED, GOOD], MESSAGE).code == 550
    [received] = test_mx.wait_for(1, timeout=20)
    assert received.rcpt_tos == [GOOD]


def test_killing_the_policy_service_leaves_postfix_delivering(
    postfix: PostfixInstance, policy: RelayProcess, test_mx: TestMx
) -> None:
    assert postfix.send(SENDER, SUPPRESSED, MESSAGE).code == 550
    policy.kill()
    # smtpd_policy_service_default_action = DUNNO (conf/postfix/policy.cf).
    assert postfix.send(SENDER, SUPPRESSED, MESSAGE).code == 250
    [received] = test_mx.wait_for(1, timeout=20)
    assert received.rcpt_tos == [SUPPRESSED]
