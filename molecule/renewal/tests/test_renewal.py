"""Testinfra checks of a renewal done by the systemd timer on a real Debian 12 host (systemd as PID 1).

Pebble issues certificates valid for 180 seconds in this scenario and linkcert-renew.timer fires every
20 seconds (molecule.yml, group_vars/). The tests first record the certificate converge issued, then wait
(bounded) until the timer has started linkcert-renew.service and the service has replaced the certificate,
then check the outcome. Nothing here starts the service: that the timer did is part of what is checked.
The tests run in file order and share the module-scoped fixtures below.
"""

import datetime
import json
import os
import socket
import ssl
import time
from pathlib import Path

import pytest

EPHEMERAL = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "."))
STATE = "/var/lib/linkcert/state"
DOMAIN = "links.example.com"
SERVICE = "linkcert-renew.service"
TIMER = "linkcert-renew.timer"
# Due 90 s after issuance (half of 180 s; the tests start about 35 s after it), then the timer's next elapse:
# 20 s calendar steps, up to 5 s of fixed random delay and at worst systemd's default AccuracySec of one
# minute. 240 s is well above that worst case (about 140 s); a renewal usually comes within 80 s.
RENEWAL_TIMEOUT = 240.0
# nginx finishes a reload asynchronously (new workers take over); a few seconds are plenty.
SERVE_TIMEOUT = 30.0
POLL_INTERVAL = 2.0


@pytest.fixture(scope="module")
def validity():
    """Pebble's certificate validity in seconds, as create.yml configured the lab."""
    config = json.loads((EPHEMERAL / "lab" / "pebble-config.json").read_text())
    return int(config["pebble"]["certificateValidityPeriod"])


def state(host):
    return json.loads(host.file("%s/%s.json" % (STATE, DOMAIN)).content_string)


def show(host, unit, *props):
    """``systemctl show`` of ``props`` as a dict (as printed; timestamps in UTC, ``Mon 2026-01-05 12:00:00 UTC``)."""
    out = host.check_output("TZ=UTC systemctl show " + " ".join(["%s"] + ["-p %s"] * len(props)), unit, *props)
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def shown_time(value):
    """A timestamp as printed by ``show``, to the second; None for ``n/a`` or empty (it never happened)."""
    value = value.strip()
    if value in ("", "n/a", "0"):
        return None
    return datetime.datetime.strptime(value, "%a %Y-%m-%d %H:%M:%S UTC").replace(tzinfo=datetime.timezone.utc)


def served_serial(edge_addr, pebble_root):
    """The serial (int) of the certificate nginx serves for DOMAIN, its chain verified against Pebble's root."""
    context = ssl.create_default_context(cafile=str(pebble_root))
    with socket.create_connection((edge_addr, 443), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=DOMAIN) as tls:
            return int(tls.getpeercert()["serialNumber"], 16)


def when(iso):
    """An ISO 8601 UTC time from the state file (``...Z``, with or without fractions of a second)."""
    return datetime.datetime.fromisoformat(iso.replace("Z", "+00:00"))


def diagnostics(host):
    return "\n".join(host.run(cmd).stdout for cmd in (
        "systemctl list-timers --all --no-pager %s" % TIMER,
        "systemctl status --no-pager %s" % SERVICE,
        "journalctl -u %s --no-pager -o short-iso" % SERVICE,
        "cat %s/%s.json" % (STATE, DOMAIN),
    ))


@pytest.fixture(scope="module")
def converged(host, edge_addr, pebble_root):
    """The certificate converge issued, as recorded on the host and as served, before any renewal."""
    return {"state": state(host), "served": served_serial(edge_addr, pebble_root)}


@pytest.fixture(scope="module")
def renewed(host, converged):
    """The state once the timer-started service has replaced the certificate and finished running."""
    old = converged["state"]["serial"]
    deadline = time.monotonic() + RENEWAL_TIMEOUT
    while True:
        current = state(host)
        running = show(host, SERVICE, "ActiveState")["ActiveState"] in ("activating", "active", "reloading")
        if current.get("serial") and current["serial"] != old and not running:
            return current
        if time.monotonic() > deadline:
            pytest.fail("no renewal of serial %s by the timer within %d s:\n%s" % (old, RENEWAL_TIMEOUT, diagnostics(host)))
        time.sleep(POLL_INTERVAL)


def test_converge_issued_a_short_lived_certificate_and_serves_it(converged, validity):
    recorded = converged["state"]
    assert (recorded["ssl_status"], recorded["label"]) == ("issued", "SSL Issued")
    # Issued by converge, not yet renewed by the timer: the premise of the waits below.
    assert recorded["action"] == "issued", recorded
    assert converged["served"] == int(recorded["serial"], 16)
    lifetime = when(recorded["not_after"]) - when(recorded["not_before"])
    assert validity <= 300 and lifetime <= datetime.timedelta(seconds=validity + 1), "not short-lived: %s" % lifetime
    assert when(recorded["not_before"]) < when(recorded["renew_after"]) < when(recorded["not_after"])


def test_the_timer_is_enabled_with_the_scenario_calendar(host):
    timer = show(host, TIMER, "ActiveState", "UnitFileState", "TimersCalendar")
    assert (timer["ActiveState"], timer["UnitFileState"]) == ("active", "enabled")
    assert "*-*-* *:*:00/20" in timer["TimersCalendar"], timer


def test_the_timer_started_the_service_which_succeeded(host, converged, renewed):
    service = show(host, SERVICE, "Result", "ExecMainStatus", "ExecMainCode", "ExecMainStartTimestamp")
    timer = show(host, TIMER, "LastTriggerUSec")
    assert (service["Result"], service["ExecMainStatus"]) == ("success", "0"), service
    triggered, started = shown_time(timer["LastTriggerUSec"]), shown_time(service["ExecMainStartTimestamp"])
    # The timer elapsed, and the service ran, after converge issued the certificate (times to the second). Nothing
    # else starts the service: it has no [Install] section, and this scenario never starts it by hand.
    issued = when(converged["state"]["not_before"]).replace(microsecond=0)
    assert triggered is not None and triggered >= issued, "the timer has not elapsed since converge: %s" % timer
    assert started is not None and started >= issued, (timer, service)
    assert "WantedBy=" not in host.file("/etc/systemd/system/%s" % SERVICE).content_string
    journal = host.check_output("journalctl -u %s --no-pager -o cat", SERVICE)
    assert "Renewed a certificate for %s, valid until %s." % (DOMAIN, renewed["not_after"]) in journal, journal
    assert "nginx reloaded" in journal, journal


def test_the_new_certificate_outlives_the_old(renewed, converged):
    old = converged["state"]
    assert int(renewed["serial"], 16) != int(old["serial"], 16)
    assert when(renewed["not_after"]) > when(old["not_after"])
    assert (renewed["ssl_status"], renewed["label"], renewed["action"]) == ("issued", "SSL Issued", "renewed")


def test_the_installed_certificate_is_the_new_one(host, renewed):
    current = state(host)
    assert (current["ssl_status"], current["label"]) == ("issued", "SSL Issued")
    on_disk = host.check_output("openssl x509 -noout -serial -in %s", current["fullchain"])
    assert int(on_disk.split("=", 1)[1], 16) == int(current["serial"], 16)


def test_nginx_serves_the_new_certificate(host, edge_addr, pebble_root, renewed, converged):
    old = int(converged["state"]["serial"], 16)
    deadline = time.monotonic() + SERVE_TIMEOUT
    while True:
        served = served_serial(edge_addr, pebble_root)
        # Compared with the state read now: with 180 s certificates the timer renews again 90 s later.
        recorded = int(state(host)["serial"], 16)
        if served == recorded or time.monotonic() > deadline:
            break
        time.sleep(POLL_INTERVAL)
    assert served != old, "nginx still serves the certificate converge issued (not reloaded)"
    assert served == recorded


def test_the_private_key_is_0600_root(host, renewed):
    key = host.file(state(host)["privkey"])
    assert key.exists and key.mode == 0o600 and key.user == "root"
