"""Fault suite: the CA misbehaving, during a first issuance and during the renewal of a working certificate.

Pebble sits behind tests/lab/faultproxy.py, which answers chosen requests with 500/503/429 problems
(with Retry-After) or drops the connection; "CA unreachable" is a port where nothing listens, and "an
order that goes invalid" is a name whose challenge the CA cannot fetch. The lab's nginx serves TLS from
the certificate root by SNI, so each case checks the certificate a client is served, not only the files.

Every case asserts the module's answer (status, reason), the domain's state file, and the files: a
first issuance that fails leaves no certificate and no temporary file; a renewal that fails leaves the
working key and certificate byte for byte, still matching, the key 0600, and still served. The next
run, with the CA healthy again, finishes the job.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import threading
import ssl
import stat
from types import SimpleNamespace
from typing import Any, Dict, Optional

import labctl
import pytest
from cryptography import x509
from faultproxy import Fault, FaultProxy
from labtools import acme_args, run_module

pytestmark = [pytest.mark.lab, pytest.mark.integration, pytest.mark.faults]

ADDR = "127.0.0.1"
NOWHERE = "127.0.0.9"
NOT_FOUND = "127.0.0.3"  # an "edge" whose web server answers 404 to everything, challenges included
DOWN = "127.0.0.4"  # an "edge" where nothing listens: nginx down


class _NotFound(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_error(404)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def ca_lab(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("faults-ca")
    ports = labctl.free_ports(len(labctl.PORT_KEYS) + 2, ADDR)
    lab = labctl.Lab(dir=base / "lab", addr=ADDR, ports=dict(zip(labctl.PORT_KEYS, ports)), nginx=True, default_ipv4=NOWHERE,
                     timeout=30.0, pebble_env={"PEBBLE_AUTHZREUSE": "0"}, serve_root=base / "live", serve_port=ports[-2])
    lab.start()
    proxy = FaultProxy(upstream=(ADDR, lab.ports["acme"]), certfile=str(lab.ca_dir / "server.pem"), keyfile=str(lab.ca_dir / "server.key"),
                       cafile=str(lab.ca_bundle)).start()
    not_found = http.server.ThreadingHTTPServer((NOT_FOUND, lab.ports["http"]), _NotFound)
    threading.Thread(target=not_found.serve_forever, daemon=True).start()
    try:
        yield SimpleNamespace(lab=lab, proxy=proxy, live=base / "live", state=base / "state", serve_port=ports[-2], closed_port=ports[-1],
                              root=labctl.write_pebble_root(lab.env(), base / "pebble-root.pem"))
    finally:
        not_found.shutdown()
        not_found.server_close()
        proxy.stop()
        lab.stop()


def issue(env: SimpleNamespace, domain: str, **extra: Any) -> Dict[str, Any]:
    args = acme_args(env.lab, env.live, env.state, [{"domain": domain}], **dict({"acme_directory": env.proxy.directory, "workers": 1}, **extra))
    run = run_module("acme_http01_cert", args, timeout=600)
    assert run.state in ("SUCCESS", "CHANGED"), run.stdout + run.stderr
    return run.result["results"][0]


def served_serial(env: SimpleNamespace, name: str) -> Optional[int]:
    """The serial of the certificate nginx serves for NAME (verified against Pebble's root), None when none is served."""
    context = ssl.create_default_context(cafile=str(env.root))
    try:
        with socket.create_connection((ADDR, env.serve_port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname=name) as tls:
                return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number
    except (ssl.SSLError, ConnectionError):
        return None


def snapshot(env: SimpleNamespace, domain: str) -> Dict[str, Any]:
    live = env.live / domain
    found = {"state": json.loads((env.state / ("%s.json" % domain)).read_text())}
    if live.exists():
        found.update({name: (live / ("%s.pem" % name)).read_bytes() for name in ("privkey", "cert", "fullchain")})
        found["key_mode"] = stat.S_IMODE(os.stat(live / "privkey.pem").st_mode)
        found["serial"] = x509.load_pem_x509_certificate(found["cert"]).serial_number
    return found


def no_temporary_files(env: SimpleNamespace) -> None:
    for root in (env.live, env.state):
        if root.exists():
            left = [str(p) for p in root.rglob("*") if ".tmp" in p.name]
            assert left == [], left


RATE_LIMIT_DETAIL = "too many failed authorizations (5) for \"%s\" in the last 1h0m0s, retry after 1 hour"
RATE_LIMITED = "429-rate-limited"


# name, what the proxy does (or None), the module arguments that go with it, the reasons a failure may give
FAULTS = [
    ("unreachable", None, "closed", {"ca_unreachable"}),
    ("503-every-time", Fault(path="order-plz", status=503, retry_after="1"), None, {"acme_server_internal"}),
    ("500-storm", Fault(path=".", status=500, problem="serverInternal"), None, {"acme_server_internal", "ca_protocol_error", "ca_unreachable"}),
    # Let's Encrypt's words for its failed-authorization limit (a 429 on newOrder), which name the one name it refuses.
    ("429-rate-limited", Fault(path="order-plz", status=429, problem="rateLimited", retry_after="3600",
                               detail=RATE_LIMIT_DETAIL), None, {"acme_rate_limited"}),
    ("dropped-connections", Fault(path="order-plz", drop=True), None, {"ca_unreachable"}),
    ("order-invalid", None, "nowhere", {"acme_connection", "acme_unauthorized", "acme_order_invalid", "acme_dns"}),
    # The edge side: the self-check (which fetches the challenge as the CA would) stops these before any order.
    ("challenge-404", None, "404", {"self_check_http_404"}),
    ("nginx-down", None, "down", {"self_check_unreachable"}),
    ("dns-servfail", None, "servfail", {"self_check_dns"}),
    ("resolver-down", None, "resolver-down", {"self_check_dns"}),
]
# Faults the customer (or the edge) must fix: a first issuance is SSL Unknown, not Pending.
CUSTOMER_SIDE = {"order-invalid", "challenge-404", "nginx-down", "dns-servfail", "resolver-down"}
# Faults that show only once the CA asks for a challenge (the self-check runs on its token, or the CA validates).
VALIDATED = {"order-invalid", "challenge-404", "nginx-down"}


def arm(env: SimpleNamespace, fault: Optional[Fault], special: Optional[str], domain: str) -> Dict[str, Any]:
    if fault is not None and fault.detail:
        fault = Fault(**dict(vars(fault), detail=fault.detail % domain))
    env.proxy.set(*([Fault(**{k: v for k, v in vars(fault).items() if k != "hits"})] if fault else []))
    if special == "nowhere":  # the CA's validation cannot reach the edge: the order goes invalid
        env.lab.dns_set("a", domain, [NOWHERE])
        return {"self_check": False}
    if special == "closed":
        return {"acme_directory": "https://%s:%d/dir" % (ADDR, env.closed_port), "timeout": 10}
    if special in ("404", "down"):
        env.lab.dns_set("a", domain, [NOT_FOUND if special == "404" else DOWN])
    if special == "servfail":
        env.lab.dns_set("servfail", domain, True)
    if special == "resolver-down":
        return {"resolvers": ["%s:%d" % (ADDR, env.closed_port)]}
    return {}


def wait_out_the_429(env: SimpleNamespace, domain: str, refused: Dict[str, Any], **extra: Any) -> None:
    """After a 429 whose Retry-After is past the run, the healed CA is still not asked for an order of the name it refused
    before then: the next run leaves it waiting (ca_rate_limit_queued) at the Retry-After. Then the hour is made to pass
    (the block in the ledger moved into the past), as it would."""
    waiting = issue(env, domain, **extra)
    assert (waiting["action"], waiting["reason"]) == ("none", "ca_rate_limit_queued"), waiting
    assert waiting["retry_after"] == refused["retry_after"] and waiting["retry_after"] in waiting["message"]
    assert not [entry for entry in env.proxy.forwarded() if "order-plz" in entry[1]], "an order was placed before the Retry-After"
    [ledger_path] = (env.state / "ledger").glob("*.json")
    ledger = json.loads(ledger_path.read_text())
    assert [(block["scope"], block["key"]) for block in ledger["blocks"]] == [("name", domain)], "the 429 refused this name only"
    for block in ledger["blocks"]:
        block["until"] = "2000-01-01T00:00:00Z"
    ledger_path.write_text(json.dumps(ledger))


def heal(env: SimpleNamespace, domain: str) -> None:
    env.proxy.clear()
    env.lab.dns_set("servfail", domain, False)
    env.lab.dns_set("a", domain, [env.lab.addr])


@pytest.mark.parametrize("case, fault, special, reasons", FAULTS, ids=[f[0] for f in FAULTS])
def test_first_issuance_fails_cleanly_and_the_next_run_issues(ca_lab, case, fault, special, reasons):
    domain = "first-%s.faults.test" % case
    ca_lab.lab.dns_set("a", domain, [ca_lab.lab.addr])
    extra = arm(ca_lab, fault, special, domain)
    result = issue(ca_lab, domain, **extra)
    assert result["action"] == "failed" and result["reason"] in reasons, result
    expected = "unknown" if case in CUSTOMER_SIDE else "pending"  # the customer's DNS or edge, or a CA that is down
    assert (result["ssl_status"], result["changed"]) == (expected, False), result
    if fault is not None:
        assert ca_lab.proxy.injected(), "the fault was never hit"
    if case in CUSTOMER_SIDE - {"order-invalid"}:
        # The self-check runs once the order gives it a token, before the CA is asked to validate: no challenge is
        # answered, so nothing counts against the CA's failed-validation limit.
        assert not [entry for entry in ca_lab.proxy.forwarded() if "/chalZ/" in entry[1]], "the CA was asked to validate"
    if case == "order-invalid":  # without the self-check the CA does validate (and fails): the same log sees it
        assert [entry for entry in ca_lab.proxy.forwarded() if "/chalZ/" in entry[1]]
    after = snapshot(ca_lab, domain)
    assert after["state"]["ssl_status"] == expected and after["state"]["reason"] == result["reason"]
    assert after["state"]["failures"], "the failure is on record"
    assert "privkey" not in after and not (ca_lab.live / domain).exists()
    assert served_serial(ca_lab, domain) is None
    no_temporary_files(ca_lab)

    heal(ca_lab, domain)
    if case == RATE_LIMITED:
        wait_out_the_429(ca_lab, domain, result)
    again = issue(ca_lab, domain)
    assert (again["action"], again["ssl_status"]) == ("issued", "issued"), again
    assert served_serial(ca_lab, domain) == snapshot(ca_lab, domain)["serial"]


@pytest.mark.parametrize("case, fault, special, reasons", FAULTS, ids=[f[0] for f in FAULTS])
def test_failed_renewal_keeps_serving_the_working_certificate(ca_lab, case, fault, special, reasons):
    domain = "renew-%s.faults.test" % case
    ca_lab.lab.dns_set("a", domain, [ca_lab.lab.addr])
    ca_lab.proxy.clear()
    first = issue(ca_lab, domain)
    assert first["action"] == "issued", first
    before = snapshot(ca_lab, domain)
    assert served_serial(ca_lab, domain) == before["serial"]

    extra = arm(ca_lab, fault, special, domain)
    if case in VALIDATED:
        # A fresh account for the renewal meant to fail at validation: Pebble would reuse the valid authorization of
        # the first issuance 1 time in 100 even with PEBBLE_AUTHZREUSE=0 (it reuses unless rand.Intn(100) > 0), and
        # then no challenge is asked for and the renewal goes through.
        extra["account_key"] = str(ca_lab.state.parent / ("account-%s.key" % case))
    result = issue(ca_lab, domain, force=True, **extra)
    assert result["action"] == "failed" and result["reason"] in reasons, result
    assert result["ssl_status"] == "issued" and "installed certificate is untouched and still served" in result["message"], result
    after = snapshot(ca_lab, domain)
    for name in ("privkey", "cert", "fullchain"):
        assert after[name] == before[name], "%s changed after a failed renewal" % name
    assert after["key_mode"] == 0o600
    assert after["state"]["ssl_status"] == "issued" and after["state"]["serial"] == before["state"]["serial"]
    assert served_serial(ca_lab, domain) == before["serial"]
    no_temporary_files(ca_lab)

    heal(ca_lab, domain)
    if case == RATE_LIMITED:
        wait_out_the_429(ca_lab, domain, result, force=True)
    renewed = issue(ca_lab, domain, force=True)
    assert (renewed["action"], renewed["ssl_status"]) == ("renewed", "issued"), renewed
    now = snapshot(ca_lab, domain)
    assert now["serial"] != before["serial"] and served_serial(ca_lab, domain) == now["serial"]


# Faults that last a moment: the same run rides them out. (name, fault, shortest run the waits imply)
TRANSIENT = [
    # Two 503s with Retry-After: 1 on new-order: the client waits as it is told.
    ("503-twice-retry-after", Fault(path="order-plz", status=503, retry_after="1", times=2), 2000),
    # badNonce answers (no Retry-After): retried at once, with a fresh nonce each time.
    ("bad-nonce-storm", Fault(path="order-plz", status=400, problem="badNonce", times=3), 0),
]


@pytest.mark.parametrize("case, fault, at_least_ms", TRANSIENT, ids=[t[0] for t in TRANSIENT])
def test_a_short_fault_is_ridden_out_in_the_same_run(ca_lab, case, fault, at_least_ms):
    domain = "%s.faults.test" % case
    ca_lab.lab.dns_set("a", domain, [ca_lab.lab.addr])
    ca_lab.proxy.set(fault)
    result = issue(ca_lab, domain)
    assert (result["action"], result["ssl_status"]) == ("issued", "issued"), result
    assert len(ca_lab.proxy.injected()) == fault.times
    assert result["duration_ms"] >= at_least_ms, "the client did not wait the Retry-After it was given"
    assert served_serial(ca_lab, domain) == snapshot(ca_lab, domain)["serial"]


def test_the_ca_certificate_is_refused_unless_a_bundle_is_given(ca_lab, tmp_path):
    domain = "untrusted.faults.test"
    ca_lab.lab.dns_set("a", domain, [ca_lab.lab.addr])
    ca_lab.proxy.clear()
    args = acme_args(ca_lab.lab, tmp_path / "live", tmp_path / "state", [{"domain": domain}], acme_directory=ca_lab.proxy.directory)
    args.pop("acme_ca_bundle")
    run = run_module("acme_http01_cert", args)
    result = run.result["results"][0] if run.result.get("results") else run.result
    assert result.get("reason") == "ca_untrusted", run.stdout
    assert "verification is never switched off" in (result.get("message") or result.get("msg") or "")
    assert not (tmp_path / "live" / domain).exists()
    assert ca_lab.proxy.forwarded() == [] and ca_lab.proxy.injected() == [], "no request may reach the CA over an untrusted TLS session"
