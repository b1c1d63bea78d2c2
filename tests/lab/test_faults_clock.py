"""Fault suite, clock skew (issue 6): the host's clock behind the CA's, so a certificate's notBefore is in the future
for the host, during a first issuance and during the renewal of a working certificate.

The module runs as a process the way users run it (``ansible localhost -m ...``), with libfaketime preloaded
(Debian's ``faketime`` package) so that every clock read in the ansible process tree, the module's included, is
behind the CA's by a fixed amount; Pebble, nginx and this test keep the real time. The skew is shown to be real: a
``python -c`` under the same environment, and in every case the module's own timestamps (the time its message or state
file says it is, against notBefore as the CA stamped it).

How far behind decides which path a run takes. The lab makes its own HTTPS certificate (Pebble's, and the fault
proxy's) and its CA valid from an hour before they were made, at the lab's start, so a host more than an hour behind cannot open a TLS session with
the CA at all: first issuance fails before any request (2 days and 2 hours are both in that range; so a 30 minute skew
is the one that gets a certificate with notBefore in the host's future). Pebble stamps a new certificate's notBefore
with the time of issuance, without backdating it (Let's Encrypt backdates an hour), so even 30 s behind puts it in the
host's future.

Each case checks what test_faults_ca and test_faults_process check: the module's answer (status, reason, message), the
domain's state file, the key and certificate bytes and modes, the serial nginx serves (TLS from the certificate root by
SNI), that no temporary file is left, and the CA's side: the requests the fault proxy forwarded (ARI queries are the only
ones a run that is not due may make, when the CA offers ARI) and the orders Pebble logged. A run with the clock still
wrong must not order again (no reorder loop), and a run with the clock right again finds nothing due.
"""

from __future__ import annotations

import datetime
import glob
import json
import re
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Any, Dict, Iterator, List, Optional
from urllib.parse import urlsplit

import labctl
import pytest
from cryptography import x509
from faultproxy import FaultProxy
from labtools import BIN, REPO, ModuleRun, acme_args, ansible_env
from test_faults_ca import no_temporary_files, served_serial, snapshot
from test_faults_process import Roots, order_count

pytestmark = [pytest.mark.lab, pytest.mark.integration, pytest.mark.faults]

ADDR = "127.0.0.1"
NOWHERE = "127.0.0.9"
UTC = datetime.timezone.utc
MINUTE = 60
HOUR = 60 * MINUTE
DAY = 24 * HOUR
# Where Debian's libfaketime puts the library (dpkg -L libfaketime): /usr/lib/<multiarch triplet>/faketime/.
LIBFAKETIME = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
CLOCK_MESSAGE = "the host clock or the CA clock is off"

# A host a little behind the CA (within _acme_renewal.CLOCK_SKEW_TOLERANCE, 5 minutes) gets the certificate it
# was just issued reported as SSL Issued: Pebble does not backdate notBefore, so a few seconds would otherwise do.
SMALL_SKEW_STATUS = "issued"


@pytest.fixture(scope="module")
def clock_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    require_libfaketime()
    base = tmp_path_factory.mktemp("faults-clock")
    ports = labctl.free_ports(len(labctl.PORT_KEYS) + 1, ADDR)
    lab = labctl.Lab(dir=base / "lab", addr=ADDR, ports=dict(zip(labctl.PORT_KEYS, ports)), nginx=True, default_ipv4=NOWHERE,
                     timeout=30.0, pebble_env={"PEBBLE_AUTHZREUSE": "0"}, serve_root=base / "live", serve_port=ports[-1])
    lab.start()
    proxy = FaultProxy(upstream=(ADDR, lab.ports["acme"]), certfile=str(lab.ca_dir / "server.pem"), keyfile=str(lab.ca_dir / "server.key"),
                       cafile=str(lab.ca_bundle)).start()
    try:
        yield SimpleNamespace(lab=lab, proxy=proxy, live=base / "live", state=base / "state", serve_port=ports[-1],
                              root=labctl.write_pebble_root(lab.env(), base / "pebble-root.pem"), roots=Roots(base / "live", base / "state"))
    finally:
        proxy.stop()
        lab.stop()


# ------------------------------------------------------------------ helpers


def require_libfaketime() -> None:
    if not LIBFAKETIME:
        pytest.fail("libfaketime is not installed (Debian package faketime, which scripts/bootstrap.sh installs)")


def faketime_env(behind: int) -> Dict[str, str]:
    """Variables that put every process started with them ``behind`` seconds behind the real time.

    libfaketime shifts the monotonic clock too, consistently, so intervals and deadlines still measure right. (Leaving it
    alone with FAKETIME_DONT_FAKE_MONOTONIC=1 breaks Python's time.sleep, which sleeps with clock_nanosleep(CLOCK_MONOTONIC,
    TIMER_ABSTIME): libfaketime 0.9.10 shifts the absolute deadline anyway and the call fails with EINVAL.)
    """
    return {"LD_PRELOAD": LIBFAKETIME[0], "FAKETIME": "-%d" % behind}


def host_clock_offset(behind: int) -> float:
    """The control: what a Python process started under ``faketime_env(behind)`` reads as the time, minus the real time."""
    before = time.time()
    proc = subprocess.run([sys.executable, "-c", "import datetime; print(datetime.datetime.now(datetime.timezone.utc).timestamp())"],
                          env=ansible_env(faketime_env(behind)), capture_output=True, text=True, timeout=60, check=True)
    after = time.time()
    seen = float(proc.stdout.strip())
    return seen - (before + after) / 2


def run(env: SimpleNamespace, domain: str, behind: int = 0, **extra: Any) -> ModuleRun:
    """acme_http01_cert for DOMAIN through the fault proxy, as labtools.run_module runs it, the host clock ``behind`` seconds behind."""
    args = acme_args(env.lab, env.live, env.state, [{"domain": domain}], **dict({"acme_directory": env.proxy.directory, "workers": 1}, **extra))
    cmd = [str(BIN / "ansible"), "localhost", "-m", "mailops.linkcert.acme_http01_cert", "-a", json.dumps(args),
           "-e", "ansible_python_interpreter=%s" % sys.executable, "-c", "local"]
    variables = {"ANSIBLE_CALLBACK_RESULT_FORMAT": "json"}
    if behind:
        variables.update(faketime_env(behind))
    env.proxy.clear()
    proc = subprocess.run(cmd, env=ansible_env(variables), capture_output=True, text=True, timeout=300, cwd=REPO, check=False)
    found = ModuleRun(proc)
    assert found.state in ("SUCCESS", "CHANGED"), found.stdout + found.stderr
    return found


def parse(value: str) -> datetime.datetime:
    return datetime.datetime.strptime(value[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)


def real_now() -> datetime.datetime:
    return datetime.datetime.now(UTC)


def within(moment: datetime.datetime, started: datetime.datetime, finished: datetime.datetime) -> bool:
    """MOMENT (shifted back to the real clock) falls while the run ran; records keep whole seconds, hence the second's slack."""
    second = datetime.timedelta(seconds=1)
    return started - second <= moment <= finished + second


def ari_prefix(env: SimpleNamespace) -> Optional[str]:
    """The path of the CA's renewalInfo resource, from the account record the module keeps; None when the CA offers no ARI."""
    for path in (env.state / "accounts").glob("*.json"):
        url = (json.loads(path.read_text()).get("features") or {}).get("renewal_info_url")
        if url:
            return urlsplit(url).path
    return None


def ca_requests_other_than_ari(env: SimpleNamespace) -> List[Any]:
    """What reached the CA besides asking for a renewal window: the renewalInfo GET and the directory read before it
    (where the CA offers ARI: Debian 13's Pebble 2.6, the lab's own on a trixie machine)."""
    prefix = ari_prefix(env)
    forwarded = list(env.proxy.forwarded())
    asked = [entry for entry in forwarded if prefix and entry[1].startswith(prefix)]
    others = [entry for entry in forwarded if entry not in asked]
    if asked and others and tuple(others[0][:2]) == ("GET", "/dir"):
        others = others[1:]  # the one directory read that a renewalInfo request needs
    return others


def route(env: SimpleNamespace, domain: str) -> None:
    env.lab.dns_set("a", domain, [env.lab.addr])


def assert_untouched(env: SimpleNamespace, domain: str, before: Dict[str, Any]) -> Dict[str, Any]:
    """The live key and certificate byte for byte as before, the key 0600, still served, nothing left behind."""
    after = snapshot(env, domain)
    for name in ("privkey", "cert", "fullchain"):
        assert after[name] == before[name], "%s changed" % name
    assert after["key_mode"] == 0o600
    assert env.roots.assert_installed(domain, state_too=False)
    assert served_serial(env, domain) == before["serial"]
    no_temporary_files(env)
    env.roots.assert_clean(domain)
    return after


# ------------------------------------------------------------------ cases


@pytest.mark.parametrize("behind", [2 * DAY, 30 * MINUTE, 30], ids=["2-days", "30-minutes", "30-seconds"])
def test_libfaketime_shifts_the_clock_python_reads(behind):
    """The control for every case below: without it a skewed run could pass by not being skewed at all."""
    require_libfaketime()
    assert abs(host_clock_offset(behind) + behind) < 5


def test_renewal_with_the_host_clock_two_days_behind(clock_lab):
    """A working certificate, then the host clock 2 days behind: its notBefore is in the host's future."""
    env, domain = clock_lab, "renew-2d.clock.test"
    route(env, domain)
    first = run(env, domain).result["results"][0]
    assert (first["action"], first["ssl_status"]) == ("issued", "issued"), first
    before = snapshot(env, domain)
    assert served_serial(env, domain) == before["serial"]
    orders = order_count(env.lab)

    for attempt in ("first", "again"):  # the second skewed run must not order either: no reorder loop
        started = real_now()
        outcome = run(env, domain, behind=2 * DAY)
        finished = real_now()
        result = outcome.result["results"][0]
        assert (result["action"], result["reason"], result["changed"]) == ("none", "not_yet_valid", False), (attempt, result)
        # What the code reports today: SSL Pending for the working certificate (the host cannot tell its own clock from
        # the CA's), and the message says which clocks to look at.
        assert result["ssl_status"] == "pending", result
        assert CLOCK_MESSAGE in result["message"], result["message"]
        assert result["renew_after"] == result["not_before"] == first["not_before"]
        # The control, from inside the module: the time its message says it is, 2 days behind the real time.
        said = parse(re.search(r"the clock here says (\S+)", result["message"]).group(1))
        assert within(said + datetime.timedelta(seconds=2 * DAY), started, finished), (said, started, finished)
        # No request to the CA but ARI (where offered; Pebble 2.4 does not), no order.
        assert ca_requests_other_than_ari(env) == [], env.proxy.forwarded()
        assert outcome.result["ca_requests"] == len(env.proxy.forwarded())
        assert order_count(env.lab) == orders
        after = assert_untouched(env, domain, before)
        state = after["state"]
        assert (state["ssl_status"], state["reason"], state["serial"], state["action"]) == ("pending", "not_yet_valid", first["serial"], "issued")
        assert not state.get("failures"), "a certificate left alone is no failure"

    # The clock right again: nothing is due, the status is back to SSL Issued, still no order.
    healed = run(env, domain).result["results"][0]
    assert (healed["action"], healed["reason"], healed["ssl_status"]) == ("none", "not_due", "issued"), healed
    assert parse(healed["renew_after"]) > parse(healed["not_before"]) + datetime.timedelta(days=30)
    assert ca_requests_other_than_ari(env) == [] and order_count(env.lab) == orders
    assert assert_untouched(env, domain, before)["state"]["ssl_status"] == "issued"


@pytest.mark.parametrize("behind", [2 * DAY, 2 * HOUR], ids=["2-days", "2-hours"])
def test_first_issuance_with_the_host_clock_hours_behind_cannot_reach_the_ca(clock_lab, behind):
    """More than an hour behind, the CA's own HTTPS certificate is not yet valid for the host: nothing can be ordered."""
    env, domain = clock_lab, "first-%d.clock.test" % behind
    route(env, domain)
    orders = order_count(env.lab)
    for _attempt in ("first", "again"):  # the second skewed run fails the same way, without an order
        started = real_now()
        outcome = run(env, domain, behind=behind)
        finished = real_now()
        result = outcome.result["results"][0]
        assert (result["action"], result["reason"], result["ssl_status"], result["changed"]) == ("failed", "host_clock", "pending", False), result
        # The advice is the clock's, not an untrusted CA's (no "acme_ca_bundle" here), with the time the host believes.
        assert "Check this host's clock" in result["message"] and "acme_ca_bundle" not in result["message"], result["message"]
        assert "certificate is not yet valid" in result["message"], result["message"]
        assert env.proxy.forwarded() == [], "no request can reach the CA over a TLS session the host refused"
        assert order_count(env.lab) == orders
        assert not (env.live / domain).exists() and served_serial(env, domain) is None
        no_temporary_files(env)
        state = snapshot(env, domain)["state"]
        assert (state["ssl_status"], state["reason"]) == ("pending", "host_clock")
        assert len(state["failures"]) == (1 if _attempt == "first" else 2) and state["failures"][-1]["reason"] == "host_clock"
        # The control, from inside the module: the time it recorded the attempt at.
        assert within(parse(state["last_attempt"]) + datetime.timedelta(seconds=behind), started, finished), (state["last_attempt"], started)

    issued = run(env, domain).result["results"][0]
    assert (issued["action"], issued["ssl_status"]) == ("issued", "issued"), issued
    assert order_count(env.lab) == orders + 1
    env.roots.assert_installed(domain)
    assert served_serial(env, domain) == snapshot(env, domain)["serial"]
    env.roots.assert_clean(domain)


# (id, seconds behind, status of the new certificate, reason a second skewed run gives)
ISSUED_SKEWED = [
    # Beyond the 5 minute tolerance: a clock to fix. Issued, but not yet valid for the host, which says so on the next run.
    ("30-minutes", 30 * MINUTE, "pending", "not_yet_valid"),
    # Within it: the CA's notBefore is 30 s ahead of the host, which is no clock problem (see SMALL_SKEW_STATUS).
    ("30-seconds", 30, SMALL_SKEW_STATUS, "not_due"),
]


@pytest.mark.parametrize("behind, status, reason_again", [row[1:] for row in ISSUED_SKEWED], ids=[row[0] for row in ISSUED_SKEWED])
def test_first_issuance_with_the_host_clock_behind_issues_once(clock_lab, behind, status, reason_again):
    env, domain = clock_lab, "first-%ds.clock.test" % behind
    route(env, domain)
    orders = order_count(env.lab)
    outcome = run(env, domain, behind=behind)
    result = outcome.result["results"][0]
    assert (result["action"], result["reason"], result["changed"]) == ("issued", "issued", True), result
    assert result["ssl_status"] == status, result
    assert order_count(env.lab) == orders + 1
    files = env.roots.assert_installed(domain, state_too=False)  # whole, matching, key 0600, cert 0644
    cert = x509.load_pem_x509_certificate(files["cert.pem"])
    assert format(cert.serial_number, "x") == result["serial"].lstrip("0")
    before = snapshot(env, domain)
    state = before["state"]
    assert (state["ssl_status"], state["reason"], state["serial"]) == (status, "issued", result["serial"])
    # The control, from inside the module: notBefore (the CA's clock at issuance, to the second) is `behind` seconds
    # after the moment the host recorded for its attempt.
    gap = (parse(result["not_before"]) - parse(state["last_attempt"])).total_seconds()
    assert behind - 5 < gap < behind + 15, (result["not_before"], state["last_attempt"])
    if reason_again == "not_yet_valid":
        # renew_after is notBefore: the next run that finds the certificate valid decides again.
        assert result["renew_after"] == result["not_before"], result
    else:
        # Within the tolerance the certificate is decided on as valid: its real renewal instant.
        assert parse(result["renew_after"]) > parse(result["not_before"]) + datetime.timedelta(days=30), result
    assert served_serial(env, domain) == before["serial"]
    no_temporary_files(env)
    env.roots.assert_clean(domain)

    again = run(env, domain, behind=behind).result["results"][0]
    assert (again["action"], again["reason"], again["ssl_status"], again["changed"]) == ("none", reason_again, status, False), again
    if reason_again == "not_yet_valid":
        assert CLOCK_MESSAGE in again["message"], again["message"]
    assert ca_requests_other_than_ari(env) == [] and order_count(env.lab) == orders + 1, "a second skewed run ordered again"
    assert_untouched(env, domain, before)

    healed = run(env, domain).result["results"][0]
    assert (healed["action"], healed["reason"], healed["ssl_status"]) == ("none", "not_due", "issued"), healed
    assert ca_requests_other_than_ari(env) == [] and order_count(env.lab) == orders + 1
    assert assert_untouched(env, domain, before)["state"]["ssl_status"] == "issued"
