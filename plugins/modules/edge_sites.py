#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: edge_sites
short_description: Serve every customer name by the edge's traffic contract, from the records on the edge
version_added: 0.3.0
description:
  - Renders nginx's TLS servers and the map of names whose plain HTTP is redirected to HTTPS from every record in
    O(state_root) (the state files M(mailops.linkcert.acme_http01_cert), M(mailops.linkcert.certificate_sync) and
    M(mailops.linkcert.domain_status) keep), and writes them as one batch.
  - "The traffic contract: a name whose certificate is installed, valid now and SSL Issued (not held by a DNS or CAA
    change) is redirected from port 80 to HTTPS (unless O(http_redirect=false)) and served its own certificate on port 443.
    A valid certificate that is held is still served on port 443, but plain HTTP is no longer redirected. Every other
    name (pending, unknown, expired, removed, never heard of) is refused on port 443 by a C(default_server) with
    C(ssl_reject_handshake on), so no other customer's certificate is ever shown, and its plain HTTP is proxied to the
    tracking upstream by the challenge_webroot role's server, which also answers every ACME challenge."
  - Only what differs is written (to a temporary name, then renamed). O(validate) (C(nginx -t)) checks the new files; if it
    fails, or a write fails, every file is put back and the task fails with nginx's own message.
  - The options are kept in C(STATE_ROOT/.sites.json), so the renewal runner renders with exactly these when it issues,
    renews, or sees a certificate expire, and the files change the same way a playbook run would change them.
  - The certificate role runs it after every run; it needs nginx 1.19.4 or later (C(ssl_reject_handshake)).
author:
  - linkcert maintainers (@mailops)
extends_documentation_fragment:
  - mailops.linkcert.state
options:
  state_root:
    description: The state directory (C(linkcert_state_root)) whose records decide what is served.
    type: path
    required: true
  conf:
    description: The file that holds the TLS servers (in a directory nginx includes in its C(http) block).
    type: path
    default: /etc/nginx/conf.d/linkcert-sites.conf
  names_map:
    description:
      - The file that lists the names redirected to HTTPS, one C(NAME 1;) line each. The challenge_webroot role's server
        reads it through its C(map) (C(include /etc/nginx/linkcert/*.map)); its directory is created (0755) when missing.
    type: path
    default: /etc/nginx/linkcert/https-names.map
  https_port:
    description: The port TLS is served on (C(linkcert_https_port)).
    type: int
    default: 443
  listen_ipv6:
    description: Listen on IPv6 as well.
    type: bool
    default: true
  tracking_upstream:
    description:
      - Where HTTPS requests for a customer's name are proxied (C(linkcert_tracking_upstream)), an C(http://) or C(https://)
        URL such as C(http://127.0.0.1:8080). Empty answers with a built-in text naming the host.
    type: str
    default: ''
  http_redirect:
    description:
      - Redirect plain HTTP to HTTPS for the names with a valid certificate (C(linkcert_http_redirect)). V(false) keeps plain
        HTTP proxied for every name.
    type: bool
    default: true
  http2:
    description:
      - How HTTP/2 is switched on. V(auto) asks C(nginx -v) and writes the C(http2 on;) directive from nginx 1.25.1 on, the
        C(listen ... http2) parameter before.
    type: str
    choices: [auto, directive, listen]
    default: auto
  validate:
    description: The command that checks nginx's configuration once the files are written, for example V([nginx, -t]).
    type: list
    elements: str
"""

EXAMPLES = r"""
- name: Serve every domain by the traffic contract
  mailops.linkcert.edge_sites:
    state_root: /var/lib/linkcert/state
    tracking_upstream: http://127.0.0.1:8080
    validate: [nginx, -t]
  notify: Reload nginx
"""

RETURN = r"""
served:
  description: The domains served their own certificate on port 443 (installed and valid now).
  returned: always
  type: list
  elements: str
redirected:
  description: The domains whose plain HTTP is redirected to HTTPS.
  returned: always
  type: list
  elements: str
files:
  description: One entry per file, with what changed (V(created), V(content), V(mode), V(owner)).
  returned: always
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.mailops.linkcert.plugins.module_utils import _sites
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import LinkcertError
from ansible_collections.mailops.linkcert.plugins.module_utils._files import report


def main():
    module = AnsibleModule(
        argument_spec={
            "state_root": {"type": "path", "required": True},
            "conf": {"type": "path", "default": _sites.DEFAULT_CONF},
            "names_map": {"type": "path", "default": _sites.DEFAULT_NAMES_MAP},
            "https_port": {"type": "int", "default": 443},
            "listen_ipv6": {"type": "bool", "default": True},
            "tracking_upstream": {"type": "str", "default": ""},
            "http_redirect": {"type": "bool", "default": True},
            "http2": {"type": "str", "choices": ["auto", "directive", "listen"], "default": "auto"},
            "validate": {"type": "list", "elements": "str"},
        },
        supports_check_mode=True,
    )
    p = module.params

    def run(argv):
        return module.run_command(argv, expand_user_and_vars=False, handle_exceptions=False)

    try:
        http2 = p["http2"]
        if http2 == "auto":
            rc, out, err = module.run_command(["nginx", "-v"], handle_exceptions=False) if module.get_bin_path("nginx") else (1, "", "")
            http2 = "directive" if rc == 0 and _sites.http2_directive_for(out + err) else "listen"
        options = _sites.options_from(dict(p, http2_directive=http2 == "directive"))
        applied = _sites.apply(p["state_root"], options, p["validate"], run, check_mode=module.check_mode, save_options=True)
    except LinkcertError as exc:
        exc.fail(module)
    module.exit_json(changed=applied.changed, served=applied.served, redirected=applied.redirected, files=report(applied.changes))


if __name__ == "__main__":
    main()
