# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""linkcert's renewal runner, started by linkcert-renew.service (and its timer).

Renews what is due with the collection's own code (the acme_http01_cert module's
utilities, installed next to this file by the renewal role), orders nothing while
``nginx -t`` fails (a new certificate could not be loaded), reloads nginx only when a
certificate changed and nginx accepts its configuration, and logs one line per domain
to the journal.  A reload that could not be done is remembered (``STATE_ROOT/reload-pending``)
and retried by every later run until it succeeds, so a renewed certificate is never
left on disk unserved.  Exit status: 0 when every certificate is valid and served (even
if a renewal failed but the old certificate still works), 1 when one is not valid,
2 for a bad configuration, 3 when nginx still has to be reloaded.
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
from ansible_collections.mailops.linkcert.plugins.module_utils import _acme_run, _dnsrun, _names  # noqa: E402
from ansible_collections.mailops.linkcert.plugins.module_utils import _drift, _metrics  # noqa: E402
from ansible_collections.mailops.linkcert.plugins.module_utils._acme_state import StateStore  # noqa: E402
from ansible_collections.mailops.linkcert.plugins.module_utils._acme_storage import atomic_write  # noqa: E402
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import LinkcertError  # noqa: E402


PENDING = "reload-pending"


def run_command(argv: t.Sequence[str]) -> t.Tuple[int, str, str]:
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=120)
    return done.returncode, done.stdout, done.stderr


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


def recheck_dns(config: t.Mapping[str, t.Any], certificates: t.List[t.Dict[str, t.Any]]) -> t.List[t.Dict[str, t.Any]]:
    """Ask DNS again whether installed certificates' names still route to the edge and CAA still lets the CA issue; the
    ones that do not are held (nothing ordered, the certificate kept, dns_drift / caa_drift reported).

    Asked for every domain whose last check (STATE_ROOT/.dns-checked.json, written by the role too) is older than
    ``interval_hours`` (20), that is due, or that is not plainly issued; the others were checked recently enough."""
    drift = config["drift_check"]
    now = datetime.datetime.now(datetime.timezone.utc)
    interval = datetime.timedelta(hours=float(drift.get("interval_hours", 20)))
    states, checked = StateStore(config["state_root"]), _drift.load_checked(config["state_root"])
    entries = [dict(entry, domain=_names.normalize_domain(entry["domain"], what="certificates domain")) for entry in certificates]
    ask = [entry for entry in entries if _drift.needs_check(checked.get(entry["domain"]), states.load(entry["domain"]), now, interval)]
    if not ask:
        return entries
    policy = _dnsrun.caa_policy(drift.get("ca_identities") or ["letsencrypt.org"], "http-01", drift.get("account_uri"))
    resolver = _dnsrun.make_resolver(config.get("resolvers") or None, float(drift.get("timeout", 5.0)), int(drift.get("retries", 2)))
    answered = {entry["domain"]: entry for entry in _dnsrun.recheck(ask, drift["edge_cname"], policy, resolver, int(drift.get("workers", 16)))}
    try:
        _drift.record_checked(config["state_root"], list(answered), now)
    except LinkcertError as exc:  # bookkeeping: the next run asks again
        print("linkcert-renew: %s" % exc.msg, file=sys.stderr)
    print("linkcert-renew: DNS and CAA asked again for %d of %d certificate(s)" % (len(answered), len(entries)))
    return [answered.get(entry["domain"], entry) for entry in entries]


def main(argv: t.Optional[t.Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Renew linkcert certificates that are due.")
    parser.add_argument("--config", default="/etc/linkcert/renew.json")
    parser.add_argument("--no-reload", action="store_true", help="do not reload nginx")
    opts = parser.parse_args(argv)
    with open(opts.config, encoding="utf-8") as handle:
        config = json.load(handle)
    try:
        # Only certificates that are installed: first issuance belongs to onboarding, where DNS and CAA are checked.
        listed = config.get("certificates", [])
        wanted = [entry for entry, spec in zip(listed, _acme_run.cert_specs(listed))
                  if os.path.exists(os.path.join(config["cert_root"], spec.domain, "cert.pem"))]
        if config.get("drift_check"):
            wanted = recheck_dns(config, wanted)
        specs = _acme_run.cert_specs(wanted)
        check_command = config.get("check_command") or ["nginx", "-t"]
        settings = _acme_run.settings_from_options(dict(config, server_check=None if opts.no_reload else check_command))
        runner = _acme_run.Runner(settings, run_command=run_command)
        results = runner.run(specs)
    except LinkcertError as exc:
        print("linkcert-renew: %s" % exc.msg, file=sys.stderr)
        return 2
    for result in results:
        print("%s  %s  %s  %s" % (result["domain"], result["label"], result["action"], result["message"]))
    changed = [r["domain"] for r in results if r["changed"]]
    pending = os.path.exists(os.path.join(config["state_root"], PENDING))
    reloaded = True
    if (changed or pending) and not opts.no_reload:
        if pending and not changed:
            print("an earlier run could not reload nginx: trying again")
        reloaded, message = reload_nginx(config.get("reload_command") or ["systemctl", "reload", "nginx"], check_command)
        print(message)
        try:
            remember_reload(config["state_root"], None if reloaded else message)
        except (OSError, LinkcertError) as exc:
            print("linkcert-renew: cannot record the pending reload in %s: %s" % (config["state_root"], exc), file=sys.stderr)
    print("linkcert-renew: %d certificate(s), %d renewed, %d failed, %d CA request(s)" % (
        len(results), len(changed), sum(1 for r in results if r["action"] == "failed"), runner.ca_requests))
    # The run failed when a certificate failed or nginx could not load a renewed one; a drifted (held) domain is its own status.
    write_metrics(config, results, STARTED, "success" if reloaded and all(r["action"] != "failed" for r in results) else "failure")
    if not all(r["ssl_status"] == "issued" for r in results):
        return 1
    return 0 if reloaded else 3


if __name__ == "__main__":
    sys.exit(main())
