# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# NOTE: private to the mailops.linkcert collection; not a public API.

"""A small wrapper around dnspython for the collection's read-only checks.

* one ``Lookup`` value per question, with a status instead of exceptions, so a
  DNS failure becomes that domain's result and never the module's failure;
* bounded retries (timeouts and SERVFAIL) inside a per-query deadline;
* a per-run cache shared by worker threads: parents such as ``com`` are asked
  once however many domains climb through them;
* "views": the recursive resolvers, or one authoritative server asked
  directly (recursion off), so a half-propagated change can be seen.
"""

from __future__ import annotations

import ipaddress
import threading
import time
import typing as t
from concurrent.futures import Future

from ansible_collections.mailops.linkcert.plugins.module_utils._errors import InputError, short_error

try:
    import dns.exception
    import dns.flags
    import dns.message
    import dns.name
    import dns.query
    import dns.rcode
    import dns.rdatatype
    import dns.resolver
    HAS_DNSPYTHON = True
    DNSPYTHON_IMPORT_ERROR: t.Optional[BaseException] = None
    try:
        import dns.nameserver  # dnspython 2.4+: one port per server
        HAS_NAMESERVER_OBJECTS = True
    except ImportError:  # dnspython 2.3 (Debian 12): nameserver_ports
        HAS_NAMESERVER_OBJECTS = False
except ImportError as exc:  # pragma: no cover - reported by the module
    HAS_DNSPYTHON = False
    DNSPYTHON_IMPORT_ERROR = exc

OK = "ok"
NODATA = "nodata"
NXDOMAIN = "nxdomain"
SERVFAIL = "servfail"
TIMEOUT = "timeout"
REFUSED = "refused"
ERROR = "error"
FAILED_STATUSES = frozenset((SERVFAIL, TIMEOUT, REFUSED, ERROR))
MAX_CHAIN = 16


class Lookup:
    """The outcome of one question: records, or why there are none."""

    __slots__ = ("name", "rdtype", "status", "rdata", "chain", "server", "error")

    def __init__(self, name: str, rdtype: str, status: str, rdata: t.Optional[t.List[t.Any]] = None,
                 chain: t.Optional[t.List[str]] = None, server: t.Optional[str] = None, error: t.Optional[str] = None) -> None:
        self.name = name
        self.rdtype = rdtype
        self.status = status
        self.rdata = rdata or []
        # Names passed through, the queried name first; the last one is the
        # canonical name that holds the records.
        self.chain = chain or [name]
        self.server = server
        self.error = error

    @property
    def failed(self) -> bool:
        return self.status in FAILED_STATUSES

    @property
    def canonical(self) -> str:
        return self.chain[-1]

    @property
    def aliased(self) -> bool:
        return len(self.chain) > 1

    def texts(self) -> t.List[str]:
        """TXT records with their character-strings joined (RFC 7208 3.3)."""
        return [b"".join(r.strings).decode("utf-8", "replace") for r in self.rdata]

    def addresses(self) -> t.List[str]:
        return sorted(r.address for r in self.rdata)

    def describe_failure(self) -> str:
        what = {
            SERVFAIL: "SERVFAIL", TIMEOUT: "a timeout", REFUSED: "REFUSED", ERROR: "an error",
        }.get(self.status, self.status)
        text = "%s lookup for %s failed with %s" % (self.rdtype, self.name, what)
        if self.server:
            text += " from %s" % self.server
        if self.error:
            text += " (%s)" % self.error
        return text


def parse_server(spec: t.Any, default_port: int = 53) -> t.Tuple[str, int]:
    """``ip``, ``ip:port``, ``[v6]:port`` or a bare IPv6 address → (address, port)."""
    if not isinstance(spec, str) or not spec.strip():
        raise InputError("resolver %r is not an address; use ip or ip:port" % (spec,), item=str(spec))
    text = spec.strip()
    port = default_port
    host = text
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise InputError("resolver %r has an unclosed '['" % spec, item=spec)
        host = text[1:end]
        rest = text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise InputError("resolver %r: expected ':port' after ']'" % spec, item=spec)
            port = _parse_port(rest[1:], spec)
    elif text.count(":") == 1:
        host, _sep, port_text = text.partition(":")
        port = _parse_port(port_text, spec)
    try:
        address = str(ipaddress.ip_address(host))
    except ValueError:
        raise InputError("resolver %r is not an IP address (host names are not accepted for resolvers)" % spec, item=spec) from None
    return address, port


def _parse_port(text: str, spec: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise InputError("resolver %r has an invalid port %r" % (spec, text), item=spec)
    return int(text)


def _chain_from_message(message: t.Any, qname: str, rdtype: str) -> t.Tuple[t.List[str], t.List[t.Any]]:
    """Follow CNAMEs in a response's answer section from ``qname``.

    Returns the chain of names and the records of ``rdtype`` at its end.
    """
    by_owner: t.Dict[t.Tuple[str, int], t.Any] = {}
    for rrset in message.answer:
        by_owner[(rrset.name.to_text(omit_final_dot=True).lower(), rrset.rdtype)] = rrset
    want = dns.rdatatype.from_text(rdtype)
    chain = [qname]
    current = qname
    for _step in range(MAX_CHAIN):
        rrset = by_owner.get((current, want))
        if rrset is not None:
            return chain, list(rrset)
        alias = by_owner.get((current, dns.rdatatype.CNAME))
        if alias is None or want == dns.rdatatype.CNAME:
            break
        current = next(iter(alias)).target.to_text(omit_final_dot=True).lower()
        if current in chain:
            break
        chain.append(current)
    return chain, []


class _Cache:
    """A thread-safe memo of lookups (and zone apexes); concurrent askers of one key share one query."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: t.Dict[t.Tuple[t.Any, ...], Future] = {}

    def get(self, key: t.Tuple[t.Any, ...], compute: t.Callable[[], t.Any]) -> t.Any:
        with self._lock:
            future = self._entries.get(key)
            owner = future is None
            if owner:
                future = Future()
                self._entries[key] = future
        if future is None:  # pragma: no cover - set above under the lock
            raise RuntimeError("lookup cache lost an entry")
        if owner:
            try:
                future.set_result(compute())
            except BaseException as exc:  # LookupFailed from zone_for: every asker sees it
                future.set_exception(exc)
        return future.result()


class View:
    """Something that answers ``lookup(name, rdtype)``."""

    label = "resolver"

    def lookup(self, name: str, rdtype: str) -> Lookup:  # pragma: no cover - interface
        raise NotImplementedError


class RecursiveView(View):
    """The configured recursive resolvers (or the system's), with retries and a cache."""

    def __init__(self, servers: t.Optional[t.Sequence[t.Tuple[str, int]]] = None, timeout: float = 5.0,
                 retries: int = 2, cache: bool = True) -> None:
        if servers:
            resolver = dns.resolver.Resolver(configure=False)
            if HAS_NAMESERVER_OBJECTS:
                resolver.nameservers = [dns.nameserver.Do53Nameserver(addr, port) for addr, port in servers]
            else:
                resolver.nameservers = [server[0] for server in servers]
                resolver.nameserver_ports = dict(servers)
            self.label = ", ".join(_fmt_server(addr, port) for addr, port in servers)
        else:
            resolver = dns.resolver.Resolver(configure=True)
            self.label = "system resolver"
        resolver.timeout = max(0.2, timeout / 2)
        resolver.lifetime = timeout
        resolver.cache = None
        self._resolver = resolver
        self._timeout = timeout
        self._retries = max(0, retries)
        self._cache = _Cache() if cache else None

    def lookup(self, name: str, rdtype: str) -> Lookup:
        if self._cache is None:
            return self._lookup(name, rdtype)
        return self._cache.get((name, rdtype), lambda: self._lookup(name, rdtype))

    def _lookup(self, name: str, rdtype: str) -> Lookup:
        deadline = time.monotonic() + self._timeout * (self._retries + 1)
        result = self._once(name, rdtype)
        attempt = 0
        while result.status in (SERVFAIL, TIMEOUT) and attempt < self._retries and time.monotonic() < deadline:
            attempt += 1
            time.sleep(min(0.1 * (3 ** (attempt - 1)), max(0.0, deadline - time.monotonic())))
            result = self._once(name, rdtype)
        return result

    def _once(self, name: str, rdtype: str) -> Lookup:
        try:
            answer = self._resolver.resolve(name + ".", rdtype, raise_on_no_answer=False, lifetime=self._timeout)
        except dns.resolver.NXDOMAIN as exc:
            chain = [name]
            for response in (exc.responses() or {}).values():
                chain, _records = _chain_from_message(response, name, rdtype)
                break
            return Lookup(name, rdtype, NXDOMAIN, chain=chain, server=self.label)
        except dns.resolver.NoNameservers as exc:
            return Lookup(name, rdtype, _status_from_no_nameservers(exc), server=self.label)
        except dns.exception.Timeout:
            return Lookup(name, rdtype, TIMEOUT, server=self.label, error="no answer within %gs" % self._timeout)
        except dns.exception.DNSException as exc:
            return Lookup(name, rdtype, ERROR, server=self.label, error=short_error(exc))
        chain, records = _chain_from_message(answer.response, name, rdtype)
        return Lookup(name, rdtype, OK if records else NODATA, rdata=records, chain=chain, server=self.label)

    def zone_for(self, name: str) -> str:
        """The apex of the zone holding ``name`` (SOA climb through the resolvers), once per name and run."""
        if self._cache is None:
            return self._zone_for(name)
        return self._cache.get(("zone", name), lambda: self._zone_for(name))

    def _zone_for(self, name: str) -> str:
        try:
            zone = dns.resolver.zone_for_name(name + ".", resolver=self._resolver, lifetime=self._timeout * 2)
        except dns.exception.DNSException as exc:
            raise LookupFailed("cannot find the zone of %s: %s" % (name, short_error(exc))) from None
        return zone.to_text(omit_final_dot=True).lower()


class LookupFailed(Exception):
    """Discovery of authoritative servers failed; carried into a record's result."""


def _status_from_no_nameservers(exc: t.Any) -> str:
    text = str(exc)
    if "REFUSED" in text:
        return REFUSED
    if "SERVFAIL" in text:
        return SERVFAIL
    return ERROR


def _fmt_server(address: str, port: int) -> str:
    host = "[%s]" % address if ":" in address else address
    return host if port == 53 else "%s:%d" % (host, port)


class AuthoritativeView(View):
    """One authoritative server, asked directly with recursion off.

    Names outside ``zone`` and CNAME targets that leave the zone are answered
    by ``fallback`` (the recursive view), as a resolver would chase them.
    """

    def __init__(self, zone: str, server_name: str, address: str, port: int, fallback: RecursiveView, timeout: float = 5.0) -> None:
        self.zone = zone
        self.server_name = server_name
        self.address = address
        self.port = port
        self.fallback = fallback
        self.timeout = timeout
        self.label = "%s (%s)" % (server_name, _fmt_server(address, port))
        self._cache = _Cache()

    def lookup(self, name: str, rdtype: str) -> Lookup:
        return self._cache.get((name, rdtype), lambda: self._lookup(name, rdtype))

    def _in_zone(self, name: str) -> bool:
        return name == self.zone or name.endswith("." + self.zone)

    def _lookup(self, name: str, rdtype: str) -> Lookup:
        if not self._in_zone(name):
            return self.fallback.lookup(name, rdtype)
        query = dns.message.make_query(name + ".", rdtype)
        query.flags &= ~dns.flags.RD
        try:
            response, _used_tcp = dns.query.udp_with_fallback(query, self.address, timeout=self.timeout, port=self.port)
        except dns.exception.Timeout:
            return Lookup(name, rdtype, TIMEOUT, server=self.label, error="no answer within %gs" % self.timeout)
        except (OSError, dns.exception.DNSException) as exc:
            return Lookup(name, rdtype, ERROR, server=self.label, error=short_error(exc))
        rcode = response.rcode()
        if rcode == dns.rcode.SERVFAIL:
            return Lookup(name, rdtype, SERVFAIL, server=self.label)
        if rcode == dns.rcode.REFUSED:
            return Lookup(name, rdtype, REFUSED, server=self.label)
        chain, records = _chain_from_message(response, name, rdtype)
        if rcode == dns.rcode.NXDOMAIN:
            return Lookup(name, rdtype, NXDOMAIN, chain=chain, server=self.label)
        if rcode != dns.rcode.NOERROR:
            return Lookup(name, rdtype, ERROR, server=self.label, error=dns.rcode.to_text(rcode))
        if not records and len(chain) > 1 and not self._in_zone(chain[-1]):
            onward = self.fallback.lookup(chain[-1], rdtype)
            return Lookup(name, rdtype, onward.status, rdata=onward.rdata, chain=chain[:-1] + onward.chain,
                          server=self.label, error=onward.error)
        return Lookup(name, rdtype, OK if records else NODATA, rdata=records, chain=chain, server=self.label)


def authoritative_views(resolver: RecursiveView, name: str, port: int = 53, timeout: float = 5.0,
                        servers: t.Optional[t.Sequence[t.Tuple[str, int]]] = None) -> t.List[AuthoritativeView]:
    """Views of every authoritative server of the zone holding ``name``.

    With ``servers`` given, those are used instead of the zone's NS set.
    Raises LookupFailed when the zone or its servers cannot be found.
    """
    zone = resolver.zone_for(name)
    if servers:
        return [AuthoritativeView(zone, _fmt_server(a, p), a, p, resolver, timeout) for a, p in servers]
    ns = resolver.lookup(zone, "NS")
    if ns.failed or not ns.rdata:
        raise LookupFailed("cannot list the authoritative servers of %s: %s" % (zone, ns.describe_failure() if ns.failed else "no NS records"))
    views = []
    for host in sorted(r.target.to_text(omit_final_dot=True).lower() for r in ns.rdata):
        addresses = []
        for rdtype in ("A", "AAAA"):
            found = resolver.lookup(host, rdtype)
            addresses.extend(found.addresses() if found.status == OK else [])
        if not addresses:
            raise LookupFailed("authoritative server %s of %s has no address" % (host, zone))
        views.extend(AuthoritativeView(zone, host, addr, port, resolver, timeout) for addr in addresses)
    return views


def make_resolver(resolvers: t.Optional[t.Sequence[str]], timeout: float, retries: int = 2) -> RecursiveView:
    """Build the recursive view from the modules' ``resolvers`` option."""
    servers = [parse_server(spec) for spec in resolvers] if resolvers else None
    return RecursiveView(servers, timeout=timeout, retries=retries)
