#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) linkcert contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: acme_http01_cert
short_description: Issue and renew certificates over ACME HTTP-01 from a webroot, with per-domain state
version_added: 0.1.0
description:
  - For each entry of O(certificates), checks the installed certificate and, only when it is missing, for other names or key
    type, or due for renewal, orders a new one over ACME HTTP-01 (RFC 8555), answering the challenge from O(webroot).
  - A certificate that is valid and not due makes no request to the CA and reports no change.
  - Files are written to temporary names and renamed; each domain's key and certificate are switched together through a
    symbolic link, so they are never a mismatched pair; a failed renewal leaves the installed pair untouched.
  - Each domain gets a JSON state file in O(state_root) with its status (SSL Issued / SSL Pending / SSL Unknown), reason,
    message, dates, the last attempt and success, and recent failures.
  - Certificates are processed concurrently (O(workers)); a per-domain lock keeps two runs from ordering twice.
author:
  - linkcert maintainers (@mailops)
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
    details:
      - In check mode the CA is never contacted and nothing is written; the result predicts the action and C(changed).
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check mode), when in diff mode.
    support: none
  idempotent:
    description: When run twice in a row outside check mode, with the same arguments, the second invocation indicates no change.
    support: full
options:
  certificates:
    description: The certificates to manage.
    type: list
    elements: dict
    required: true
    suboptions:
      domain:
        description: The main name; it names the files and the state. Validated and normalised (case, trailing dot, IDN).
        type: str
        required: true
      alt_names:
        description: Further names in the same certificate. Wildcards are refused (HTTP-01 cannot validate them).
        type: list
        elements: str
        default: []
      hold:
        description:
          - Set when the domain's DNS or CAA no longer allows an order (the certificate role builds it from
            M(mailops.linkcert.sending_domain_verify)'s findings). Nothing is ordered; an installed certificate is kept and
            reported, C(SSL Pending) with C(dns_drift) or C(caa_drift) when the customer changed DNS or CAA, still
            C(SSL Issued) when a lookup failed.
          - A held domain with no installed certificate is returned with C(held=true) and no serial, and nothing is written.
        type: dict
        suboptions:
          reason:
            description: The finding's reason, for example C(dns_not_ready), C(caa_blocked), C(caa_dns_error).
            type: str
            required: true
          explanation:
            description: What the finding says.
            type: str
            required: true
          remediation:
            description: The record to publish, if any.
            type: str
  acme_directory:
    description: The ACME directory URL.
    type: str
    default: https://acme-v02.api.letsencrypt.org/directory
  acme_ca_bundle:
    description:
      - PEM file with the CA certificate(s) to trust for the ACME server's TLS, for a private ACME server such as a lab's Pebble.
      - When omitted, the system trust store is used. TLS verification is never switched off.
    type: path
  account_key:
    description:
      - The ACME account key. Created as an EC P-256 key with mode 0600 when absent (not in check mode).
      - Defaults to C(STATE_ROOT/account.key).
    type: path
  account_email:
    description: Contact e-mail address registered with the account.
    type: str
  terms_agreed:
    description: Whether you agree to the CA's terms of service; required by most CAs to register.
    type: bool
    default: false
  eab_kid:
    description: External account binding key identifier, for CAs that require it.
    type: str
  eab_hmac_key:
    description:
      - External account binding MAC key (base64url), exactly as the CA gives it. Never logged.
      - It must decode to at least 32 bytes (HS256, RFC 7518 3.2); a shorter one (a paste cut short) is refused before anything runs.
    type: str
  webroot:
    description:
      - The directory nginx serves C(/.well-known/acme-challenge/) from. Challenge files are removed afterwards.
      - Token files over two hours old (left by a run that was killed) are removed by the next run that orders.
      - O(webroot), O(cert_root) and O(state_root) must not be inside one another; they are refused before anything is done.
    type: path
    required: true
  cert_root:
    description: Where C(DOMAIN/privkey.pem) (0600), C(cert.pem), C(chain.pem) and C(fullchain.pem) live.
    type: path
    required: true
  state_root:
    description: Where the per-domain JSON state files, the account record and the locks live.
    type: path
    required: true
  key_type:
    description: The certificate key type.
    type: str
    choices: [ec256, ec384, rsa2048, rsa3072, rsa4096]
    default: ec256
  reuse_key:
    description: Keep the installed private key on renewal (when its type matches O(key_type)).
    type: bool
    default: false
  renew_before:
    description:
      - C(auto) renews inside the CA's ACME Renewal Information window (RFC 9773) when the directory offers C(renewalInfo),
        otherwise when a third of the certificate's lifetime is left (half for lifetimes under 10 days).
      - A number renews that many days before expiry.
    type: str
    default: auto
  profile:
    description: The certificate profile to ask for, when the directory offers profiles (for example C(tlsserver)).
    type: str
  preferred_chain:
    description:
      - When the CA offers alternate chains (RFC 8555 7.4.2), install the one whose topmost certificate was issued by a CA of this
        common name (for example C(ISRG Root X1)), as certbot's C(--preferred-chain) does.
      - The CA's default chain is installed when no chain matches. The alternates are fetched only when the default does not match.
    type: str
  ca_limits:
    description:
      - The CA's rate limits, kept in a ledger per CA and account under O(state_root) and checked before every new order. An order
        that would go past one is not placed; the certificate stays C(SSL Pending), reason C(ca_rate_limit_queued), with the time its
        turn comes in RV(results[].retry_after), and the pending watcher (or the next run) orders it then.
      - C(auto) is Let's Encrypt's published limits when O(acme_directory) is Let's Encrypt's production directory, none otherwise;
        C(none) is no limits. A mapping overrides those defaults limit by limit (C(null) removes one). Its keys are
        C(new_orders) (per account), C(certificates_per_domain) (per registered domain, from the Public Suffix List),
        C(duplicate_certificates) (per set of names) and C(failed_authorizations) (per name), each
        a mapping of C(count) and C(window_hours). Let's Encrypt's are 300 per 3 h, 50 per 168 h, 5 per 168 h and 5 per 1 h.
      - Renewals that carry an ARI C(replaces) are exempt, as at Let's Encrypt. A 429 from the CA with a C(Retry-After) past the
        run blocks what it refuses (the account, a registered domain, a set of names or a name, from the problem detail) until then,
        ARI renewals included.
      - C(failed_authorizations) also sets the failed-validation guard (C(rate_limit_guard)); without it the guard counts 5 per hour.
    type: raw
    default: auto
  self_check:
    description:
      - Before asking the CA to validate, fetch the challenge URL the way the CA does and stop with a clear reason if it does not
        return the key authorization, so a misrouted domain never spends the CA's failed-validation budget.
    type: bool
    default: true
  challenge_port:
    description: The port the self-check fetches from. Public CAs always validate on 80; a test lab may use another.
    type: int
    default: 80
  resolvers:
    description: Resolvers (C(ip) or C(ip:port)) used to find the domain's addresses for the self-check; default the system's.
    type: list
    elements: str
  timeout:
    description: Deadline in seconds for each certificate, from the first request to the installed files.
    type: float
    default: 120
  workers:
    description: Certificates processed at the same time.
    type: int
    default: 8
  force:
    description: Renew even when the certificate is not due (the failed-validation guard is skipped too).
    type: bool
    default: false
  server_check:
    description:
      - A command (list of arguments, no shell) that must succeed before anything is ordered, for example V([nginx, -t]).
      - It runs once, when the first certificate turns out to be due, and never in check mode or when nothing is due.
      - When it fails, the web server could not load a new certificate, so nothing is ordered or written. Each due certificate
        reports reason C(server_config_broken) with the command's last lines, and an installed certificate stays served.
    type: list
    elements: str
requirements:
  - acme >= 2.0
  - josepy
  - cryptography
  - dnspython (for O(resolvers))
seealso:
  - module: mailops.linkcert.caa_check
  - module: mailops.linkcert.sending_domain_verify
  - name: RFC 8555
    description: Automatic Certificate Management Environment (ACME).
    link: https://www.rfc-editor.org/rfc/rfc8555
  - name: RFC 9773
    description: ACME Renewal Information (ARI).
    link: https://www.rfc-editor.org/rfc/rfc9773
"""

EXAMPLES = r"""
- name: Issue or renew the customers' certificates
  mailops.linkcert.acme_http01_cert:
    certificates:
      - domain: links.customer.com
      - domain: em.customer.com
        alt_names: [click.em.customer.com]
    account_email: certificates@esp.example
    terms_agreed: true
    webroot: /var/lib/linkcert/webroot
    cert_root: /etc/linkcert/live
    state_root: /var/lib/linkcert/state
  register: certs

- name: Against a private ACME server with its own CA
  mailops.linkcert.acme_http01_cert:
    certificates:
      - domain: links.customer.com
    acme_directory: https://acme.internal.example/directory
    acme_ca_bundle: /etc/linkcert/acme-ca.pem
    terms_agreed: true
    webroot: /var/lib/linkcert/webroot
    cert_root: /etc/linkcert/live
    state_root: /var/lib/linkcert/state
"""

RETURN = r"""
account_uri:
  description: The ACME account URL (give it to M(mailops.linkcert.caa_check)'s O(mailops.linkcert.caa_check#module:account_uri)).
  returned: when known
  type: str
ca_requests:
  description: How many requests this run sent to the CA (0 when nothing was due).
  returned: always
  type: int
results:
  description: One entry per certificate, in the order given.
  returned: always
  type: list
  elements: dict
  contains:
    domain:
      description: The normalised main name.
      type: str
    names:
      description: All names of the certificate.
      type: list
      elements: str
    ssl_status:
      description: C(issued) (a valid certificate is installed), C(pending) (verified but not issued yet, a retry follows) or
        C(unknown) (never issued, for a reason the customer must fix).
      type: str
    label:
      description: C(SSL Issued), C(SSL Pending) or C(SSL Unknown).
      type: str
    reason:
      description: A machine code, for example C(issued), C(renewed), C(not_due), C(not_yet_valid), C(self_check_http_404), C(acme_rate_limited),
        C(rate_limit_guard), C(ca_rate_limit_queued), C(server_config_broken), C(write_failed), C(locked).
      type: str
    retry_after:
      description:
        - When a certificate that waits may be ordered, in ISO 8601 UTC; its turn under the CA's rate limit (C(ca_rate_limit_queued)),
          the end of the failed-validation guard (C(rate_limit_guard)), or the CA's C(Retry-After) (C(acme_rate_limited)).
      type: str
      returned: when the certificate waits for that moment
    message:
      description: What happened and what to do.
      type: str
    remediation:
      description: What to change so the certificate can be issued, when the failure is the edge's setup or the CA's (for a failure
        the customer must fix, the role words it from the DNS and CAA checks).
      type: str
    retry:
      description:
        - After a failure (C(action=failed)), what happens next.
        - C(now) and C(backoff) were retried within this run already; C(amended) was asked again in another form (an order
          without C(replaces)); C(later) is retried by a later run (the renewal timer, the pending watcher); C(fix) succeeds only
          once the setup that the remediation names changes.
      type: str
      returned: when action is failed
    action:
      description: C(issued), C(renewed), C(none) or C(failed).
      type: str
    changed:
      description: Whether this certificate's files changed.
      type: bool
    serial:
      description: The installed certificate's serial number (hex), or null.
      type: str
    issuer:
      description: The installed certificate's issuer, or null.
      type: str
    not_before:
      description: Start of validity (ISO 8601 UTC), or null.
      type: str
    not_after:
      description: End of validity (ISO 8601 UTC), or null.
      type: str
    renew_after:
      description: When renewal becomes due (ISO 8601 UTC), or null.
      type: str
    privkey:
      description: Path of the private key.
      type: str
    cert:
      description: Path of the certificate.
      type: str
    chain:
      description: Path of the intermediate chain.
      type: str
    fullchain:
      description: Path of certificate plus chain, for nginx's C(ssl_certificate).
      type: str
    held:
      description: Whether the certificate was held back by O(certificates[].hold) (present only then).
      type: bool
    duration_ms:
      description: Wall time spent on this certificate (lock, decision, protocol, files), in milliseconds.
      type: float
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.mailops.linkcert.plugins.module_utils import _acme_client, _acme_run
from ansible_collections.mailops.linkcert.plugins.module_utils._errors import LinkcertError


def main():
    module = AnsibleModule(
        argument_spec={
            "certificates": {"type": "list", "elements": "dict", "required": True, "options": {
                "domain": {"type": "str", "required": True},
                "alt_names": {"type": "list", "elements": "str", "default": []},
                "hold": {"type": "dict", "options": {
                    "reason": {"type": "str", "required": True},
                    "explanation": {"type": "str", "required": True},
                    "remediation": {"type": "str"},
                }},
            }},
            "acme_directory": {"type": "str", "default": "https://acme-v02.api.letsencrypt.org/directory"},
            "acme_ca_bundle": {"type": "path"},
            "account_key": {"type": "path", "no_log": False},
            "account_email": {"type": "str"},
            "terms_agreed": {"type": "bool", "default": False},
            "eab_kid": {"type": "str"},
            "eab_hmac_key": {"type": "str", "no_log": True},
            "webroot": {"type": "path", "required": True},
            "cert_root": {"type": "path", "required": True},
            "state_root": {"type": "path", "required": True},
            "key_type": {"type": "str", "default": "ec256", "choices": ["ec256", "ec384", "rsa2048", "rsa3072", "rsa4096"]},
            "reuse_key": {"type": "bool", "default": False},
            "renew_before": {"type": "str", "default": "auto"},
            "profile": {"type": "str"},
            "preferred_chain": {"type": "str"},
            "ca_limits": {"type": "raw", "default": "auto"},
            "self_check": {"type": "bool", "default": True},
            "challenge_port": {"type": "int", "default": 80},
            "resolvers": {"type": "list", "elements": "str"},
            "timeout": {"type": "float", "default": 120.0},
            "workers": {"type": "int", "default": 8},
            "force": {"type": "bool", "default": False},
            "server_check": {"type": "list", "elements": "str"},
        },
        supports_check_mode=True,
    )
    if not _acme_client.HAS_ACME:
        module.fail_json(msg=missing_required_lib("acme"), exception=str(_acme_client.ACME_IMPORT_ERROR))
    try:
        specs = _acme_run.cert_specs(module.params["certificates"])
        runner = _acme_run.Runner(_acme_run.settings_from_options(module.params, module.check_mode),
                                  run_command=lambda argv: module.run_command(list(argv), expand_user_and_vars=False))
        results = runner.run(specs)
    except LinkcertError as exc:
        exc.fail(module)
    module.exit_json(changed=any(r["changed"] for r in results), results=results, account_uri=runner.account_uri,
                     ca_requests=runner.ca_requests)


if __name__ == "__main__":
    main()
