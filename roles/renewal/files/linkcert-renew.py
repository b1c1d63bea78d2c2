# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""linkcert's renewal runner, started by linkcert-renew.service (and its timer).

Renews what is due with the collection's own code (the acme_http01_cert module's
utilities, installed next to this file by the renewal role), reloads nginx only
when a certificate changed and nginx accepts its configuration, and logs one line
per domain to the journal.  Exit status: 0 when every certificate is valid (even if
a renewal failed but the old certificate still works), 1 when one is not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import typing as t

LIB = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, LIB)

# pylint: disable=wrong-import-position
from ansible_collections.mailops.linkcert.plugins.module_utils import _acme_run  # noqa: E402
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import LinkcertError  # noqa: E402


def reload_nginx(command: t.Sequence[str], check_command: t.Sequence[str]) -> str:
    check = subprocess.run(list(check_command), capture_output=True, text=True, check=False)
    if check.returncode != 0:
        return "nginx -t failed, nginx NOT reloaded (the running configuration keeps serving): %s" % check.stderr.strip()
    done = subprocess.run(list(command), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return "reloading nginx failed: %s" % (done.stderr.strip() or done.stdout.strip())
    return "nginx reloaded"


def main(argv: t.Optional[t.Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Renew linkcert certificates that are due.")
    parser.add_argument("--config", default="/etc/linkcert/renew.json")
    parser.add_argument("--no-reload", action="store_true", help="do not reload nginx")
    opts = parser.parse_args(argv)
    with open(opts.config, encoding="utf-8") as handle:
        config = json.load(handle)
    try:
        # Only certificates that are installed: first issuance belongs to onboarding, where DNS and CAA are checked.
        specs = [spec for spec in _acme_run.cert_specs(config.get("certificates", []))
                 if os.path.exists(os.path.join(config["cert_root"], spec.domain, "cert.pem"))]
        runner = _acme_run.Runner(_acme_run.settings_from_options(config))
        results = runner.run(specs)
    except LinkcertError as exc:
        print("linkcert-renew: %s" % exc.msg, file=sys.stderr)
        return 2
    for result in results:
        print("%s  %s  %s  %s" % (result["domain"], result["label"], result["action"], result["message"]))
    changed = [r["domain"] for r in results if r["changed"]]
    if changed and not opts.no_reload:
        print(reload_nginx(config.get("reload_command") or ["systemctl", "reload", "nginx"], config.get("check_command") or ["nginx", "-t"]))
    print("linkcert-renew: %d certificate(s), %d renewed, %d failed, %d CA request(s)" % (
        len(results), len(changed), sum(1 for r in results if r["action"] == "failed"), runner.ca_requests))
    return 0 if all(r["ssl_status"] == "issued" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
