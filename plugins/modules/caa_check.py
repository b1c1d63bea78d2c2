#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: caa_check
short_description: Check that CAA records let our CA issue for domains (RFC 8659, RFC 8657)
version_added: 0.1.0
description:
  - For each domain, finds the relevant CAA record set the way a CA does (RFC 8659 section 3) and
    decides whether the given CA may issue, including the RFC 8657 C(accounturi) and
    C(validationmethods) parameters.
  - The relevant set is the CAA set at the name itself (the resolver follows its aliases), else at
    its parent, and so on up to the top-level domain; the first non-empty set wins. CNAME targets'
    parents are never consulted.
  - A DNS failure (SERVFAIL, timeout) met during that climb blocks issuance, because the CA refuses in
    that case too. Names above the one where the set was found are never asked.
  - When issuance is blocked, the result names the exact record to publish.
  - The module never changes anything and never reports C(changed).
author:
  - linkcert maintainers (@mailops)
extends_documentation_fragment:
  - mailops.linkcert.dns
  - mailops.linkcert.dns.attributes
options:
  domains:
    description:
      - Names the certificate will hold. C(*.example.com) means a wildcard name, checked against
        C(issuewild) when the set holds any, else against C(issue).
      - Names are validated and normalised first (case, trailing dot, IDN to A-labels).
    type: list
    elements: str
    required: true
  ca_identities:
    description:
      - Issuer domain names that identify the CA in CAA records, compared case-insensitively.
      - The first one is used in the suggested record.
    type: list
    elements: str
    default: [letsencrypt.org]
  validation_method:
    description:
      - The ACME challenge type that will be used, checked against C(validationmethods) (RFC 8657).
    type: str
    default: http-01
  account_uri:
    description:
      - The ACME account URL that will order, checked against C(accounturi) (RFC 8657).
      - The M(mailops.linkcert.acme_http01_cert) module returns it as C(account_uri).
      - When omitted and a record pins an account, the domain is reported as blocked with reason
        C(account_uri_unknown).
    type: str
seealso:
  - name: RFC 8659
    description: DNS Certification Authority Authorization (CAA) Resource Record.
    link: https://www.rfc-editor.org/rfc/rfc8659
  - name: RFC 8657
    description: CAA record extensions for account URI and ACME method binding.
    link: https://www.rfc-editor.org/rfc/rfc8657
  - module: mailops.linkcert.sending_domain_verify
"""

EXAMPLES = r"""
- name: Check that Let's Encrypt may issue for the customer's tracking domain
  mailops.linkcert.caa_check:
    domains:
      - links.customer.com
      - em.customer.com
  register: caa

- name: Show the record each blocked domain must publish
  ansible.builtin.debug:
    msg: "{{ item.domain }}: {{ item.message }} Publish: {{ item.remediation }}"
  loop: "{{ caa.results | rejectattr('allowed') }}"
  loop_control:
    label: "{{ item.domain }}"

- name: Check against specific resolvers, pinned to our ACME account
  mailops.linkcert.caa_check:
    domains: "{{ linkcert_domains | map(attribute='name') }}"
    resolvers: [192.0.2.53, "192.0.2.54:5353"]
    account_uri: https://acme-v02.api.letsencrypt.org/acme/acct/123456
    timeout: 3
"""

RETURN = r"""
all_allowed:
  description: Whether the CA may issue for every domain.
  returned: always
  type: bool
  sample: false
results:
  description: One entry per domain, in the order given.
  returned: always
  type: list
  elements: dict
  contains:
    domain:
      description: The normalised name (C(*.) kept for a wildcard).
      type: str
      sample: links.customer.com
    allowed:
      description: Whether the CA may issue for this name.
      type: bool
      sample: false
    found_at:
      description: The name whose CAA lookup returned the relevant set, or null when there is none.
      type: str
      sample: customer.com
    records:
      description: The relevant record set.
      type: list
      elements: dict
      sample: [{flags: 0, tag: issue, value: sectigo.com}]
    reason:
      description:
        - A short machine code. Allowed C(no_caa), C(no_issue_property), C(permitted); blocked
          C(issuer_not_listed), C(issuance_forbidden), C(critical_unknown_tag), C(account_uri_mismatch),
          C(account_uri_unknown), C(validation_method_not_allowed), C(malformed_record), C(dns_error).
      type: str
      sample: issuer_not_listed
    message:
      description: What was found and what to do, in one sentence or two.
      type: str
      sample: letsencrypt.org may not issue for links.customer.com ...
    remediation:
      description: The exact record to publish, in zone-file form, or null when none is needed or none would help.
      type: str
      sample: customer.com. CAA 0 issue "letsencrypt.org"
    checked:
      description: The names whose CAA records were asked, in order.
      type: list
      elements: str
      sample: [links.customer.com, customer.com]
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.mailops.linkcert.plugins.module_utils import _dnsrun
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import LinkcertError
from ansible_collections.mailops.linkcert.plugins.module_utils._names import normalize_domains


def main():
    argument_spec = _dnsrun.dns_argument_spec()
    argument_spec.update(
        domains={"type": "list", "elements": "str", "required": True},
        ca_identities={"type": "list", "elements": "str", "default": ["letsencrypt.org"]},
        validation_method={"type": "str", "default": "http-01"},
        account_uri={"type": "str"},
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    for library, error in _dnsrun.missing_libraries():
        module.fail_json(msg=missing_required_lib(library), exception=str(error))
    try:
        domains = normalize_domains(module.params["domains"], allow_wildcard=True)
        policy = _dnsrun.caa_policy(module.params["ca_identities"], module.params["validation_method"], module.params["account_uri"])
        resolver = _dnsrun.resolver_from_params(module.params)
        results = _dnsrun.run_caa(domains, policy, resolver, module.params["workers"])
    except LinkcertError as exc:
        exc.fail(module)
    module.exit_json(changed=False, all_allowed=all(r["allowed"] for r in results), results=results)


if __name__ == "__main__":
    main()
