"""Hostile input (issue 6): every entry point that takes a domain name, run as Ansible runs it.

Each hostile name goes through each entry point on its own (one test id per pair; the modules run as
processes with an arguments file, the filter through ``ansible``) and must be
refused with the validator's message naming the field and the value, before any side effect:

* no DNS query: the resolvers are a DNSResponder whose query log must stay empty;
* no CA request: ``acme_directory`` is a TCP port that counts the connections it accepts;
* no file write: the roots are fresh empty directories that must stay empty, nothing else appears
  under the test's directory, and no file named after the hostile path appears outside it.

A valid item is listed before the hostile one where the option is a list, so a module that acted on
items one at a time would show a side effect.  A control test per entry point runs a valid name through
the same instruments and shows they do see the side effects.  Names that are merely unusual (upper case,
a trailing dot, a valid internationalised name) are accepted and normalised, certificates included.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import pytest
from cryptography import x509
from labtools import BIN, COLLECTIONS, REPO, ModuleRun, acme_args, ansible_env, run_module

pytestmark = [pytest.mark.lab, pytest.mark.integration, pytest.mark.faults]

ADDR = "127.0.0.1"
EDGE = "edge.esp.test"
BOUNCES = "bounces.esp.test"
FIRST = "ok.example.com"  # the valid item listed before the hostile one
ROOTS = ("live", "state", "webroot")
LONG_NAME = ".".join(["a" * 63] * 3 + ["b" * 62])  # 254 octets, one more than a name may have
assert len(LONG_NAME) == 254

ZONE = """
$TTL 300
example.com.          IN SOA   ns1.example.com. hostmaster.example.com. 1 3600 600 86400 60
example.com.          IN CAA   0 issue "letsencrypt.org"
ok.example.com.       IN CNAME edge.esp.test.
www.ok.example.com.   IN CNAME edge.esp.test.
links.example.com.    IN CNAME edge.esp.test.
bounce.example.com.   IN CNAME bounces.esp.test.
em.example.com.       IN TXT   "v=spf1 include:spf.esp.test ~all"
esp.test.             IN SOA   ns1.esp.test. hostmaster.esp.test. 1 3600 600 86400 60
edge.esp.test.        IN A     127.0.0.1
bounces.esp.test.     IN A     127.0.0.1
input.test.           IN SOA   ns1.input.test. hostmaster.input.test. 1 3600 600 86400 60
input.test.           IN CAA   0 issue "letsencrypt.org"
links.upper.input.test.         IN CNAME edge.esp.test.
links.dot.input.test.           IN CNAME edge.esp.test.
xn--bcher-kva.input.test.       IN CNAME edge.esp.test.
xn--bcher-kva.mixed.input.test. IN CNAME edge.esp.test.
"""


class Hostile(NamedTuple):
    id: str
    raw: str
    tail: str  # the message after "FIELD 'RAW' "
    skip: Tuple[str, ...] = ()  # entry points where the name is legitimate


# What each hostile name is, and the validator's words for it (plugins/module_utils/_names.py).
HOSTILE = [
    Hostile("traversal-dotdot-slash", "../x", "contains the character '/', which is not allowed in a host name"),
    Hostile("traversal-slash", "a/b", "contains the character '/', which is not allowed in a host name"),
    Hostile("traversal-absolute", "/etc/passwd", "contains the character '/', which is not allowed in a host name"),
    Hostile("traversal-dotdot", "..", "has an empty label"),
    Hostile("nginx-semicolon", "links.example.com;include /etc/passwd", "contains the character ';'"),
    Hostile("nginx-open-brace", "links{.example.com", "contains the character '{'"),
    Hostile("nginx-close-brace", "}links.example.com", "contains the character '}'"),
    Hostile("quote-single", "links'.example.com", "contains the character \"'\""),
    Hostile("quote-double", 'links".example.com', "contains the character '\"'"),
    Hostile("space", "links example.com", "contains the character ' '"),
    Hostile("newline-inside", "links.example.com\nserver_name evil.example", "contains the character '\\n'"),
    Hostile("newline-trailing", "links.example.com\n", "has leading or trailing white space"),
    Hostile("shell-dollar", "$(id).example.com", "contains the character '$'"),
    Hostile("shell-backtick", "`id`.example.com", "contains the character '`'"),
    Hostile("shell-option", "-rf.example.com", "has a label '-rf' that starts or ends with a hyphen"),
    Hostile("nul-byte", "links\x00.example.com", "has a label 'links\\x00' with characters outside letters, digits and hyphens"),
    Hostile("label-64", "x" * 64 + ".example.com", "has a label of 64 octets; the limit is 63"),
    Hostile("name-254", LONG_NAME, "is 254 octets long; the limit is 253"),
    Hostile("empty-label", "a..b", "has an empty label"),
    Hostile("ipv4", "192.0.2.1", "is an IP address; a host name is needed"),
    Hostile("ipv4-trailing-dot", "192.0.2.1.", "is an IP address; a host name is needed"),
    Hostile("ipv6", "2001:db8::1", "is an IP address; a host name is needed"),
    Hostile("ipv6-brackets", "[2001:db8::1]", "is an IP address; a host name is needed"),
    Hostile("wildcard", "*.example.com", "is a wildcard, which is not allowed here (HTTP-01 cannot validate wildcards)",
            skip=("caa_check",)),  # caa_check checks wildcards on purpose (issuewild)
    Hostile("idna-symbol", "\u2603.example.com", "is not a valid internationalised domain name: "),
    Hostile("idna-bidi-override", "\u202eexample.com", "is not a valid internationalised domain name: "),
    Hostile("idna-bad-a-label", "xn--zz.example.com", "has an invalid A-label 'xn--zz': "),
]

# (test id, as typed, normalised)
ACCEPTED = [
    ("uppercase", "LINKS.Upper.Input.Test", "links.upper.input.test"),
    ("trailing-dot", "links.dot.input.test.", "links.dot.input.test"),
    ("unicode", "b\u00fccher.input.test", "xn--bcher-kva.input.test"),
    ("unicode-uppercase-dot", "B\u00dcCHER.Mixed.Input.Test.", "xn--bcher-kva.mixed.input.test"),
]


# ------------------------------------------------------------------ instruments

class CountingPort:
    """A TCP port standing in for the CA: accepts, counts and closes every connection."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind((ADDR, 0))
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self.port = self._sock.getsockname()[1]
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="counting-ca-%d" % self.port, daemon=True)
        self._thread.start()

    @property
    def directory(self) -> str:
        return "https://%s:%d/dir" % (ADDR, self.port)

    @property
    def connections(self) -> int:
        """Connections so far, including any the kernel completed but the thread has not accepted yet."""
        while self._accept_one():
            pass
        with self._lock:
            return self._count

    def _accept_one(self) -> bool:
        try:
            conn, _peer = self._sock.accept()
        except OSError:  # socket.timeout included: nothing pending
            return False
        with self._lock:
            self._count += 1
        conn.close()
        return True

    def _serve(self) -> None:
        while not self._stopping.is_set():
            self._accept_one()

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(2.0)
        self._sock.close()


def tree(path: Path) -> List[str]:
    """Every file and directory below ``path``, relative, sorted."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def named_entries(root: Path) -> List[str]:
    """The entries of a root named after a domain (not the hidden .locks, .versions, nor accounts and the key)."""
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and p.name not in ("accounts", "account.key"))


def _stat(path: str) -> Optional[Tuple[Any, ...]]:
    """What a file is: its mode, size, mtime and content digest; a directory's mode (others may add to /tmp); a link's
    target. No inode numbers: they are reused once a file is gone, so they prove nothing about a file's identity."""
    try:
        st = os.lstat(path)
    except (OSError, ValueError):
        return None
    if stat.S_ISLNK(st.st_mode):
        return ("link", os.readlink(path))
    if not stat.S_ISREG(st.st_mode):
        return ("other", st.st_mode)
    with open(path, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    return ("file", st.st_mode, st.st_size, st.st_mtime_ns, digest)


def escape_paths(roots: Dict[str, Path], raw: str) -> List[str]:
    """Where a file named after ``raw`` would land if a root were joined with it unchecked."""
    paths = ["/etc/passwd"]
    for root in [str(r) for r in roots.values()] + ["/tmp", "/etc", "/"]:
        for name in (raw, raw + ".json", raw + ".pem", raw + ".lock", ".locks/%s.lock" % raw, ".versions/" + raw):
            paths.append(os.path.normpath(os.path.join(root, name)))
    return sorted(set(paths))


class Context:
    """One case's roots, resolver and CA stand-in, and what the file system looked like before."""

    def __init__(self, tmp_path: Path, dns: Any, ca: CountingPort) -> None:
        self.base = tmp_path
        self.roots = {name: tmp_path / "roots" / name for name in ROOTS}
        for root in self.roots.values():
            root.mkdir(parents=True)
        self.dns = dns
        self.ca = ca
        self.resolver = "%s:%d" % (dns.address, dns.port)
        self._watched: Dict[str, Any] = {}
        self._tree: List[str] = []
        self._passwd = ""

    def snapshot(self, raw: str) -> None:
        self._tree = tree(self.base)
        self._watched = {path: _stat(path) for path in escape_paths(self.roots, raw)}
        self._passwd = hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest()

    def assert_untouched(self) -> None:
        assert self.dns.queries == [], "DNS queried before the input was refused"
        assert self.ca.connections == 0, "the CA was contacted before the input was refused"
        for name, root in self.roots.items():
            assert root.is_dir() and list(root.iterdir()) == [], "%s root written to" % name
        assert tree(self.base) == self._tree, "files appeared outside the roots"
        assert {path: _stat(path) for path in self._watched} == self._watched, "a file named after the hostile path changed"
        assert hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest() == self._passwd


@pytest.fixture
def ctx(tmp_path, responder, lab):
    ca = CountingPort()
    try:
        yield Context(tmp_path, responder(ZONE, recursive=True), ca)
    finally:
        ca.close()


# ------------------------------------------------------------------ entry points

def run_filter(raw: str) -> ModuleRun:
    """``{{ raw | mailops.linkcert.domain_name }}`` in an ad-hoc debug task; the name comes in as an extra var."""
    cmd = [str(BIN / "ansible"), "localhost", "-m", "ansible.builtin.debug", "-a", "msg={{ name | mailops.linkcert.domain_name }}",
           "-e", json.dumps({"name": raw}), "-e", "ansible_python_interpreter=%s" % sys.executable, "-c", "local"]
    env = ansible_env({"ANSIBLE_CALLBACK_RESULT_FORMAT": "json"})
    return ModuleRun(subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=REPO, check=False))


class DirectRun(NamedTuple):
    state: str
    rc: int
    result: Dict[str, Any]
    stdout: str


def run_direct(module: str, args: Dict[str, Any]) -> DirectRun:
    """The module's own code (AnsibleModule's argument checks, then main()) run as a process with an arguments file, as
    ansible-test's module tests do: the same checks as through ``ansible``, without its 1.5 s start per call. The
    hostile table has some 250 cases; the control test and the accepted names go through ``ansible`` itself."""
    args_file = Path(REPO / ".work" / ("faults-input-%d-%d.json" % (os.getpid(), threading.get_ident())))
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    try:
        proc = subprocess.run([sys.executable, str(REPO / "plugins" / "modules" / (module + ".py")), str(args_file)],
                              env=ansible_env({"PYTHONPATH": str(COLLECTIONS)}), capture_output=True, text=True, timeout=120,
                              cwd=REPO, check=False)
    finally:
        args_file.unlink()
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError("no module result:\n%s\n%s" % (proc.stdout, proc.stderr)) from None
    state = "FAILED!" if result.get("failed") else ("CHANGED" if result.get("changed") else "SUCCESS")
    return DirectRun(state, proc.returncode, result, proc.stdout)


Runner = Callable[[str, Dict[str, Any]], Any]


def _acme(lab: Any, ctx: Context, certificates: List[Dict[str, Any]], run: Runner = run_direct) -> Any:
    args = acme_args(lab, ctx.roots["live"], ctx.roots["state"], certificates, acme_directory=ctx.ca.directory,
                     webroot=str(ctx.roots["webroot"]), resolvers=[ctx.resolver], timeout=10)
    return run("acme_http01_cert", args)


def _verify(ctx: Context, domains: List[Dict[str, Any]], run: Runner = run_direct) -> Any:
    return run("sending_domain_verify", {"domains": domains, "resolvers": [ctx.resolver], "timeout": 2, "retries": 0})


def _status(name: str) -> Dict[str, Any]:
    return {"domain": name, "ssl_status": "unknown", "label": "SSL Unknown", "reason": "dns_missing", "message": "not verified yet"}


class Entry(NamedTuple):
    id: str
    field: str  # how the message names the field
    run: Callable[[Any, Context, str], ModuleRun]


ENTRIES = [
    Entry("acme_http01_cert-domain", "certificates[2].domain",
          lambda lab, ctx, raw: _acme(lab, ctx, [{"domain": FIRST}, {"domain": raw}])),
    Entry("acme_http01_cert-alt_names", "certificates[1].alt_names item",
          lambda lab, ctx, raw: _acme(lab, ctx, [{"domain": FIRST, "alt_names": ["www." + FIRST, raw]}])),
    Entry("sending_domain_verify-name", "domains[2].name",
          lambda lab, ctx, raw: _verify(ctx, [{"name": FIRST, "cname": EDGE}, {"name": raw, "cname": EDGE}])),
    Entry("sending_domain_verify-cname", "domains[2].cname",
          lambda lab, ctx, raw: _verify(ctx, [{"name": FIRST, "cname": EDGE}, {"name": "links.example.com", "cname": raw}])),
    Entry("sending_domain_verify-return_path.name", "domains[2].return_path.name",
          lambda lab, ctx, raw: _verify(ctx, [{"name": FIRST, "cname": EDGE}, {"name": "em.example.com", "return_path": {"name": raw, "cname": BOUNCES}}])),
    Entry("sending_domain_verify-return_path.cname", "domains[2].return_path.cname",
          lambda lab, ctx, raw: _verify(ctx, [{"name": FIRST, "cname": EDGE},
                                              {"name": "em.example.com", "return_path": {"name": "bounce.example.com", "cname": raw}}])),
    Entry("caa_check-domains", "item 2: domain name",
          lambda lab, ctx, raw: run_direct("caa_check", {"domains": [FIRST, raw], "resolvers": [ctx.resolver], "timeout": 2, "retries": 0})),
    Entry("domain_status-domain", "statuses[2].domain",
          lambda lab, ctx, raw: run_direct("domain_status", {"state_root": str(ctx.roots["state"]), "statuses": [_status(FIRST), _status(raw)]})),
    Entry("domain_name-filter", "domain name", lambda lab, ctx, raw: run_filter(raw)),
]

CASES = [pytest.param(entry, case, id="%s-%s" % (entry.id, case.id))
         for case in HOSTILE for entry in ENTRIES if entry.id.split("-")[0] not in case.skip]


# ------------------------------------------------------------------ hostile names

@pytest.mark.parametrize("entry,case", CASES)
def test_hostile_name_refused_before_any_side_effect(lab, ctx, entry, case):
    ctx.snapshot(case.raw)
    run = entry.run(lab, ctx, case.raw)
    assert run.state == "FAILED!" and run.rc != 0, run.stdout
    expected = "%s %r %s" % (entry.field, case.raw, case.tail)
    assert expected in run.result["msg"], run.result["msg"]
    if entry.id != "domain_name-filter":
        assert run.result["msg"].startswith(expected), run.result["msg"]
        assert (run.result["reason"], run.result["item"]) == ("invalid_input", case.raw)
    ctx.assert_untouched()


def test_every_hostile_name_reaches_every_entry_point():
    """The table is the contract: a new entry point or name must not silently drop out of it."""
    assert len(CASES) == len(HOSTILE) * len(ENTRIES) - sum(len(case.skip) for case in HOSTILE)
    assert len({case.raw for case in HOSTILE}) == len(HOSTILE)


# ------------------------------------------------------------------ the instruments see side effects

@pytest.mark.parametrize("run", [run_module, run_direct], ids=["through-ansible", "direct"])
def test_control_valid_names_do_reach_dns_ca_and_disk(lab, ctx, run):
    """The same calls with valid names only, both ways the table runs modules: the query log, the CA port and the
    roots all see them, so the empty logs and roots of the hostile cases mean something."""
    acme = _acme(lab, ctx, [{"domain": FIRST}, {"domain": "links.example.com"}], run)
    assert ctx.ca.connections >= 1, acme.stdout
    assert list(ctx.roots["state"].iterdir()), "the account key and locks live in state_root"

    ok = _verify(ctx, [{"name": FIRST, "cname": EDGE}, {"name": "links.example.com", "cname": EDGE},
                       {"name": "em.example.com", "return_path": {"name": "bounce.example.com", "cname": BOUNCES}}], run)
    assert ok.state == "SUCCESS" and ok.result["all_verified"] is True, ok.stdout
    assert (FIRST, "CNAME") in ctx.dns.queries or (FIRST, "A") in ctx.dns.queries, ctx.dns.queries

    ctx.dns.clear_queries()
    caa = run("caa_check", {"domains": [FIRST, "*.example.com"], "resolvers": [ctx.resolver], "timeout": 2, "retries": 0})
    assert caa.state == "SUCCESS" and caa.result["all_allowed"] is True, caa.stdout
    assert (FIRST, "CAA") in ctx.dns.queries

    status = run("domain_status", {"state_root": str(ctx.roots["state"]), "statuses": [_status(FIRST)]})
    assert status.state == "CHANGED" and status.result["updated"] == [FIRST], status.stdout
    assert (ctx.roots["state"] / (FIRST + ".json")).is_file()


@pytest.mark.parametrize("inner, outer", [("live", "webroot"), ("webroot", "state"), ("state", "live")])
@pytest.mark.parametrize("run", [run_module, run_direct], ids=["through-ansible", "direct"])
def test_roots_inside_one_another_refused_before_any_side_effect(lab, ctx, inner, outer, run):
    """Keys under the webroot, or the webroot under the 0700 state root, are refused by name before anything is done."""
    nested = ctx.roots[outer] / "nested"
    roots = {"live": ctx.roots["live"], "state": ctx.roots["state"], "webroot": ctx.roots["webroot"], inner: nested}
    option = {"live": "cert_root", "state": "state_root", "webroot": "webroot"}
    ctx.snapshot(FIRST)
    args = acme_args(lab, roots["live"], roots["state"], [{"domain": FIRST}], acme_directory=ctx.ca.directory,
                     webroot=str(roots["webroot"]), resolvers=[ctx.resolver], timeout=10)
    refused = run("acme_http01_cert", args)
    assert refused.state == "FAILED!" and refused.rc != 0, refused.stdout
    assert refused.result["msg"].startswith("%s (%s) must not be inside %s" % (option[inner], nested, option[outer])), refused.result
    assert (refused.result["reason"], refused.result["item"]) == ("invalid_input", str(nested))
    ctx.assert_untouched()


# ------------------------------------------------------------------ unusual but valid names

@pytest.mark.parametrize("raw,normal", [(raw, normal) for _id, raw, normal in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_accepted_name_issued_under_its_normal_form(lab, tmp_path, raw, normal):
    """Through the lab's Pebble and nginx: the certificate, its files and its state carry the normal form only."""
    lab.dns_set("a", normal, [lab.addr])
    live, state = tmp_path / "live", tmp_path / "state"
    run = run_module("acme_http01_cert", acme_args(lab, live, state, [{"domain": raw}]))
    assert run.state == "CHANGED", run.stdout
    result = run.result["results"][0]
    assert (result["domain"], result["names"], result["ssl_status"]) == (normal, [normal], "issued"), result
    assert result["fullchain"] == str(live / normal / "fullchain.pem")
    cert = x509.load_pem_x509_certificate((live / normal / "cert.pem").read_bytes())
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName) == [normal]
    assert json.loads((state / (normal + ".json")).read_text())["domain"] == normal
    assert all(p.startswith(("live", "state")) for p in tree(tmp_path)), tree(tmp_path)
    assert named_entries(live) == [normal] and named_entries(state) == [normal + ".json"]


@pytest.mark.parametrize("raw,normal", [(raw, normal) for _id, raw, normal in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_accepted_name_normalised_by_the_other_entry_points(tmp_path, responder, raw, normal):
    dns = responder(ZONE, recursive=True)
    resolver = "%s:%d" % (dns.address, dns.port)

    shown = run_filter(raw)
    assert shown.state == "SUCCESS" and shown.result["msg"] == normal, shown.stdout

    verify = run_module("sending_domain_verify", {"domains": [{"name": raw, "cname": EDGE}], "resolvers": [resolver], "timeout": 2, "retries": 0})
    assert verify.state == "SUCCESS", verify.stdout
    assert (verify.result["results"][0]["name"], verify.result["all_verified"]) == (normal, True), verify.result
    assert {q[0] for q in dns.queries} >= {normal}

    dns.clear_queries()
    caa = run_module("caa_check", {"domains": [raw], "resolvers": [resolver], "timeout": 2, "retries": 0})
    assert caa.state == "SUCCESS", caa.stdout
    assert (caa.result["results"][0]["domain"], caa.result["results"][0]["allowed"]) == (normal, True), caa.result
    assert dns.queries[0] == (normal, "CAA")

    state = tmp_path / "state"
    status = run_module("domain_status", {"state_root": str(state), "statuses": [_status(raw)]})
    assert status.state == "CHANGED" and status.result["updated"] == [normal], status.stdout
    assert [d["domain"] for d in status.result["domains"]] == [normal]
    assert sorted(p.name for p in state.glob("*.json")) == [normal + ".json"]
    assert all(p.startswith("state") for p in tree(tmp_path))
