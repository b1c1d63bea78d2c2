"""A small, real DNS server (UDP and TCP) for lab integration tests.

``DNSResponder`` serves records given as zone-file text from background daemon threads, so pytest fixtures can run
it in-process on a loopback address.  It can express what the lab's pebble-challtestsrv cannot: CAA flags, NXDOMAIN,
NS records, per-name/per-type SERVFAIL, REFUSED and timeouts, and several servers that disagree (one responder each).

Answer semantics:

* authoritative mode (default): AA set; exact name and type answer; NODATA (NOERROR, empty answer) when the name or
  one of its descendants exists; NXDOMAIN otherwise; the SOA of the closest enclosing zone, if the data holds one, is
  put in the authority section of negative answers.  CNAME chains are followed within the data (at most 8 CNAMEs).
  A CNAME whose target is outside the data and under no SOA of the data ends the answer with NOERROR.
* recursive mode: same data, RA set and AA clear; a CNAME to a name missing from the data gives NXDOMAIN.
* wildcards (``*.example.com.``) are synthesized for names that do not exist (RFC 4592 closest encloser).
* NS records are plain data: there are no referrals, every name in the text is answered by this server.
* a CNAME may sit beside other data (to model broken customer zones): an exact type match wins over the CNAME.
* faults apply to the queried name and to every name reached through a CNAME chain.
"""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Optional, Union

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rrset
import dns.tokenizer
import dns.ttl

FAULTS = frozenset({"servfail", "timeout", "refused"})
MAX_CNAME_STEPS = 8
DEFAULT_TTL = 300
CLASSIC_UDP_PAYLOAD = 512
OUR_EDNS_PAYLOAD = 1232
TCP_IDLE_TIMEOUT = 5.0
POLL_INTERVAL = 0.1
JOIN_TIMEOUT = 2.0
BIND_ATTEMPTS = 50

FaultKey = tuple[dns.name.Name, Optional[dns.rdatatype.RdataType]]
FaultSpec = Mapping[Union[str, tuple[str, Optional[str]]], str]
Node = dict[dns.rdatatype.RdataType, dns.rdataset.Rdataset]
_FAULT_RCODES = {"servfail": dns.rcode.SERVFAIL, "refused": dns.rcode.REFUSED}


def _as_name(name: str | dns.name.Name) -> dns.name.Name:
    """Return ``name`` as an absolute name; text without a trailing dot is taken as absolute too."""
    if isinstance(name, dns.name.Name):
        return name if name.is_absolute() else name.concatenate(dns.name.root)
    return dns.name.from_text(name, origin=dns.name.root)


def _fault_key(name: str | dns.name.Name, rdtype: str | int | None) -> FaultKey:
    """Normalize a fault's name and optional type into a lookup key (name comparison is case-insensitive)."""
    return _as_name(name), None if rdtype is None else dns.rdatatype.RdataType.make(rdtype)


def _check_fault(fault: str) -> str:
    """Return ``fault`` if it is a known fault kind, else raise ``ValueError``."""
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; expected one of {sorted(FAULTS)}")
    return fault


def _parse_faults(faults: FaultSpec | None) -> dict[FaultKey, str]:
    """Turn the constructor's ``{"name.": fault}`` / ``{("name.", "TYPE"): fault}`` mapping into fault keys."""
    parsed: dict[FaultKey, str] = {}
    for key, fault in (faults or {}).items():
        name, rdtype = (key, None) if isinstance(key, str) else key
        parsed[_fault_key(name, rdtype)] = _check_fault(fault)
    return parsed


def _rrset(owner: dns.name.Name, rdataset: dns.rdataset.Rdataset) -> dns.rrset.RRset:
    """Return an RRset with ``owner`` as its name holding the records of ``rdataset``."""
    return dns.rrset.from_rdata_list(owner, rdataset.ttl, list(rdataset))


class RecordReader:
    """Reads the records of any number of zones from zone-file text.

    Supports ``$ORIGIN`` and ``$TTL``, comments, parentheses, a blank owner (repeat the previous one), ``@``, and
    TTL/class in either order.  Only class IN.  Unlike ``dns.zone``, SOA records may appear at several names.
    """

    def __init__(self, text: str, origin: str | None = None) -> None:
        """Prepare to read ``text``; relative names are made absolute with ``origin`` (root when ``None``)."""
        self._tok = dns.tokenizer.Tokenizer(text, "<zone text>")
        self._origin = _as_name(origin) if origin else dns.name.root
        self._ttl = DEFAULT_TTL
        self._owner: dns.name.Name | None = None

    def records(self) -> Iterator[tuple[dns.name.Name, int, dns.rdata.Rdata]]:
        """Yield ``(owner, ttl, rdata)`` for each record; raise ``dns.exception.SyntaxError`` with the line number."""
        try:
            yield from self._read()
        except (dns.exception.DNSException, ValueError) as exc:
            filename, line = self._tok.where()
            raise dns.exception.SyntaxError(f"{filename}:{line}: {exc}") from exc

    def _read(self) -> Iterator[tuple[dns.name.Name, int, dns.rdata.Rdata]]:
        """Yield records line by line, handling directives on the way."""
        while True:
            token = self._tok.get(want_leading=True)
            if token.is_eof():
                return
            if token.is_identifier() and token.value.startswith("$"):
                self._directive(token.value.upper())
                continue
            if not token.is_eol():
                record = self._record(token)
                if record is not None:
                    yield record

    def _directive(self, directive: str) -> None:
        """Apply a ``$ORIGIN`` or ``$TTL`` line."""
        value = self._tok.get_string()
        if directive == "$ORIGIN":
            self._origin = dns.name.from_text(value, self._origin)
        elif directive == "$TTL":
            self._ttl = dns.ttl.from_text(value)
        else:
            raise dns.exception.SyntaxError(f"unsupported directive {directive}")
        self._tok.get_eol()

    def _record(self, first: dns.tokenizer.Token) -> tuple[dns.name.Name, int, dns.rdata.Rdata] | None:
        """Read the rest of a record line whose first token is ``first`` (a name, or whitespace: previous owner)."""
        if first.is_whitespace():
            token = self._tok.get()
            if token.is_eol_or_eof():
                return None
            if self._owner is None:
                raise dns.exception.SyntaxError("first record has no owner name")
        else:
            self._owner = dns.name.from_text(first.value, self._origin)
            token = self._tok.get()
        ttl, rdtype = self._ttl_and_type(token)
        rdata = dns.rdata.from_text(dns.rdataclass.IN, rdtype, self._tok, self._origin, relativize=False)
        return self._owner, ttl, rdata

    def _ttl_and_type(self, token: dns.tokenizer.Token) -> tuple[int, dns.rdatatype.RdataType]:
        """Read the optional TTL and class (either order) and the type, starting at ``token``."""
        ttl: int | None = None
        while True:
            if not token.is_identifier():
                raise dns.exception.SyntaxError(f"expected TTL, class or type, got {token.value!r}")
            if ttl is None and token.value[:1].isdigit():
                ttl = dns.ttl.from_text(token.value)
            elif token.value.upper() != "IN":
                return (self._ttl if ttl is None else ttl), dns.rdatatype.from_text(token.value)
            token = self._tok.get()


class ZoneData:
    """An immutable snapshot of the served records, indexed by owner name (names of several zones may be mixed)."""

    def __init__(self, zone_text: str, origin: str | None = None) -> None:
        """Parse ``zone_text``; relative names are made absolute with ``origin`` (root when ``None``)."""
        self.nodes: dict[dns.name.Name, Node] = {}
        self.names: set[dns.name.Name] = {dns.name.root}
        for owner, ttl, rdata in RecordReader(zone_text, origin).records():
            node = self.nodes.setdefault(owner, {})
            node.setdefault(rdata.rdtype, dns.rdataset.Rdataset(dns.rdataclass.IN, rdata.rdtype, rdata.covers())).add(rdata, ttl)
            self._add_with_ancestors(owner)

    def _add_with_ancestors(self, owner: dns.name.Name) -> None:
        """Record ``owner`` and all its ancestors as existing names (ancestors without data are empty non-terminals)."""
        name = owner
        while name not in self.names:
            self.names.add(name)
            name = name.parent()

    def exists(self, name: dns.name.Name) -> bool:
        """Return whether ``name`` owns records or has descendants that do."""
        return name in self.names

    def lookup(self, name: dns.name.Name) -> Node | None:
        """Return the records at ``name`` (possibly empty), wildcard records if synthesized, or ``None`` if absent."""
        if self.exists(name):
            return self.nodes.get(name, {})
        encloser = name.parent()
        while not self.exists(encloser):
            encloser = encloser.parent()
        return self.nodes.get(dns.name.from_text("*", origin=encloser))

    def soa_for(self, name: dns.name.Name) -> dns.rrset.RRset | None:
        """Return the SOA of the closest zone enclosing ``name``, with the negative-caching TTL, or ``None``."""
        while True:
            soa = self.nodes.get(name, {}).get(dns.rdatatype.SOA)
            if soa is not None:
                rrset = _rrset(name, soa)
                rrset.ttl = min(soa.ttl, soa[0].minimum)
                return rrset
            if name == dns.name.root:
                return None
            name = name.parent()


@dataclass
class Lookup:
    """The outcome of a lookup: rcode and sections, or a fault to act on instead."""

    rcode: dns.rcode.Rcode = dns.rcode.NOERROR
    answer: list[dns.rrset.RRset] = field(default_factory=list)
    authority: list[dns.rrset.RRset] = field(default_factory=list)
    fault: str | None = None


def _find_fault(faults: Mapping[FaultKey, str], name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> str | None:
    """Return the fault configured for ``name`` and ``rdtype`` (a type-specific fault wins over an any-type one)."""
    return faults.get((name, rdtype)) or faults.get((name, None))


def _negative(answer: Lookup, data: ZoneData, name: dns.name.Name, rcode: dns.rcode.Rcode) -> Lookup:
    """Finish ``answer`` as NODATA or NXDOMAIN, adding the enclosing zone's SOA to the authority section."""
    answer.rcode = rcode
    soa = data.soa_for(name)
    if soa is not None:
        answer.authority.append(soa)
    return answer


def _step(answer: Lookup, data: ZoneData, name: dns.name.Name, qtype: dns.rdatatype.RdataType,
          recursive: bool) -> dns.name.Name | None:
    """Answer ``name`` into ``answer``; return the CNAME target to chase next, or ``None`` when ``answer`` is final."""
    node = data.lookup(name)
    if node is None:
        in_our_zones = not answer.answer or recursive or data.soa_for(name) is not None
        if in_our_zones:
            _negative(answer, data, name, dns.rcode.NXDOMAIN)
        return None
    if qtype == dns.rdatatype.ANY and node:
        answer.answer.extend(_rrset(name, rdataset) for rdataset in node.values())
        return None
    if qtype in node:
        answer.answer.append(_rrset(name, node[qtype]))
        return None
    cname = node.get(dns.rdatatype.CNAME)
    if cname is None or qtype == dns.rdatatype.CNAME:
        _negative(answer, data, name, dns.rcode.NOERROR)
        return None
    answer.answer.append(_rrset(name, cname))
    return cname[0].target


def resolve(data: ZoneData, faults: Mapping[FaultKey, str], qname: dns.name.Name, qtype: dns.rdatatype.RdataType,
            recursive: bool) -> Lookup:
    """Answer ``qname``/``qtype`` from ``data``, following up to 8 CNAMEs and honouring ``faults`` on every name.

    A CNAME loop or a longer chain ends the answer there (recursive mode: SERVFAIL, like a real resolver).
    """
    answer = Lookup()
    name: dns.name.Name | None = qname
    visited: set[dns.name.Name] = set()
    while name is not None:
        if name in visited or len(visited) > MAX_CNAME_STEPS:
            return Lookup(rcode=dns.rcode.SERVFAIL) if recursive else answer
        fault = _find_fault(faults, name, qtype)
        if fault is not None:
            return Lookup(fault=fault)
        visited.add(name)
        name = _step(answer, data, name, qtype, recursive)
    return answer


class DNSResponder:
    """An in-process DNS server on one loopback address and port, for both UDP and TCP.

    Use as a context manager (``with DNSResponder(text) as ns: ...``) or call ``start()`` / ``stop()``.
    ``address`` and ``port`` tell where it listens once started.
    """

    def __init__(self, zone_text: str, address: str = "127.0.0.1", port: int = 0, *, recursive: bool = False,
                 origin: str | None = None, faults: FaultSpec | None = None) -> None:
        """Parse the data now (bad zone text raises here); ``port=0`` picks a free port at ``start()``."""
        self.address = address
        self.port = port
        self.recursive = recursive
        self._requested_port = port
        self._origin = origin
        self._data = ZoneData(zone_text, origin)
        self._faults: dict[FaultKey, str] = _parse_faults(faults)
        self._lock = threading.Lock()
        self._queries: list[tuple[str, str]] = []
        self._stopping = threading.Event()
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._connections: dict[socket.socket, threading.Thread] = {}

    # ----------------------------------------------------------------- control

    def start(self) -> DNSResponder:
        """Bind UDP and TCP on the same port and serve them from daemon threads; return ``self``."""
        if self._udp is not None:
            raise RuntimeError("DNSResponder already started")
        self._stopping.clear()
        self._udp, self._tcp = _bind_pair(self.address, self._requested_port)
        self.port = self._udp.getsockname()[1]
        self._threads = [self._spawn(self._serve_udp, "udp"), self._spawn(self._serve_tcp, "tcp")]
        return self

    def stop(self) -> None:
        """Stop serving, close every socket and join the threads (idempotent, bounded wait)."""
        if self._udp is None or self._tcp is None:
            return
        self._stopping.set()
        for thread in self._threads:
            thread.join(JOIN_TIMEOUT)
        with self._lock:
            connections = dict(self._connections)
        for conn in connections:
            _shutdown(conn)
        for thread in connections.values():
            thread.join(JOIN_TIMEOUT)
        self._udp.close()
        self._tcp.close()
        self._udp = self._tcp = None
        self._threads = []

    def __enter__(self) -> DNSResponder:
        """Start the responder."""
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        """Stop the responder."""
        self.stop()

    def set_zone(self, zone_text: str) -> None:
        """Replace all served data atomically (parsed first, so bad text raises and leaves the old data served)."""
        self._data = ZoneData(zone_text, self._origin)

    def set_fault(self, name: str, rdtype: str | None, fault: str | None) -> None:
        """Make queries for ``name`` (and ``rdtype``, or any type if ``None``) fail with ``fault``; ``None`` clears it."""
        key = _fault_key(name, rdtype)
        with self._lock:
            faults = dict(self._faults)
            if fault is None:
                faults.pop(key, None)
            else:
                faults[key] = _check_fault(fault)
            self._faults = faults

    @property
    def queries(self) -> list[tuple[str, str]]:
        """A copy of the log of ``(qname lowercase without trailing dot, rdtype text)`` in arrival order."""
        with self._lock:
            return list(self._queries)

    def clear_queries(self) -> None:
        """Empty the query log."""
        with self._lock:
            self._queries.clear()

    # ---------------------------------------------------------------- answers

    def handle(self, wire: bytes, max_size: int | None) -> bytes | None:
        """Return the wire response to query ``wire``, or ``None`` to send nothing.

        ``max_size`` is the TCP limit; ``None`` means UDP, limited by the query's advertised payload (TC if cut).
        """
        try:
            query = dns.message.from_wire(wire)
        except (dns.exception.DNSException, ValueError):
            return None
        if query.flags & dns.flags.QR:
            return None
        response = self._respond(query)
        if response is None:
            return None
        limit = max_size or (max(query.payload, CLASSIC_UDP_PAYLOAD) if query.edns >= 0 else CLASSIC_UDP_PAYLOAD)
        return response.to_wire(max_size=limit, prefer_truncation=True)

    def _respond(self, query: dns.message.Message) -> dns.message.Message | None:
        """Build the response message for a parsed query, or ``None`` for a timeout fault."""
        response = dns.message.make_response(query, recursion_available=self.recursive, our_payload=OUR_EDNS_PAYLOAD)
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
            return response
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        self._log(question.name, question.rdtype)
        if question.rdclass != dns.rdataclass.IN:
            response.set_rcode(dns.rcode.REFUSED)
            return response
        answer = resolve(self._data, self._faults, question.name, question.rdtype, self.recursive)
        return self._fill(response, answer)

    def _fill(self, response: dns.message.Message, answer: Lookup) -> dns.message.Message | None:
        """Copy ``answer`` into ``response``; apply its fault; set AA in authoritative mode."""
        if answer.fault == "timeout":
            return None
        if answer.fault is not None:
            response.set_rcode(_FAULT_RCODES[answer.fault])
            return response
        response.set_rcode(answer.rcode)
        response.answer.extend(answer.answer)
        response.authority.extend(answer.authority)
        if not self.recursive and answer.rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            response.flags |= dns.flags.AA
        return response

    def _log(self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> None:
        """Append one entry to the query log."""
        entry = (qname.to_text(omit_final_dot=True).lower(), dns.rdatatype.to_text(rdtype))
        with self._lock:
            self._queries.append(entry)

    # ---------------------------------------------------------------- serving

    def _spawn(self, target: Callable[..., None], label: str, *args: object) -> threading.Thread:
        """Start a daemon thread running ``target(*args)``."""
        thread = threading.Thread(target=target, args=args, name=f"dnsresponder-{label}-{self.port}", daemon=True)
        thread.start()
        return thread

    def _serve_udp(self) -> None:
        """Answer datagrams one by one until stopped; handling is synchronous and never blocks."""
        udp = self._udp
        assert udp is not None
        while not self._stopping.is_set():
            try:
                wire, peer = udp.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            reply = self._safe_handle(wire, None)
            if reply is not None:
                _send_quietly(udp.sendto, reply, peer)

    def _serve_tcp(self) -> None:
        """Accept connections until stopped, serving each in its own short-lived thread."""
        tcp = self._tcp
        assert tcp is not None
        while not self._stopping.is_set():
            try:
                conn, _peer = tcp.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(TCP_IDLE_TIMEOUT)
            with self._lock:
                self._connections[conn] = self._spawn(self._serve_connection, "conn", conn)

    def _serve_connection(self, conn: socket.socket) -> None:
        """Answer length-framed queries on one TCP connection until EOF, idle timeout, error or stop."""
        try:
            while not self._stopping.is_set():
                wire = _read_frame(conn)
                if wire is None:
                    return
                reply = self._safe_handle(wire, 65535)
                if reply is not None and not _send_quietly(conn.sendall, len(reply).to_bytes(2, "big") + reply):
                    return
        finally:
            with self._lock:
                self._connections.pop(conn, None)
            conn.close()

    def _safe_handle(self, wire: bytes, max_size: int | None) -> bytes | None:
        """Run ``handle`` so that no packet, however odd, can kill a serving thread."""
        try:
            return self.handle(wire, max_size)
        except Exception:  # noqa: BLE001 - a test server must survive any input; the packet is dropped
            return None


def _bind_pair(address: str, port: int) -> tuple[socket.socket, socket.socket]:
    """Bind a UDP and a listening TCP socket on the same ``port`` (0: retry until one port is free for both)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    for _attempt in range(BIND_ATTEMPTS):
        udp = socket.socket(family, socket.SOCK_DGRAM)
        tcp = socket.socket(family, socket.SOCK_STREAM)
        try:
            udp.bind((address, port))
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((address, udp.getsockname()[1]))
            tcp.listen(16)
        except OSError as exc:
            udp.close()
            tcp.close()
            if port or exc.errno != errno.EADDRINUSE:
                raise
            continue
        udp.settimeout(POLL_INTERVAL)
        tcp.settimeout(POLL_INTERVAL)
        return udp, tcp
    raise OSError(errno.EADDRINUSE, f"no port free for both UDP and TCP on {address}")


def _read_exact(conn: socket.socket, size: int) -> bytes | None:
    """Read exactly ``size`` bytes, or return ``None`` on EOF, timeout or error."""
    chunks = b""
    while len(chunks) < size:
        try:
            chunk = conn.recv(size - len(chunks))
        except OSError:
            return None
        if not chunk:
            return None
        chunks += chunk
    return chunks


def _read_frame(conn: socket.socket) -> bytes | None:
    """Read one 2-byte-length-prefixed DNS message from a TCP connection."""
    header = _read_exact(conn, 2)
    return None if header is None else _read_exact(conn, int.from_bytes(header, "big"))


def _send_quietly(send: Callable[..., object], *args: object) -> bool:
    """Call ``send(*args)``; return ``False`` instead of raising if the peer is gone."""
    try:
        send(*args)
    except OSError:
        return False
    return True


def _shutdown(conn: socket.socket) -> None:
    """Wake a thread blocked reading ``conn`` by shutting the connection down."""
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
