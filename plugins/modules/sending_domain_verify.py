#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: sending_domain_verify
short_description: Verify the DNS records a customer's tracking or sending domain must publish
version_added: 0.1.0
description:
  - Checks, for many domains in one task, the records an email service provider asks its customers
    to publish, and says for each record exactly what to fix.
  - A tracking domain must be a CNAME (possibly through a chain) to the provider's edge name, or
    resolve to exactly the edge's addresses (a flattened CNAME). If it resolves elsewhere the result
    says so and names the likely cause, a proxying CDN in front of the name.
  - A sending domain may be asked for an SPF include (exactly one C(v=spf1) record that includes it
    with a passing qualifier), DKIM selectors (a CNAME to the provider's key, or a given public key),
    a minimum DMARC policy (at C(_dmarc.NAME), else at its organizational domain from the Public
    Suffix List), and a return path CNAME.
  - With O(authoritative=true) every check is asked of each authoritative server of the domain's zone
    directly, so a change that has reached only some of them shows up as such.
  - The module never changes anything and never reports C(changed).
author:
  - linkcert maintainers (@mailops)
extends_documentation_fragment:
  - mailops.linkcert.dns
  - mailops.linkcert.dns.attributes
options:
  domains:
    description:
      - The domains and what each must publish.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: The customer's domain, for example C(links.customer.com) or C(em.customer.com).
        type: str
        required: true
      kind:
        description:
          - C(tracking) (needs O(domains[].cname)) or C(sending).
          - Defaults to C(tracking) when only O(domains[].cname) is given, else C(sending).
        type: str
        choices: [tracking, sending]
      cname:
        description:
          - The edge host name the domain must point to. Its check decides RV(results[].ssl_ready).
        type: str
      spf_include:
        description: The domain the SPF record must C(include:), for example C(spf.esp.example).
        type: str
      dkim:
        description: DKIM selectors to check at C(SELECTOR._domainkey.NAME).
        type: list
        elements: dict
        suboptions:
          selector:
            description: The selector, for example C(s1).
            type: str
            required: true
          cname:
            description: The provider's key host the selector must be a CNAME to.
            type: str
          key:
            description:
              - The public key (the C(p=) value, base64, PEM armour allowed) that must be published.
              - With neither O(domains[].dkim[].cname) nor this, any valid key passes.
            type: str
      dmarc:
        description: The minimum DMARC policy required.
        type: str
        choices: [none, quarantine, reject]
      return_path:
        description: The bounce (MAIL FROM) host name and the CNAME target it must have.
        type: dict
        suboptions:
          name:
            description: The return path host name, for example C(bounce.em.customer.com).
            type: str
            required: true
          cname:
            description: The target, for example C(bounces.esp.example).
            type: str
            required: true
  authoritative:
    description:
      - Ask every authoritative server of each domain's zone directly (recursion off) instead of the
        recursive resolvers. The zone and its servers are found through O(resolvers).
      - Names outside the zone (CNAME targets, the organizational domain's DMARC record when it lives in
        another zone) are still resolved through O(resolvers).
    type: bool
    default: false
  authoritative_servers:
    description:
      - Authoritative servers to ask instead of the zone's NS set (C(ip) or C(ip:port)), for example a
        hidden primary. Implies O(authoritative=true).
    type: list
    elements: str
  authoritative_port:
    description: The port of the authoritative servers found through the zone's NS records.
    type: int
    default: 53
  caa:
    description:
      - Also check CAA, as M(mailops.linkcert.caa_check) does, for every domain whose DNS is ready for a certificate
        (RV(results[].ssl_ready)), in the same task and with the same resolver and cache. The answers are in
        RV(caa_results).
      - Saves a second task (and a second pass over the names) when both checks are wanted, as in the certificate role.
    type: dict
    suboptions:
      ca_identities:
        description: As M(mailops.linkcert.caa_check)'s O(mailops.linkcert.caa_check#module:ca_identities).
        type: list
        elements: str
        default: [letsencrypt.org]
      validation_method:
        description: As M(mailops.linkcert.caa_check)'s O(mailops.linkcert.caa_check#module:validation_method).
        type: str
        default: http-01
      account_uri:
        description: As M(mailops.linkcert.caa_check)'s O(mailops.linkcert.caa_check#module:account_uri).
        type: str
seealso:
  - module: mailops.linkcert.caa_check
  - name: RFC 7208 (SPF)
    description: Sender Policy Framework.
    link: https://www.rfc-editor.org/rfc/rfc7208
  - name: RFC 7489 (DMARC)
    description: Domain-based Message Authentication, Reporting, and Conformance.
    link: https://www.rfc-editor.org/rfc/rfc7489
"""

EXAMPLES = r"""
- name: Verify a tracking domain and a sending domain
  mailops.linkcert.sending_domain_verify:
    domains:
      - name: links.customer.com
        cname: edge.esp.example
      - name: em.customer.com
        spf_include: spf.esp.example
        dkim:
          - selector: s1
            cname: s1.dkim.esp.example
        dmarc: quarantine
        return_path:
          name: bounce.em.customer.com
          cname: bounces.esp.example
  register: dns

- name: List every record to fix
  ansible.builtin.debug:
    msg: "{{ item.1.name }}: {{ item.1.message }} Publish: {{ item.1.remediation }}"
  loop: "{{ dns.results | subelements('records') }}"
  when: item.1.status != 'verified'
  loop_control:
    label: "{{ item.1.name }}"

- name: Verify, and check CAA for the domains that are ready, in one task
  mailops.linkcert.sending_domain_verify:
    domains: "{{ linkcert_domains }}"
    caa: {}
  register: dns_and_caa

- name: Ask the zone's authoritative servers, to see a change that is still propagating
  mailops.linkcert.sending_domain_verify:
    domains: "{{ linkcert_domains }}"
    authoritative: true
"""

RETURN = r"""
caa_results:
  description:
    - With O(caa), one CAA answer per domain whose DNS is ready, in the order given, in the format of
      M(mailops.linkcert.caa_check)'s RV(mailops.linkcert.caa_check#module:results).
  returned: when O(caa) is given
  type: list
  elements: dict
checked_at:
  description: When the check started, in seconds since the epoch (this host's clock), so later tasks can date the findings.
  returned: always
  type: float
  sample: 1796093856.8
all_verified:
  description: Whether every record of every domain is verified.
  returned: always
  type: bool
  sample: false
results:
  description: One entry per domain, in the order given.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The normalised domain name.
      type: str
      sample: links.customer.com
    kind:
      description: C(tracking) or C(sending).
      type: str
      sample: tracking
    verified:
      description: Whether every record of this domain is verified.
      type: bool
      sample: true
    ssl_ready:
      description: Whether the name routes to the edge (its cname check passed), so HTTP-01 validation can succeed.
      type: bool
      sample: true
    message:
      description: A one-line summary.
      type: str
      sample: All 1 records of links.customer.com are verified.
    authoritative_servers:
      description: The servers asked, with O(authoritative=true).
      type: list
      elements: str
      returned: when O(authoritative=true)
    records:
      description: One entry per check.
      type: list
      elements: dict
      contains:
        check:
          description: C(cname), C(spf), C(dkim), C(dmarc) or C(return_path).
          type: str
        name:
          description: The DNS name checked (where the record was found, for DMARC).
          type: str
        expected:
          description: What must be published.
          type: raw
        found:
          description: What was found (text, list, or null).
          type: raw
        status:
          description: C(verified), C(missing), C(mismatch) or C(error) (the lookup failed).
          type: str
        message:
          description: What is wrong and why, in a sentence.
          type: str
        remediation:
          description: The exact record to publish, in zone-file form, or null.
          type: str
        servers:
          description: Per authoritative server, its status and what it returned.
          type: list
          elements: dict
          returned: when O(authoritative=true)
"""

import time

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.mailops.linkcert.plugins.module_utils import _dnsrun
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import LinkcertError
from ansible_collections.mailops.linkcert.plugins.module_utils._resolver import parse_server
from ansible_collections.mailops.linkcert.plugins.module_utils._verify import parse_specs


def _domain_spec():
    return {
        "name": {"type": "str", "required": True},
        "kind": {"type": "str", "choices": ["tracking", "sending"]},
        "cname": {"type": "str"},
        "spf_include": {"type": "str"},
        "dkim": {"type": "list", "elements": "dict", "options": {
            "selector": {"type": "str", "required": True},
            "cname": {"type": "str"},
            "key": {"type": "str", "no_log": False},
        }},
        "dmarc": {"type": "str", "choices": ["none", "quarantine", "reject"]},
        "return_path": {"type": "dict", "options": {
            "name": {"type": "str", "required": True},
            "cname": {"type": "str", "required": True},
        }},
    }


def main():
    argument_spec = _dnsrun.dns_argument_spec()
    argument_spec.update(
        domains={"type": "list", "elements": "dict", "required": True, "options": _domain_spec()},
        authoritative={"type": "bool", "default": False},
        authoritative_servers={"type": "list", "elements": "str"},
        authoritative_port={"type": "int", "default": 53},
        caa={"type": "dict", "options": {
            "ca_identities": {"type": "list", "elements": "str", "default": ["letsencrypt.org"]},
            "validation_method": {"type": "str", "default": "http-01"},
            "account_uri": {"type": "str"},
        }},
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    for library, error in _dnsrun.missing_libraries():
        module.fail_json(msg=missing_required_lib(library), exception=str(error))
    params = module.params
    checked_at = time.time()
    try:
        specs = parse_specs(params["domains"])
        resolver = _dnsrun.resolver_from_params(params)
        servers = [parse_server(s) for s in params["authoritative_servers"]] if params["authoritative_servers"] else None
        if not 0 < params["authoritative_port"] < 65536:
            module.fail_json(msg="authoritative_port must be between 1 and 65535, got %d" % params["authoritative_port"])
        auth = _dnsrun.AuthOptions(bool(params["authoritative"] or servers), servers, params["authoritative_port"], params["timeout"])
        caa = params["caa"]
        policy = _dnsrun.caa_policy(caa["ca_identities"], caa["validation_method"], caa["account_uri"]) if caa is not None else None
        results = _dnsrun.run_verify(specs, resolver, auth, params["workers"])
        extra = {}
        if policy is not None:
            ready = [r["name"] for r in results if r["ssl_ready"]]
            extra["caa_results"] = _dnsrun.run_caa(ready, policy, resolver, params["workers"])
    except LinkcertError as exc:
        exc.fail(module)
    module.exit_json(changed=False, checked_at=checked_at, all_verified=all(r["verified"] for r in results), results=results, **extra)


if __name__ == "__main__":
    main()
