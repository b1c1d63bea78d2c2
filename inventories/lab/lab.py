#!/usr/bin/env python3
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The local lab's inventory (`make demo`), read once from what `lab/edgelab.py start` recorded.

The edge is a Debian 12 test host booted by lab/edgelab.py (systemd as PID 1, its own nginx, reached
over SSH on a 198.18.0.0/15 veth); DNS is the lab's pebble-challtestsrv and the CA the lab's Pebble,
both on the host end of the edge's veth. LAB_DIR is $LINKCERT_LAB_DIR or the checkout's .lab:
LAB_DIR/edge.json says how to reach the edge, LAB_DIR/lab.json where the lab's services listen.

The values are plain data, resolved here once, rather than lookups in group_vars that Ansible would
evaluate again on every task (measured: about 1 s per onboarding run). group_vars/ beside this
script holds the rest of the lab's settings.
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CONNECTION = ("ansible_host", "ansible_user", "ansible_ssh_private_key_file", "ansible_ssh_common_args", "ansible_python_interpreter")


def load(lab_dir, name):
    path = os.path.join(lab_dir, name)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except OSError as exc:
        sys.exit("inventories/lab: cannot read %s (%s): start the lab first with `make lab-start` or `make demo`" % (path, exc.strerror))
    except ValueError as exc:
        sys.exit("inventories/lab: %s is not JSON (%s)" % (path, exc))


def inventory():
    lab_dir = os.environ.get("LINKCERT_LAB_DIR") or os.path.normpath(os.path.join(HERE, "..", "..", ".lab"))
    lab, edge = load(lab_dir, "lab.json"), load(lab_dir, "edge.json")
    group_vars = {
        "linkcert_lab_dir": lab_dir,
        "linkcert_resolvers": lab["LINKCERT_LAB_RESOLVER"].split(","),
        "linkcert_acme_directory": lab["LINKCERT_LAB_ACME_DIRECTORY"],
        # Pebble's TLS certificate is signed by the lab's own CA: installed on the edge from the controller.
        "linkcert_acme_ca_bundle_src": lab["LINKCERT_LAB_CA_BUNDLE"],
    }
    return {
        "linkcert_edges": {"hosts": ["lab-edge"], "vars": group_vars},
        "_meta": {"hostvars": {"lab-edge": {key: edge[key] for key in CONNECTION}}},
    }


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--host":
        print(json.dumps({}))
    else:
        print(json.dumps(inventory(), indent=2))
