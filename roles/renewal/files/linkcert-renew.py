# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""linkcert's renewal runner and pending watcher, started by linkcert-renew.service and linkcert-watch.service (and
their timers), and by support staff as ``linkcert-renew --domain NAME``.

It uses the collection's own code (the acme_http01_cert module's utilities, installed next to this file by the
renewal role as one zip application). One run:

1. renews the installed certificates that are due (not with ``--watch``), after asking DNS again where it matters;
2. the pending watcher: checks the domains that are onboarded but not issued, and those whose certificate is held
   (their DNS or CAA changed), whose next check has come (their backoff: 1, 2, 5, 10 and 30 minutes after the first check, hourly for a day,
   then every 6 hours, until it gives up), and issues the certificate of each whose DNS and CAA are right now (a held
   one is simply served and redirected to again);
3. serves every domain by the edge's traffic contract (``_sites``: a TLS server per valid certificate, plain HTTP
   redirected only for those, a TLS alert for every other name), so an issuance, a renewal, an expiry or a hold
   changes nginx's files as a playbook run would;
4. reloads nginx once when a certificate or those files changed (``nginx -t`` first; a reload that could not be
   done is remembered in ``STATE_ROOT/reload-pending`` and retried by every later run);
5. in a fleet, pushes what it issued or renewed to every other node (``_fleet``; retried until delivered).

Nothing is ordered while ``nginx -t`` fails. One line per domain goes to the journal. Exit status: 0 when every
certificate it handled is valid and served, 1 when one is not, 2 for a bad configuration or command line, 3 when
nginx still has to be reloaded (or refused the new files), 4 when a fleet node could not be reached.

``--domain NAME`` handles that domain now, whatever its schedule (Verify Now on the edge: a pending domain's watch
starts over). ``--receive`` is the other end of a fleet push (the forced command of the issuer's key): it reads
the bundle on standard input, installs it, serves it and reloads nginx, and answers with one JSON line.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import subprocess
import sys
import time
import typing as t

# The run (the service's) starts with the process, imports included: its duration in the metrics counts from here.
STARTED = time.monotonic()
LIB = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, LIB)

# pylint: disable=wrong-import-position
from ansible_collections.mailops.linkcert.plugins.module_utils import _acme_run, _acme_sync, _dnsrun, _names  # noqa: E402
from ansible_collections.mailops.linkcert.plugins.module_utils import _drift, _fleet, _metrics, _sites, _status, _watch  # noqa: E402
from ansible_collections.mailops.linkcert.plugins.module_utils._acme_state import StateStore  # noqa: E402
from ansible_collections.mailops.linkcert.plugins.module_utils._acme_storage import atomic_write  # noqa: E402
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import InputError, LinkcertError  # noqa: E402


PENDING = "reload-pending"
EXIT_OK, EXIT_NOT_VALID, EXIT_CONFIG, EXIT_RELOAD, EXIT_FLEET = 0, 1, 2, 3, 4


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def run_command(argv: t.Sequence[str]) -> t.Tuple[int, str, str]:
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=120)
    return done.returncode, done.stdout, done.stderr


def run_with_input(argv: t.Sequence[str], payload: bytes) -> t.Tuple[int, str, str]:
    done = subprocess.run(list(argv), input=payload, capture_output=True, check=False, timeout=300)
    return done.returncode, done.stdout.decode("utf-8", "replace"), done.stderr.decode("utf-8", "replace")


def reload_nginx(command: t.Sequence[str], check_command: t.Sequence[str]) -> t.Tuple[bool, str]:
    rc, _out, err = run_command(check_command)
    if rc != 0:
        return False, "nginx -t failed, nginx NOT reloaded (the running configuration keeps serving): %s" % err.strip()
    rc, out, err = run_command(command)
    if rc != 0:
        return False, "reloading nginx failed: %s" % (err.strip() or out.strip())
    return True, "nginx reloaded"


def remember_reload(state_root: str, message: t.Optional[str]) -> None:
    """Write (message) or remove (None) the pending-reload marker, atomically."""
    path = os.path.join(state_root, PENDING)
    if message is None:
        if os.path.exists(path):
            os.unlink(path)
        return
    atomic_write(path, (message + "\n").encode("utf-8"), 0o600)


def write_metrics(config: t.Mapping[str, t.Any], results: t.Sequence[t.Mapping[str, t.Any]], started: float, outcome: str) -> None:
    """Write the metrics for node_exporter into ``config["metrics_dir"]`` (nothing when it is empty): every domain on
    record (linkcert-domains.prom) and this run (linkcert-run-timer.prom). ``started`` is a time.monotonic() value.
    Metrics are bookkeeping: a failure to write them is reported and does not change the exit status."""
    directory = config.get("metrics_dir")
    if not directory:
        return
    finished = time.time()
    actions = [r.get("action") if r.get("action") in _metrics.ACTIONS else "none" for r in results]
    run = {"job": "timer", "node": config.get("node") or socket.gethostname(), "started": finished - max(0.0, time.monotonic() - started),
           "finished": finished, "outcome": outcome, "counts": {action: actions.count(action) for action in _metrics.ACTIONS}}
    try:
        _metrics.write_files(directory, _metrics.read_records(config["state_root"]), run)
    except (OSError, LinkcertError) as exc:
        print("linkcert-renew: cannot write the metrics in %s: %s" % (directory, getattr(exc, "msg", exc)), file=sys.stderr)


def _dns_view(config: t.Mapping[str, t.Any], section: t.Mapping[str, t.Any]) -> t.Tuple[t.Any, t.Any]:
    """The CAA policy and the resolver for a DNS check configured by ``section`` (drift_check or watch)."""
    policy = _dnsrun.caa_policy(section.get("ca_identities") or ["letsencrypt.org"], "http-01", section.get("account_uri"))
    resolver = _dnsrun.make_resolver(config.get("resolvers") or None, float(section.get("timeout", 5.0)), int(section.get("retries", 2)))
    return policy, resolver


def recheck_dns(config: t.Mapping[str, t.Any], certificates: t.List[t.Dict[str, t.Any]], force: bool = False,
                also: t.Collection[str] = ()) -> t.List[t.Dict[str, t.Any]]:
    """Ask DNS again whether installed certificates' names still route to the edge and CAA still lets the CA issue; the
    ones that do not are held (nothing ordered, the certificate kept, dns_drift / caa_drift reported).

    Asked for every domain whose last check (STATE_ROOT/.dns-checked.json, written by the role too) is older than
    ``interval_hours`` (20), that is due, or that is not plainly issued, and those named in ``also`` (all of them with
    ``force``); the others were checked recently enough."""
    drift = config["drift_check"]
    now = utcnow()
    interval = datetime.timedelta(hours=float(drift.get("interval_hours", 20)))
    states, checked = StateStore(config["state_root"]), _drift.load_checked(config["state_root"])
    entries = [dict(entry, domain=_names.normalize_domain(entry["domain"], what="certificates domain")) for entry in certificates]
    ask = [entry for entry in entries if force or entry["domain"] in also
           or _drift.needs_check(checked.get(entry["domain"]), states.load(entry["domain"]), now, interval)]
    if not ask:
        return entries
    policy, resolver = _dns_view(config, drift)
    answered = {entry["domain"]: entry for entry in _dnsrun.recheck(ask, drift["edge_cname"], policy, resolver, int(drift.get("workers", 16)))}
    try:
        _drift.record_checked(config["state_root"], list(answered), now)
    except LinkcertError as exc:  # bookkeeping: the next run asks again
        print("linkcert-renew: %s" % exc.msg, file=sys.stderr)
    print("linkcert-renew: DNS and CAA asked again for %d of %d certificate(s)" % (len(answered), len(entries)))
    return [answered.get(entry["domain"], entry) for entry in entries]


# ------------------------------------------------------------------ the pending watcher

def watched(state: t.Mapping[str, t.Any]) -> bool:
    """Whether an installed certificate's domain is the watcher's too: not plainly issued (held by a DNS or CAA change,
    expired, not yet valid), so it is checked on its backoff until it is issued again."""
    return state.get("ssl_status") != _status.ISSUED or bool(state.get("held"))


def due(config: t.Mapping[str, t.Any], entries: t.Sequence[t.Dict[str, t.Any]], now: datetime.datetime, only: t.Optional[str],
        installed: bool) -> t.List[t.Dict[str, t.Any]]:
    """The watched domains among ``entries`` whose next check has come (or ``only``, whatever its schedule). Without a
    certificate every listed domain is watched; with one (``installed``), only those that are not plainly issued."""
    states = StateStore(config["state_root"])
    found = []
    for entry in entries:
        if only is not None:
            if entry["domain"] == only:
                found.append(entry)
            continue
        state = states.load(entry["domain"])
        if (not installed or watched(state)) and _watch.due(state.get("watch"), now):
            found.append(entry)
    return found


def record_watch(config: t.Mapping[str, t.Any], results: t.Sequence[t.Dict[str, t.Any]], reset: bool) -> None:
    """After the watcher checked installed certificates' domains: each one's next check (none once it is issued again)."""
    schedule = _watch.schedule_from(config["watch"].get("schedule"))
    states = StateStore(config["state_root"])
    for result in results:
        if result.get("ssl_status") == _status.ISSUED and states.load(result["domain"]).get("watch") is None:
            continue  # plainly issued, never watched: nothing to record
        with states.lock(result["domain"], timeout=30.0):
            state = states.load(result["domain"])
            fields = {key: result.get(key) for key in ("ssl_status", "label", "reason", "message", "remediation", "retry_after")}
            status, watch_after = _watch.after_check(state, fields, utcnow(), schedule, reset)
            new_state = dict(state, **status)
            new_state["watch"] = watch_after
            if new_state != state:
                states.save(result["domain"], new_state)
        result.update(status, watch=watch_after)


def watch(config: t.Mapping[str, t.Any], runner: t.Any, entries: t.Sequence[t.Dict[str, t.Any]], reset: bool) -> t.List[t.Dict[str, t.Any]]:
    """Check these pending domains now: DNS routing and CAA first (nothing is ordered for a name that does not route to
    the edge, so the CA's failed-validation budget is kept), then the certificate of each that is ready; every result
    is recorded with the domain's next check."""
    section = config["watch"]
    schedule = _watch.schedule_from(section.get("schedule"))
    policy, resolver = _dns_view(config, section)
    checked = _dnsrun.recheck(list(entries), section["edge_cname"], policy, resolver, int(section.get("workers", 16)))
    ready = [entry for entry in checked if not entry.get("hold")]
    issued = {result["domain"]: result for result in runner.run(_acme_run.cert_specs(ready))} if ready else {}
    states = StateStore(config["state_root"])
    results = []
    for entry in checked:
        domain = entry["domain"]
        result = issued.get(domain)
        if result is None:  # not ready: the DNS or CAA finding is the status, with the record to publish
            hold = entry["hold"]
            result = dict(_status.status_entry(domain, _status.UNKNOWN, hold["reason"], hold["explanation"], hold.get("remediation")),
                          action="none", changed=False, names=[domain])
        with states.lock(domain, timeout=30.0):
            state = states.load(domain)
            fields = {key: result.get(key) for key in ("ssl_status", "label", "reason", "message", "remediation", "retry_after")}
            new_state = dict(state, domain=domain)
            if result.get("serial") is None:  # nothing installed (maybe removed from the edge): no certificate on record either
                new_state.update(serial=None, not_before=None, not_after=None, renew_after=None)
            status, watch_after = _watch.after_check(new_state, fields, utcnow(), schedule, reset)
            new_state.update(status, watch=watch_after)
            if new_state != state:
                states.save(domain, new_state)
        result.update(status, watch=watch_after)
        results.append(result)
    return results


# ------------------------------------------------------------------ serving, reloading, pushing

def serve(config: t.Mapping[str, t.Any], check_command: t.Sequence[str]) -> t.Tuple[bool, t.Optional[str]]:
    """Bring nginx's files to the traffic contract for the records as they are now (the options the role applied in
    STATE_ROOT/.sites.json; nothing when the role never did). Returns (changed, error message)."""
    try:
        options = _sites.load_options(config["state_root"])
        if options is None:
            return False, None
        applied = _sites.apply(config["state_root"], options, check_command, run_command)
    except LinkcertError as exc:
        return False, exc.msg
    if applied.changed:
        print("linkcert-renew: nginx's sites rewritten: %d served, %d redirected to HTTPS" % (len(applied.served), len(applied.redirected)))
    return applied.changed, None


def snapshot(config: t.Mapping[str, t.Any], entries: t.Sequence[t.Mapping[str, t.Any]]) -> t.Dict[str, t.Tuple[t.Any, ...]]:
    """What decides how each domain is served (status, reason, hold, serial), to see what a run changed."""
    states = StateStore(config["state_root"])
    found = {}
    for entry in entries:
        state = states.load(entry["domain"])
        found[entry["domain"]] = tuple(state.get(key) for key in ("ssl_status", "reason", "held", "serial"))
    return found


def push(config: t.Mapping[str, t.Any], changed: t.Sequence[str]) -> bool:
    """Push the changed certificates (and what earlier runs could not deliver) to the fleet's other nodes."""
    fleet = _fleet.fleet_from(config.get("fleet"))
    if fleet is None:
        return True
    account = config.get("account_key") or os.path.join(config["state_root"], "account.key")

    def bundle_for(domains: t.List[str]) -> t.Dict[str, t.Any]:
        return _acme_sync.export_bundle(config["cert_root"], config["state_root"], account, domains)

    ok = True
    for result in _fleet.push(fleet, bundle_for, changed, config["state_root"], run_with_input):
        outcome = "updated" if result["ok"] else "NOT reached, retried by the next run"
        print("linkcert-renew: fleet node %s %s: %s (%s)" % (result["node"], outcome, result["message"], ", ".join(result["domains"])))
        ok = ok and result["ok"]
    return ok


def reload_if_needed(config: t.Mapping[str, t.Any], needed: bool, check_command: t.Sequence[str], no_reload: bool) -> bool:
    """Reload nginx when something changed or an earlier run could not; True when nginx serves what is on disk."""
    pending = os.path.exists(os.path.join(config["state_root"], PENDING))
    if no_reload or not (needed or pending):
        return True
    if pending and not needed:
        print("an earlier run could not reload nginx: trying again")
    reloaded, message = reload_nginx(config.get("reload_command") or ["systemctl", "reload", "nginx"], check_command)
    print(message)
    try:
        remember_reload(config["state_root"], None if reloaded else message)
    except (OSError, LinkcertError) as exc:
        print("linkcert-renew: cannot record the pending reload in %s: %s" % (config["state_root"], exc), file=sys.stderr)
    return reloaded


def receive(config: t.Mapping[str, t.Any], no_reload: bool) -> int:
    """The other end of a fleet push: install the bundle on standard input, serve it, reload; one JSON line answers."""
    check_command = config.get("check_command") or ["nginx", "-t"]
    try:
        bundle = json.loads(sys.stdin.buffer.read().decode("utf-8") or "{}")
        domains = _fleet.bundle_domains(bundle)
        account = config.get("account_key") or os.path.join(config["state_root"], "account.key")
        installed = _acme_sync.install_bundle(bundle, config["cert_root"], config["state_root"], account, check_mode=False)
    except (ValueError, LinkcertError) as exc:
        print(json.dumps({"ok": False, "message": "the bundle was refused: %s" % getattr(exc, "msg", exc)}))
        return EXIT_CONFIG
    changed, error = serve(config, check_command)
    reloaded = reload_if_needed(config, bool(installed["installed"]) or changed, check_command, no_reload)
    ok = error is None and reloaded
    message = "%d certificate(s) installed of %d received%s" % (len(installed["installed"]), len(domains),
                                                                "" if ok else "; " + (error or "nginx NOT reloaded"))
    print(json.dumps({"ok": ok, "message": message, "installed": installed["installed"], "domains": domains}))
    return EXIT_OK if ok else EXIT_RELOAD


# ------------------------------------------------------------------ one run

def main(argv: t.Optional[t.Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="linkcert-renew", description="Renew linkcert certificates that are due, and issue those of "
                                     "pending domains whose DNS is right now.")
    parser.add_argument("--config", default="/etc/linkcert/renew.json")
    parser.add_argument("--no-reload", action="store_true", help="do not reload nginx")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--watch", action="store_true", help="only the pending watcher (the domains not issued whose next check has come)")
    mode.add_argument("--domain", metavar="NAME", help="check NAME now, whatever its schedule, and issue or renew it if it is due "
                                                       "(Verify Now on the edge)")
    mode.add_argument("--receive", action="store_true", help="install a fleet bundle read on standard input (the issuer's push)")
    opts = parser.parse_args(argv)
    try:
        with open(opts.config, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError) as exc:
        print("linkcert-renew: cannot read %s: %s" % (opts.config, exc), file=sys.stderr)
        return EXIT_CONFIG
    if opts.receive:
        return receive(config, opts.no_reload)
    check_command = config.get("check_command") or ["nginx", "-t"]
    try:
        listed = config.get("certificates", [])
        entries = [dict(entry, domain=spec.domain) for entry, spec in zip(listed, _acme_run.cert_specs(listed))]
        only = None
        if opts.domain is not None:
            only = _names.normalize_domain(opts.domain, what="--domain")
            if only not in [entry["domain"] for entry in entries]:
                raise InputError("--domain %s is not one of this edge's domains (renewal_domains, from linkcert_domains): add it to the "
                                 "inventory and run onboard_domain.yml first" % only, item=only)
            if config.get("fleet_issuer") and config.get("fleet_issuer") != config.get("node"):
                raise InputError("this node does not order in its fleet: run linkcert-renew --domain %s on %s" % (only, config["fleet_issuer"]),
                                 item=only)
        # In a fleet, what the other nodes must learn: certificates installed, and records whose status changes what is served.
        before = snapshot(config, entries) if config.get("fleet") else {}
        installed = [entry for entry in entries if os.path.exists(os.path.join(config["cert_root"], entry["domain"], "cert.pem"))]
        pending = [entry for entry in entries if entry not in installed]
        now = utcnow()
        watching = bool(config.get("watch"))
        if only is not None and pending and not watching:
            raise InputError("%s has no certificate yet, and this edge has no pending watcher configured (renew.json: watch)" % only, item=only)
        # The watcher's share: domains without a certificate, and held ones, whose next check has come.
        held = due(config, installed, now, only, installed=True) if watching else []
        new = due(config, pending, now, only, installed=False) if watching else []
        if only is not None:
            renew = [entry for entry in installed if entry["domain"] == only]
        else:
            renew = held if opts.watch else installed
        if config.get("drift_check") and renew:
            # Held domains (and --domain) are asked again now; the others when their last check is old or they are due.
            asked = {entry["domain"] for entry in held} if only is None else {only}
            renew = recheck_dns(config, renew, force=only is not None, also=asked)
        settings = _acme_run.settings_from_options(dict(config, server_check=None if opts.no_reload else check_command))
        runner = _acme_run.Runner(settings, run_command=run_command)
        results = runner.run(_acme_run.cert_specs(renew)) if renew else []
        if watching:  # held domains get their next check; one issued again loses its watch
            record_watch(config, results, reset=only is not None)
        if new:
            results += watch(config, runner, new, reset=only is not None)
    except LinkcertError as exc:
        print("linkcert-renew: %s" % exc.msg, file=sys.stderr)
        return EXIT_CONFIG
    for result in results:
        line = "%s  %s  %s  %s" % (result["domain"], result["label"], result["action"], result["message"])
        if result.get("remediation") and result.get("ssl_status") != _status.ISSUED:
            line += "  publish: %s" % " + ".join(str(result["remediation"]).splitlines())
        if (result.get("watch") or {}).get("next_check"):
            line += "  (next check %s)" % result["watch"]["next_check"]
        print(line)
    changed = [r["domain"] for r in results if r["changed"]]
    sites_changed, sites_error = serve(config, check_command) if not opts.no_reload else (False, None)
    if sites_error:
        print("linkcert-renew: nginx's sites could NOT be updated (the previous files are back): %s" % sites_error, file=sys.stderr)
    reloaded = reload_if_needed(config, bool(changed) or sites_changed, check_command, opts.no_reload)
    touched = set(changed)
    if config.get("fleet"):
        touched |= {domain for domain, seen in snapshot(config, entries).items() if seen != before.get(domain)}
    delivered = push(config, sorted(touched)) if not opts.no_reload else True
    print("linkcert-renew: %d certificate(s), %d renewed or issued, %d failed, %d pending checked, %d CA request(s)" % (
        len(results), len(changed), sum(1 for r in results if r["action"] == "failed"), len(held) + len(new), runner.ca_requests))
    # The run failed when a certificate failed or nginx could not load a new one; a drifted (held) domain is its own status.
    healthy = reloaded and not sites_error and delivered and all(r["action"] != "failed" for r in results)
    write_metrics(config, results, STARTED, "success" if healthy else "failure")
    if not reloaded or sites_error:
        return EXIT_RELOAD
    if not delivered:
        return EXIT_FLEET
    # A pending domain still waiting for its customer's DNS is the watcher's normal work, not a failed run (unless asked for).
    waiting = set() if only is not None else {entry["domain"] for entry in new + (held if opts.watch else [])}
    if not all(r["ssl_status"] == "issued" for r in results if r["domain"] not in waiting):
        return EXIT_NOT_VALID
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
