"""Router: recipient domain -> ordered next hops, against a real DNS server on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import dns.resolver
import pytest

from smtpguard.classify import default_classifier
from smtpguard.config import DeliveryConfig
from smtpguard.relay.routing import MAX_DEAD_ANSWER_CACHE, NextHop, Router, RoutingError
from tests.fixtures.dns import DnsStub

#: The stub's answers point at loopback, which a router drops unless allowed.
LOOPBACK = ["127.0.0.0/8", "::1/128"]


def router(dns: DnsStub, timeout: float = 2.0, **settings: Any) -> Router:
    settings.setdefault("allowed_destination_networks", LOOPBACK)
    settings.setdefault("allow_address_literals", True)
    cfg = DeliveryConfig(nameservers=[dns.nameserver], port=2525, **settings)
    return Router(cfg, timeout=timeout)


def hosts(hops: list[NextHop]) -> list[str]:
    return [h.host for h in hops]


async def failure(r: Router, domain: str) -> RoutingError:
    with pytest.raises(RoutingError) as caught:
        await r.route(domain)
    return caught.value


# ---------------------------------------------------------------------- MX


async def test_mx_hosts_come_in_preference_order(dns_server: DnsStub) -> None:
    dns_server.add(
        "example.test", "MX", "30 c.example.test.", "10 a.example.test.", "20 b.example.test."
    )
    for i, name in enumerate("abc", start=1):
        dns_server.add(f"{name}.example.test", "A", f"127.0.0.{i}")
    hops = await router(dns_server).route("example.test")
    assert [(h.host, h.address, h.preference) for h in hops] == [
        ("a.example.test", "127.0.0.1", 10),
        ("b.example.test", "127.0.0.2", 20),
        ("c.example.test", "127.0.0.3", 30),
    ]
    assert {(h.source, h.port, h.tls) for h in hops} == {("mx", 2525, "opportunistic")}


async def test_equal_preference_mx_hosts_are_shuffled(dns_server: DnsStub) -> None:
    dns_server.add(
        "example.test", "MX", "10 a.example.test.", "10 b.example.test.", "20 z.example.test."
    )
    for name, ip in (("a", "127.0.0.1"), ("b", "127.0.0.2"), ("z", "127.0.0.9")):
        dns_server.add(f"{name}.example.test", "A", ip)
    r = router(dns_server)
    orders = {tuple(hosts(await r.route("example.test"))) for _ in range(60)}
    assert orders == {
        ("a.example.test", "b.example.test", "z.example.test"),
        ("b.example.test", "a.example.test", "z.example.test"),
    }


async def test_mx_host_addresses_ipv4_first_then_ipv6(dns_server: DnsStub) -> None:
    dns_server.add("example.test", "MX", "10 mx.example.test.")
    dns_server.add("mx.example.test", "AAAA", "::1")
    dns_server.add("mx.example.test", "A", "127.0.0.1")
    hops = await router(dns_server).route("example.test")
    assert [h.address for h in hops] == ["127.0.0.1", "::1"]


async def test_domain_without_mx_uses_its_own_address_as_implicit_mx(dns_server: DnsStub) -> None:
    dns_server.add("example.test", "A", "127.0.0.7")
    hops = await router(dns_server).route("example.test")
    assert hops == [NextHop("example.test", "127.0.0.7", 2525, 0, "a", "opportunistic")]


async def test_domain_with_neither_mx_nor_address_is_permanent_hostunknown(
    dns_server: DnsStub,
) -> None:
    dns_server.add("example.test", "TXT", '"v=spf1 -all"')
    e = await failure(router(dns_server), "example.test")
    assert (e.reason, e.status, e.reply_code, e.permanent) == ("hostunknown", "5.1.2", "550", True)


async def test_null_mx_is_permanent_hostunknown_556_5_1_10(dns_server: DnsStub) -> None:
    dns_server.null_mx("example.test")
    dns_server.add("example.test", "A", "127.0.0.1")  # RFC 7505: the A record must not be used
    e = await failure(router(dns_server), "example.test")
    assert (e.reason, e.status, e.reply_code, e.permanent) == ("hostunknown", "5.1.10", "556", True)
    assert e.reply.startswith("556 5.1.10 ")
    assert dns_server.queried("example.test", "A") == 0


async def test_nxdomain_is_permanent_hostunknown_550_5_1_2(dns_server: DnsStub) -> None:
    e = await failure(router(dns_server), "nowhere.test")
    assert (e.reason, e.status, e.reply_code, e.permanent) == ("hostunknown", "5.1.2", "550", True)
    assert "nowhere.test" in e.text


async def test_servfail_is_temporary_networkerror_4_4_3(dns_server: DnsStub) -> None:
    dns_server.servfail("example.test")
    e = await failure(router(dns_server), "example.test")
    assert (e.reason, e.status, e.reply_code, e.permanent) == (
        "networkerror",
        "4.4.3",
        "451",
        False,
    )


async def test_dns_timeout_is_temporary_and_bounded(dns_server: DnsStub) -> None:
    dns_server.drop("example.test")
    started = time.monotonic()
    e = await failure(router(dns_server, timeout=0.5), "example.test")
    assert (e.reason, e.permanent) == ("networkerror", False)
    assert time.monotonic() - started < 3


async def test_mx_target_servfail_is_temporary(dns_server: DnsStub) -> None:
    dns_server.add("example.test", "MX", "10 mx.example.test.")
    dns_server.servfail("mx.example.test")
    e = await failure(router(dns_server), "example.test")
    assert (e.reason, e.permanent) == ("networkerror", False)


async def test_mx_targets_that_do_not_exist_are_permanent_hostunknown(dns_server: DnsStub) -> None:
    dns_server.add("example.test", "MX", "10 gone.example.test.")
    e = await failure(router(dns_server), "example.test")
    assert (e.reason, e.status, e.permanent) == ("hostunknown", "5.1.2", True)


async def test_unresolvable_mx_host_is_skipped_for_the_next(dns_server: DnsStub) -> None:
    dns_server.add("example.test", "MX", "10 gone.example.test.", "20 mx.example.test.")
    dns_server.add("mx.example.test", "A", "127.0.0.1")
    assert hosts(await router(dns_server).route("example.test")) == ["mx.example.test"]


async def test_malformed_domain_is_permanent(dns_server: DnsStub) -> None:
    e = await failure(router(dns_server), "bad..example.test")
    assert (e.reason, e.permanent) == ("hostunknown", True)


async def test_large_mx_set_resolves_over_tcp_after_truncation(dns_server: DnsStub) -> None:
    names = [f"mx{i:02d}-with-a-rather-long-label-for-size.example.test." for i in range(40)]
    dns_server.add("example.test", "MX", *(f"{i} {n}" for i, n in enumerate(names)))
    for n in names:
        dns_server.add(n, "A", "127.0.0.1")
    hops = await router(dns_server).route("example.test")
    assert hops[0].host == names[0].rstrip(".")
    assert [q.transport for q in dns_server.queries if q.rdtype == "MX"] == ["udp", "tcp"]


async def test_answers_are_cached_for_their_ttl(dns_server: DnsStub) -> None:
    dns_server.add("example.test", "MX", "10 mx.example.test.", ttl=300)
    dns_server.add("mx.example.test", "A", "127.0.0.1", ttl=300)
    r = router(dns_server)
    await r.route("example.test")
    seen = len(dns_server.queries)
    await r.route("example.test")
    assert len(dns_server.queries) == seen


async def test_negative_answers_are_cached_only_for_the_zones_negative_ttl(
    dns_server: DnsStub,
) -> None:
    r = router(dns_server)
    with pytest.raises(RoutingError):
        await r.route("late.test")
    dns_server.add("late.test", "A", "127.0.0.1")
    with pytest.raises(RoutingError):
        await r.route("late.test")  # still cached: that is what a negative TTL means
    await asyncio.sleep(dns_server.negative_ttl + 0.1)
    assert [h.address for h in await r.route("late.test")] == ["127.0.0.1"]


@pytest.mark.parametrize("dead", ["nxdomain", "null-mx"])
async def test_dead_domain_answers_are_cached_for_a_minute_at_most(dead: str) -> None:
    """A long negative TTL must not make one answer count as two sightings."""
    with DnsStub(negative_ttl=86400) as stub:
        if dead == "null-mx":
            stub.add("dead.test", "MX", "0 .", ttl=86400)
        r = router(stub)
        with pytest.raises(RoutingError):
            await r.route("dead.test")
        cache = r.resolver.cache
        assert isinstance(cache, dns.resolver.LRUCache)
        assert cache.data
        latest = max(node.value.expiration for node in cache.data.values())
        assert latest <= time.time() + MAX_DEAD_ANSWER_CACHE


async def test_dns_goes_only_to_the_configured_server(dns_server: DnsStub) -> None:
    dns_server.add("example.test", "MX", "10 mx.example.test.")
    dns_server.add("mx.example.test", "A", "127.0.0.1")
    await router(dns_server).route("example.test")
    asked = [(q.name, q.rdtype) for q in dns_server.queries]
    assert asked[0] == ("example.test", "MX")
    assert sorted(asked[1:]) == [("mx.example.test", "A"), ("mx.example.test", "AAAA")]


# ---------------------------------------------------------------------- smarthost and routes


async def test_smarthost_overrides_mx_with_its_credentials_and_tls(dns_server: DnsStub) -> None:
    dns_server.add("example.test", "MX", "10 mx.example.test.")
    r = router(
        dns_server,
        smarthost="127.0.0.1:2626",
        smarthost_user="relay",
        smarthost_password="s3cret",
        smarthost_tls="required",
    )
    hops = await r.route("example.test")
    assert hops == [
        NextHop("127.0.0.1", "127.0.0.1", 2626, 0, "smarthost", "required", "relay", "s3cret")
    ]
    assert dns_server.queries == []


async def test_smarthost_name_is_resolved_by_address_not_mx(dns_server: DnsStub) -> None:
    dns_server.add("relay.test", "MX", "10 elsewhere.test.")
    dns_server.add("relay.test", "A", "127.0.0.3")
    hops = await router(dns_server, smarthost="relay.test:587").route("example.test")
    assert [(h.host, h.address, h.port, h.source) for h in hops] == [
        ("relay.test", "127.0.0.3", 587, "smarthost")
    ]
    assert dns_server.queried("relay.test", "MX") == 0


async def test_smarthost_in_brackets_ipv6(dns_server: DnsStub) -> None:
    hops = await router(dns_server, smarthost="[::1]:2525").route("example.test")
    assert [(h.address, h.port) for h in hops] == [("::1", 2525)]


async def test_unresolvable_smarthost_defers_instead_of_bouncing(dns_server: DnsStub) -> None:
    e = await failure(router(dns_server, smarthost="missing.test:25"), "example.test")
    assert (e.reason, e.status, e.permanent) == ("networkerror", "4.4.3", False)


async def test_route_overrides_mx_for_its_domain(dns_server: DnsStub) -> None:
    dns_server.add("example.test", "MX", "10 mx.example.test.")
    r = router(dns_server, routes={"example.test": "127.0.0.5:2600"})
    hops = await r.route("Example.Test")
    assert [(h.address, h.port, h.source) for h in hops] == [("127.0.0.5", 2600, "route")]


async def test_route_without_port_uses_delivery_port(dns_server: DnsStub) -> None:
    r = router(dns_server, routes={"example.test": "127.0.0.5"})
    assert [(h.address, h.port) for h in await r.route("example.test")] == [("127.0.0.5", 2525)]


async def test_plain_route_key_does_not_match_subdomains(dns_server: DnsStub) -> None:
    dns_server.add("sub.example.test", "A", "127.0.0.8")
    r = router(dns_server, routes={"example.test": "127.0.0.5:2600"})
    assert [(h.address, h.source) for h in await r.route("sub.example.test")] == [
        ("127.0.0.8", "a")
    ]


async def test_dotted_route_key_matches_subdomains_only(dns_server: DnsStub) -> None:
    dns_server.add("example.test", "A", "127.0.0.8")
    r = router(dns_server, routes={".example.test": "127.0.0.5:2600"})
    assert [h.source for h in await r.route("deep.sub.example.test")] == ["route"]
    assert [h.source for h in await r.route("example.test")] == ["a"]


async def test_route_host_name_is_resolved_through_the_stub(dns_server: DnsStub) -> None:
    dns_server.add("gw.test", "A", "127.0.0.4")
    r = router(dns_server, routes={"example.test": "gw.test:26"})
    assert [(h.host, h.address, h.port) for h in await r.route("example.test")] == [
        ("gw.test", "127.0.0.4", 26)
    ]


async def test_address_literal_domain_needs_no_dns(dns_server: DnsStub) -> None:
    hops = await router(dns_server).route("[127.0.0.9]")
    assert [(h.address, h.source) for h in hops] == [("127.0.0.9", "a")]
    assert dns_server.queries == []


# ---------------------------------------------------------------------- the classifier agrees


@pytest.mark.parametrize(
    ("setup", "domain"),
    [
        (lambda d: d.null_mx("example.test"), "example.test"),
        (lambda d: None, "nowhere.test"),
        (lambda d: d.add("example.test", "TXT", '"no mail here"'), "example.test"),
        (lambda d: d.servfail("example.test"), "example.test"),
        (lambda d: d.drop("example.test"), "example.test"),
    ],
    ids=["null-mx", "nxdomain", "no-address", "servfail", "timeout"],
)
async def test_routing_error_reply_classifies_as_its_own_reason(
    dns_server: DnsStub, setup: Callable[[DnsStub], None], domain: str
) -> None:
    setup(dns_server)
    e = await failure(router(dns_server, timeout=0.3), domain)
    verdict = default_classifier().reply_line(e.reply, stage="connect")
    assert (verdict.reason, verdict.bounce == "hard") == (e.reason, e.permanent)


async def test_ipv6_address_literal_domain(dns_server: DnsStub) -> None:
    hops = await router(dns_server).route("[IPv6:::1]")
    assert [(h.address, h.port) for h in hops] == [("::1", 2525)]


# ---------------------------------------------------------------------- where we never connect


def strict(dns: DnsStub, **settings: Any) -> Router:
    """A router with the defaults: public destinations only, no address literals."""
    settings.setdefault("allowed_destination_networks", [])
    settings.setdefault("allow_address_literals", False)
    return router(dns, **settings)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "::1", "10.0.0.5", "172.16.3.4", "192.168.1.1", "100.64.0.1",
        "169.254.169.254", "fe80::1", "fd00::25", "0.0.0.0", "::", "224.0.0.25", "ff02::1",
        "255.255.255.255", "::ffff:127.0.0.1", "::ffff:169.254.169.254",
    ],
)  # fmt: skip
async def test_mx_pointing_at_a_non_public_address_is_not_used(
    dns_server: DnsStub, address: str
) -> None:
    dns_server.add("example.test", "MX", "10 mx.example.test.")
    dns_server.add("mx.example.test", "AAAA" if ":" in address else "A", address)
    e = await failure(strict(dns_server), "example.test")
    assert (e.reason, e.status, e.permanent, e.dns) == ("networkerror", "4.4.4", False, False)
    assert f"mx.example.test[{address}] is " in e.text
    assert "delivery.allowed_destination_networks" in e.text


async def test_implicit_mx_address_is_filtered_too(dns_server: DnsStub) -> None:
    dns_server.add("example.test", "A", "127.0.0.1")
    e = await failure(strict(dns_server), "example.test")
    assert "example.test[127.0.0.1] is loopback" in e.text and not e.permanent


async def test_non_public_addresses_are_dropped_and_public_ones_kept(dns_server: DnsStub) -> None:
    dns_server.add("example.test", "MX", "10 inside.example.test.", "20 outside.example.test.")
    dns_server.add("inside.example.test", "A", "10.0.0.5", "169.254.169.254")
    dns_server.add("outside.example.test", "A", "198.51.100.7", "93.184.215.14")
    hops = await strict(dns_server).route("example.test")
    assert [(h.host, h.address) for h in hops] == [("outside.example.test", "93.184.215.14")]


async def test_allowed_networks_admit_private_and_loopback_destinations(
    dns_server: DnsStub,
) -> None:
    dns_server.add("example.test", "MX", "10 mx.example.test.")
    dns_server.add("mx.example.test", "A", "10.0.0.5", "127.0.0.1", "192.168.1.1")
    r = strict(dns_server, allowed_destination_networks=["10.0.0.0/8", "127.0.0.1/32"])
    # One host's addresses come in the order DNS gives them: compare as a set.
    assert sorted(h.address for h in await r.route("example.test")) == ["10.0.0.5", "127.0.0.1"]


async def test_multicast_and_unspecified_are_never_admitted(dns_server: DnsStub) -> None:
    dns_server.add("example.test", "MX", "10 mx.example.test.")
    dns_server.add("mx.example.test", "A", "224.0.0.25", "0.0.0.0")
    r = strict(dns_server, allowed_destination_networks=["0.0.0.0/0"])
    e = await failure(r, "example.test")
    assert "is multicast" in e.text and "is unspecified" in e.text


async def test_address_literal_is_refused_unless_allowed(dns_server: DnsStub) -> None:
    e = await failure(strict(dns_server), "[127.0.0.1]")
    assert (e.reason, e.status, e.permanent, e.dns) == ("norelaying", "5.7.1", True, False)
    assert "delivery.allow_address_literals" in e.text
    assert dns_server.queries == []


async def test_allowed_address_literal_is_filtered_like_a_dns_answer(dns_server: DnsStub) -> None:
    r = strict(dns_server, allow_address_literals=True)
    e = await failure(r, "[127.0.0.1]")
    assert "is loopback" in e.text and not e.permanent
    assert [h.address for h in await r.route("[93.184.215.14]")] == ["93.184.215.14"]


async def test_smarthost_and_routes_are_used_as_configured(dns_server: DnsStub) -> None:
    assert [h.address for h in await strict(dns_server, smarthost="127.0.0.1:2626").route(
        "example.test")] == ["127.0.0.1"]  # fmt: skip
    r = strict(dns_server, routes={"example.test": "10.0.0.5:25"})
    assert [h.address for h in await r.route("example.test")] == ["10.0.0.5"]


def looping(dns: DnsStub, listen: str = "127.0.0.1:2525", **settings: Any) -> Router:
    cfg = DeliveryConfig(
        nameservers=[dns.nameserver], port=2525, allowed_destination_networks=LOOPBACK,
        **settings,
    )  # fmt: skip
    return Router(cfg, timeout=2.0, listen=listen)


async def test_mx_that_is_our_own_listener_is_a_configuration_error(dns_server: DnsStub) -> None:
    dns_server.add("example.test", "MX", "10 mx.example.test.")
    dns_server.add("mx.example.test", "A", "127.0.0.1")
    e = await failure(looping(dns_server), "example.test")
    assert (e.reason, e.status, e.permanent, e.dns) == ("networkerror", "4.4.6", False, False)
    assert e.text == (
        "Configuration error: mail for example.test would loop back to this relay:"
        " mx host mx.example.test[127.0.0.1]:2525 is relay.listen"
    )


async def test_our_own_listener_and_less_preferred_mx_hosts_are_dropped(
    dns_server: DnsStub,
) -> None:
    dns_server.add("example.test", "MX", "10 a.example.test.", "20 self.example.test.",
                   "30 c.example.test.")  # fmt: skip
    dns_server.add("a.example.test", "A", "127.0.0.2")
    dns_server.add("self.example.test", "A", "127.0.0.1")
    dns_server.add("c.example.test", "A", "127.0.0.3")
    assert hosts(await looping(dns_server).route("example.test")) == ["a.example.test"]


async def test_a_listener_on_every_address_is_reached_through_loopback(
    dns_server: DnsStub,
) -> None:
    dns_server.add("example.test", "A", "127.0.0.5")
    e = await failure(looping(dns_server, listen="0.0.0.0:2525"), "example.test")
    assert e.status == "4.4.6"
    other_port = looping(dns_server, listen="0.0.0.0:2526")
    assert hosts(await other_port.route("example.test")) == ["example.test"]


async def test_smarthost_that_is_our_own_listener_is_a_configuration_error(
    dns_server: DnsStub,
) -> None:
    e = await failure(looping(dns_server, smarthost="127.0.0.1:2525"), "example.test")
    assert "smarthost host 127.0.0.1[127.0.0.1]:2525 is relay.listen" in e.text


# ---------------------------------------------------------------------- how long a route holds


async def test_a_route_holds_as_long_as_its_shortest_dns_answer(dns_server: DnsStub) -> None:
    dns_server.add("ttl.test", "MX", "10 mx.ttl.test.", ttl=300)
    dns_server.add("mx.ttl.test", "A", "127.0.0.1", ttl=5)
    before = time.time()
    hops, expires = await router(dns_server).route_expiring("ttl.test")
    assert hosts(hops) == ["mx.ttl.test"]
    assert before + 4 <= expires <= time.time() + 5


async def test_a_route_without_dns_holds_indefinitely(dns_server: DnsStub) -> None:
    _, expires = await router(dns_server).route_expiring("[127.0.0.1]")
    assert expires == float("inf")
