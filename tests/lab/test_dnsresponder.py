"""Tests of the lab DNS responder, over the wire with dnspython clients on loopback."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import pytest

from dnsresponder import DNSResponder

ZONE = """
$TTL 300
example.com.          IN SOA   ns1.example.com. hostmaster.example.com. 1 3600 600 86400 60
example.com.          IN NS    ns1.example.com.
example.com.          IN TXT   "v=spf1 -all"
example.com.          IN CAA   128 tbs "unknown"
example.com.          IN CAA   0 issue "letsencrypt.org"
www.example.com.      IN A     192.0.2.10
a.b.deep.example.com. IN A     192.0.2.30
*.wild.example.com.   IN TXT   "wildcard"
links.example.com.    IN CNAME edge.example.net.
dangling.example.com. IN CNAME nowhere.example.com.
outside.example.com.  IN CNAME host.elsewhere.test.
loop1.example.com.    IN CNAME loop2.example.com.
loop2.example.com.    IN CNAME loop1.example.com.
edge.example.net.     IN CNAME lb.example.net.
lb.example.net.       IN A     192.0.2.20
customer.test.        IN NS    ns1.customer.test.
"""

BIG_TXT = "".join(f'big.example.com. 60 IN TXT "{index:03d}-{"x" * 96}"\n' for index in range(30))


@pytest.fixture(name="auth")
def fixture_auth() -> Iterator[DNSResponder]:
    """An authoritative responder serving ZONE."""
    with DNSResponder(ZONE) as responder:
        yield responder


@pytest.fixture(name="recursor")
def fixture_recursor() -> Iterator[DNSResponder]:
    """A recursive-mode responder serving ZONE."""
    with DNSResponder(ZONE, recursive=True) as responder:
        yield responder


def ask(responder: DNSResponder, name: str, rdtype: str, *, tcp: bool = False, timeout: float = 2.0,
        **query_options: object) -> dns.message.Message:
    """Send one query to ``responder`` over UDP (or TCP) and return the response."""
    query = dns.message.make_query(name, rdtype, **query_options)
    send = dns.query.tcp if tcp else dns.query.udp
    return send(query, responder.address, timeout=timeout, port=responder.port)


def resolver_for(responder: DNSResponder, timeout: float = 2.0) -> dns.resolver.Resolver:
    """A dnspython resolver whose only nameserver is ``responder``."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [responder.address]
    resolver.port = responder.port
    resolver.timeout = resolver.lifetime = timeout
    return resolver


def answer_types(response: dns.message.Message) -> list[tuple[str, str]]:
    """(owner, type) of each answer RRset, owner lowercase without trailing dot."""
    return [(rrset.name.to_text(omit_final_dot=True).lower(), dns.rdatatype.to_text(rrset.rdtype)) for rrset in response.answer]


def test_a_answer_is_authoritative(auth: DNSResponder) -> None:
    response = ask(auth, "www.example.com", "A")
    assert response.rcode() == dns.rcode.NOERROR
    assert response.flags & dns.flags.AA and not response.flags & dns.flags.RA
    assert [rdata.address for rdata in response.answer[0]] == ["192.0.2.10"]


def test_txt_and_caa_with_critical_flag(auth: DNSResponder) -> None:
    resolver = resolver_for(auth)
    assert [rdata.strings for rdata in resolver.resolve("example.com", "TXT")] == [(b"v=spf1 -all",)]
    caa = {(rdata.flags, rdata.tag, rdata.value) for rdata in resolver.resolve("example.com", "CAA")}
    assert caa == {(128, b"tbs", b"unknown"), (0, b"issue", b"letsencrypt.org")}


def test_ns_records_are_plain_data(auth: DNSResponder) -> None:
    answer = resolver_for(auth).resolve("customer.test", "NS")
    assert [rdata.target.to_text() for rdata in answer] == ["ns1.customer.test."]


def test_cname_chain_is_followed(auth: DNSResponder) -> None:
    response = ask(auth, "links.example.com", "A")
    assert answer_types(response) == [("links.example.com", "CNAME"), ("edge.example.net", "CNAME"), ("lb.example.net", "A")]
    answer = resolver_for(auth).resolve("links.example.com", "A")
    assert answer.canonical_name.to_text() == "lb.example.net."
    assert [rdata.address for rdata in answer] == ["192.0.2.20"]


def test_cname_query_is_not_chased(auth: DNSResponder) -> None:
    assert answer_types(ask(auth, "links.example.com", "CNAME")) == [("links.example.com", "CNAME")]


def test_dangling_cname_in_own_zone_is_nxdomain(auth: DNSResponder) -> None:
    response = ask(auth, "dangling.example.com", "A")
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert answer_types(response) == [("dangling.example.com", "CNAME")]


def test_cname_out_of_data_authoritative_vs_recursive(auth: DNSResponder, recursor: DNSResponder) -> None:
    authoritative = ask(auth, "outside.example.com", "A")
    assert authoritative.rcode() == dns.rcode.NOERROR
    assert answer_types(authoritative) == [("outside.example.com", "CNAME")]
    assert ask(recursor, "outside.example.com", "A").rcode() == dns.rcode.NXDOMAIN


def test_cname_loop(auth: DNSResponder, recursor: DNSResponder) -> None:
    assert ask(auth, "loop1.example.com", "A").rcode() == dns.rcode.NOERROR
    assert ask(recursor, "loop1.example.com", "A").rcode() == dns.rcode.SERVFAIL


@pytest.mark.parametrize("name", ["www.example.com", "deep.example.com", "b.deep.example.com"])
def test_nodata(auth: DNSResponder, name: str) -> None:
    response = ask(auth, name, "MX")
    assert response.rcode() == dns.rcode.NOERROR
    assert not response.answer
    assert [rrset.rdtype for rrset in response.authority] == [dns.rdatatype.SOA]
    with pytest.raises(dns.resolver.NoAnswer):
        resolver_for(auth).resolve(name, "MX")


def test_nxdomain(auth: DNSResponder) -> None:
    response = ask(auth, "nope.example.com", "A")
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert response.flags & dns.flags.AA
    assert response.authority[0].rdtype == dns.rdatatype.SOA and response.authority[0].ttl == 60
    assert ask(auth, "unknown.invalid", "A").rcode() == dns.rcode.NXDOMAIN
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver_for(auth).resolve("nope.example.com", "A")


def test_wildcard_is_synthesized(auth: DNSResponder) -> None:
    response = ask(auth, "anything.wild.example.com", "TXT")
    assert answer_types(response) == [("anything.wild.example.com", "TXT")]
    assert ask(auth, "anything.wild.example.com", "A").rcode() == dns.rcode.NOERROR


def test_recursive_mode_flags(recursor: DNSResponder) -> None:
    response = ask(recursor, "links.example.com", "A")
    assert response.flags & dns.flags.RA and not response.flags & dns.flags.AA
    assert answer_types(response)[-1] == ("lb.example.net", "A")


def test_servfail_and_refused_faults() -> None:
    faults = {("example.com.", "CAA"): "servfail", "www.example.com.": "refused"}
    with DNSResponder(ZONE, faults=faults) as responder:
        assert ask(responder, "example.com", "CAA").rcode() == dns.rcode.SERVFAIL
        assert ask(responder, "example.com", "TXT").rcode() == dns.rcode.NOERROR
        assert ask(responder, "WWW.example.com", "AAAA").rcode() == dns.rcode.REFUSED
        responder.set_fault("www.example.com", None, None)
        assert ask(responder, "www.example.com", "A").rcode() == dns.rcode.NOERROR
        responder.set_fault("lb.example.net.", "A", "servfail")
        assert ask(responder, "links.example.com", "A").rcode() == dns.rcode.SERVFAIL


def test_unknown_fault_is_rejected(auth: DNSResponder) -> None:
    with pytest.raises(ValueError):
        auth.set_fault("example.com.", None, "explode")


def test_timeout_fault(auth: DNSResponder) -> None:
    auth.set_fault("example.com.", "CAA", "timeout")
    with pytest.raises(dns.exception.Timeout):
        ask(auth, "example.com", "CAA", timeout=0.5)
    with pytest.raises(dns.exception.Timeout):
        ask(auth, "example.com", "CAA", tcp=True, timeout=0.5)
    with pytest.raises(dns.exception.Timeout):
        resolver_for(auth, timeout=0.5).resolve("example.com", "CAA")
    assert ask(auth, "example.com", "TXT").rcode() == dns.rcode.NOERROR
    assert ("example.com", "CAA") in auth.queries


def test_set_zone_replaces_data(auth: DNSResponder) -> None:
    auth.set_zone("www.example.com. 60 IN A 198.51.100.7\n")
    assert [rdata.address for rdata in resolver_for(auth).resolve("www.example.com", "A")] == ["198.51.100.7"]
    assert ask(auth, "example.com", "CAA").rcode() == dns.rcode.NOERROR
    assert ask(auth, "links.example.com", "A").rcode() == dns.rcode.NXDOMAIN
    with pytest.raises(dns.exception.SyntaxError):
        auth.set_zone("www.example.com. 60 IN A not-an-address\n")
    assert ask(auth, "www.example.com", "A").answer


def test_origin_and_relative_names() -> None:
    with DNSResponder("@ IN CAA 0 issue \"ca.test\"\nwww 60 IN A 192.0.2.1\n", origin="customer.test") as responder:
        assert ask(responder, "www.customer.test", "A").answer
        assert ask(responder, "customer.test", "CAA").answer


def test_zone_text_syntax() -> None:
    text = """
$ORIGIN Shop.Test.   ; comment
$TTL 1h
@    IN SOA ns1 hostmaster (
        1 3600 600
        86400 120 )
     30 IN NS ns1
     NS ns2.elsewhere.test.
www  A 192.0.2.1
     A 192.0.2.2
other.test. 5 IN SOA ns1.other.test. hostmaster.other.test. 1 3600 600 86400 60
"""
    with DNSResponder(text) as responder:
        assert sorted(rdata.address for rdata in ask(responder, "www.shop.test", "A").answer[0]) == ["192.0.2.1", "192.0.2.2"]
        assert ask(responder, "www.shop.test", "A").answer[0].ttl == 3600
        ns = ask(responder, "shop.test", "NS").answer[0]
        assert ns.ttl == 30 and len(ns) == 2
        assert ask(responder, "x.other.test", "A").authority[0].name.to_text().lower() == "other.test."


def test_cname_beside_other_data() -> None:
    with DNSResponder("both.example.com. 60 IN CNAME www.example.com.\nboth.example.com. 60 IN TXT \"own\"\n") as responder:
        assert answer_types(ask(responder, "both.example.com", "TXT")) == [("both.example.com", "TXT")]
        assert answer_types(ask(responder, "both.example.com", "A")) == [("both.example.com", "CNAME")]


@pytest.mark.parametrize(("length", "rcode"), [(8, dns.rcode.NOERROR), (9, dns.rcode.SERVFAIL)])
def test_cname_chain_bound(length: int, rcode: dns.rcode.Rcode) -> None:
    chain = "".join(f"c{step}.example.com. 60 IN CNAME c{step + 1}.example.com.\n" for step in range(length))
    with DNSResponder(chain + f"c{length}.example.com. 60 IN A 192.0.2.9\n", recursive=True) as responder:
        response = ask(responder, "c0.example.com", "A")
        assert response.rcode() == rcode
        assert len(response.answer) == (length + 1 if rcode == dns.rcode.NOERROR else 0)


def test_two_servers_disagree() -> None:
    old = "_acme.example.com. 60 IN TXT \"old\"\n"
    new = "_acme.example.com. 60 IN TXT \"new\"\n"
    with DNSResponder(old) as first, DNSResponder(new, address="127.0.0.1") as second:
        assert first.port != second.port
        seen = {resolver_for(server).resolve("_acme.example.com", "TXT")[0].strings for server in (first, second)}
        assert seen == {(b"old",), (b"new",)}


def test_query_log_and_question_case(auth: DNSResponder) -> None:
    auth.clear_queries()
    response = ask(auth, "WwW.Example.COM.", "A")
    ask(auth, "example.com", "CAA", tcp=True)
    assert response.question[0].name.to_text() == "WwW.Example.COM."
    assert auth.queries == [("www.example.com", "A"), ("example.com", "CAA")]
    auth.clear_queries()
    assert auth.queries == []


def test_edns_is_echoed(auth: DNSResponder) -> None:
    assert ask(auth, "www.example.com", "A").edns == -1
    assert ask(auth, "www.example.com", "A", use_edns=0, payload=1232).edns == 0


def test_large_answer_truncated_over_udp_complete_over_tcp() -> None:
    with DNSResponder(BIG_TXT) as responder:
        udp = ask(responder, "big.example.com", "TXT")
        assert udp.flags & dns.flags.TC
        assert len(udp.to_wire()) <= 512
        assert ask(responder, "big.example.com", "TXT", use_edns=0, payload=1232).flags & dns.flags.TC
        tcp = ask(responder, "big.example.com", "TXT", tcp=True)
        assert not tcp.flags & dns.flags.TC and len(tcp.answer[0]) == 30
        assert len(resolver_for(responder).resolve("big.example.com", "TXT")) == 30
        query = dns.message.make_query("big.example.com", "TXT")
        response, used_tcp = dns.query.udp_with_fallback(query, responder.address, timeout=2, port=responder.port)
        assert used_tcp and len(response.answer[0]) == 30


def test_malformed_packets_are_ignored(auth: DNSResponder) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"\x00\x01garbage", (auth.address, auth.port))
    with socket.create_connection((auth.address, auth.port), timeout=2) as conn:
        conn.sendall(b"\x00\x05junk!")
        conn.settimeout(0.3)
        with pytest.raises(socket.timeout):
            conn.recv(2)
    assert ask(auth, "www.example.com", "A").answer
    assert ask(auth, "www.example.com", "A", tcp=True).answer


def test_stop_releases_port() -> None:
    responder = DNSResponder(ZONE).start()
    port = responder.port
    assert ask(responder, "www.example.com", "A", tcp=True).answer
    responder.stop()
    responder.stop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", port))
    with DNSResponder(ZONE, port=port) as again:
        assert again.port == port
        assert ask(again, "www.example.com", "A").answer
