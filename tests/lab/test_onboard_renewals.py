"""Renewals on a booted lab edge (onboard_edge.py's, an edge of its own) as onboard_domain.yml and renew.yml run
them: held by a broken nginx configuration, by DNS drift and a failing CAA parent, shown by status.yml until DNS is
right, and a certificate renewed on disk but not served."""

from __future__ import annotations

import json
import re

import labctl
import pytest
from labtools import run_playbook
import onboard_edge
from onboard_edge import DUE, GOOD, INVENTORY, PLAYBOOK, nginx_workers, on_edge, orders_so_far, run_status, served, table

pytestmark = [pytest.mark.lab, pytest.mark.integration, pytest.mark.testhost]

# An edge of this file's own (onboard_edge.py's fixtures, module-scoped), beside test_onboard_playbook.py's.
edge_lab, pebble_root, first_run = onboard_edge.edge_lab, onboard_edge.pebble_root, onboard_edge.first_run


def test_a_broken_nginx_config_on_the_edge_orders_nothing_and_keeps_serving(edge_lab, first_run, pebble_root):
    """A colleague's half-finished edit in conf.d: nginx -t fails. The renewal that comes due orders nothing, nginx
    is not reloaded, the working certificates stay served, and the play fails naming the file; fixed, the next run renews."""
    broken = "/etc/nginx/conf.d/customer-redirects.conf"
    pairs = "sha256sum /etc/linkcert/live/*/privkey.pem /etc/linkcert/live/*/fullchain.pem"
    before, workers = on_edge(edge_lab, pairs), nginx_workers(edge_lab)
    serials = {name: served(edge_lab, pebble_root, name)["serialNumber"] for name in GOOD}
    orders = orders_so_far(edge_lab)

    on_edge(edge_lab, "printf 'linkcert_no_such_directive on;\\n' > %s" % broken)
    try:
        run = run_playbook(PLAYBOOK, INVENTORY, extra_vars=DUE, env=edge_lab["env"])
        said = " ".join(run.stdout.split())
        assert run.rc != 0 and run.total("failed") == 1, run.stdout
        assert "cannot load its configuration, so nothing was ordered for links.example.com, em.example.com" in said, run.stdout
        assert 'unknown directive "linkcert_no_such_directive" in %s:1' % broken in said
        rows = {line.split()[0]: line for line in table(run.stdout)}
        for name in GOOD:
            assert "SSL Issued" in rows[name] and "renewal failed (server_config_broken), still served" in rows[name], rows[name]
            state = json.loads(on_edge(edge_lab, "cat /var/lib/linkcert/state/%s.json" % name))
            assert state["reason"] == "server_config_broken" and state["ssl_status"] == "issued"
            assert served(edge_lab, pebble_root, name)["serialNumber"] == serials[name]
        assert orders_so_far(edge_lab) == orders, "a certificate nginx could not load was ordered"
        assert on_edge(edge_lab, pairs) == before and nginx_workers(edge_lab) == workers, "files changed or nginx was reloaded"
        assert on_edge(edge_lab, "systemctl is-active nginx").strip() == "active"
    finally:
        on_edge(edge_lab, "rm -f %s" % broken)

    fixed = run_playbook(PLAYBOOK, INVENTORY, extra_vars=DUE, env=edge_lab["env"])
    assert fixed.rc == 0, fixed.stdout
    assert orders_so_far(edge_lab) == orders + len(GOOD)
    for name in GOOD:
        state = json.loads(on_edge(edge_lab, "cat /var/lib/linkcert/state/%s.json" % name))
        now_served = served(edge_lab, pebble_root, name)["serialNumber"]
        assert state["action"] == "renewed" and now_served != serials[name] and int(now_served, 16) == int(state["serial"], 16)


def test_dns_drift_and_a_failing_caa_parent_hold_renewal_and_keep_serving(edge_lab, first_run, pebble_root):
    """Due certificates (renew_before 90 days): links.example.com's CNAME now points elsewhere (the customer moved it),
    and example.com, em.example.com's CAA parent, answers SERVFAIL. Nothing is ordered, both stay served; drift is
    SSL Pending with the record to publish, the failed lookup keeps SSL Issued. With DNS right again both renew."""
    lab = labctl.Lab.from_env(edge_lab)
    moved, caa_failing = GOOD
    serials = {name: served(edge_lab, pebble_root, name)["serialNumber"] for name in GOOD}
    orders = orders_so_far(edge_lab)
    lab.dns_set("cname", moved, "elsewhere.example.org")
    lab.dns_set("servfail", "example.com", True)
    # DNS stays broken until the records are read: the edge's watch timer checks held domains too, and with DNS right
    # again it would (rightly) lift the holds before this test has looked at them.
    try:
        run = run_playbook(PLAYBOOK, INVENTORY, extra_vars=DUE, env=edge_lab["env"])
        assert run.rc == 0, run.stdout
        rows = {line.split()[0]: line for line in table(run.stdout)}
        assert re.search(r"SSL Pending\s+dns_drift: publish links\.example\.com\. CNAME edge\.linkcert\.example\.", rows[moved]), rows[moved]
        assert re.search(r"SSL Issued\s+expires \S+; renewal held \(caa_dns_error\)", rows[caa_failing]), rows[caa_failing]
        assert orders_so_far(edge_lab) == orders, "an order went out for a held domain"
        for name, reason, status in ((moved, "dns_drift", "pending"), (caa_failing, "caa_dns_error", "issued")):
            state = json.loads(on_edge(edge_lab, "cat /var/lib/linkcert/state/%s.json" % name))
            assert (state["reason"], state["ssl_status"]) == (reason, status), state
            assert int(state["serial"], 16) == int(serials[name], 16), "the record lost its certificate"
            assert served(edge_lab, pebble_root, name)["serialNumber"] == serials[name], "%s is no longer served" % name
        assert "SERVFAIL" in json.loads(on_edge(edge_lab, "cat /var/lib/linkcert/state/%s.json" % caa_failing))["message"]
    finally:
        lab.dns_set("cname", moved, "edge.linkcert.example")
        lab.dns_set("servfail", "example.com", False)

    again = run_playbook(PLAYBOOK, INVENTORY, extra_vars=DUE, env=edge_lab["env"])
    assert again.rc == 0, again.stdout
    assert orders_so_far(edge_lab) == orders + len(GOOD)
    for name in GOOD:
        state = json.loads(on_edge(edge_lab, "cat /var/lib/linkcert/state/%s.json" % name))
        assert (state["action"], state["ssl_status"]) == ("renewed", "issued"), state
        assert int(served(edge_lab, pebble_root, name)["serialNumber"], 16) == int(state["serial"], 16) != int(serials[name], 16)


def test_renewal_run_holds_drift_and_status_shows_it_until_dns_is_right(edge_lab, first_run, pebble_root, tmp_path):
    """renew.yml (as AWX runs it) when the customer moved links.example.com's CNAME away and published a CAA for
    em.example.com that forbids our CA: nothing is ordered for them, both are SSL Pending with the record to fix and
    keep serving their certificates; status.yml and its page say so; with DNS right again the next run renews."""
    lab = labctl.Lab.from_env(edge_lab)
    moved, forbidden = GOOD
    serials = {name: served(edge_lab, pebble_root, name)["serialNumber"] for name in GOOD}
    orders = orders_so_far(edge_lab)
    lab.dns_set("cname", moved, "elsewhere.example.org")
    lab.dns_set("caa", forbidden, "issue sectigo.com")
    try:
        renew = run_playbook("playbooks/renew.yml", INVENTORY, extra_vars=DUE, env=edge_lab["env"])
        assert renew.rc == 0, renew.stdout
        assert orders_so_far(edge_lab) == orders, "an order went out for a drifted domain"
        for name, reason in ((moved, "dns_drift"), (forbidden, "caa_drift")):
            state = json.loads(on_edge(edge_lab, "cat /var/lib/linkcert/state/%s.json" % name))
            assert (state["ssl_status"], state["reason"]) == ("pending", reason), state
            assert served(edge_lab, pebble_root, name)["serialNumber"] == serials[name], "%s is no longer served" % name
        run, rows, page = run_status(edge_lab, tmp_path)
        assert run.rc == 0, run.stdout
        assert (rows[moved]["reason"], rows[moved]["remediation"]) == ("dns_drift", "links.example.com. CNAME edge.linkcert.example.")
        assert rows[forbidden]["reason"] == "caa_drift" and 'CAA 0 issue "letsencrypt.org"' in rows[forbidden]["remediation"]
        assert all(rows[name]["label"] == "SSL Pending" and rows[name]["alerts"] for name in GOOD)
        assert "dns_drift" in page and "caa_drift" in page
        failing, _rows, _page = run_status(edge_lab, tmp_path, linkcert_fail_on="alert")
        said = " ".join(failing.stdout.split())
        assert failing.rc != 0 and re.search(r"2 domain\(s\) with alerts: (links|em)\.example\.com, (em|links)\.example\.com", said), \
            said[said.find("Fail on alerts"):][:600]
    finally:
        lab.dns_set("cname", moved, "edge.linkcert.example")
        lab.dns_clear("caa", forbidden)

    healed = run_playbook("playbooks/renew.yml", INVENTORY, extra_vars=DUE, env=edge_lab["env"])
    assert healed.rc == 0, healed.stdout
    assert orders_so_far(edge_lab) == orders + len(GOOD)
    for name in GOOD:
        state = json.loads(on_edge(edge_lab, "cat /var/lib/linkcert/state/%s.json" % name))
        assert (state["action"], state["ssl_status"]) == ("renewed", "issued")
        assert int(served(edge_lab, pebble_root, name)["serialNumber"], 16) == int(state["serial"], 16) != int(serials[name], 16)


def test_status_reports_a_certificate_renewed_on_disk_but_not_served(edge_lab, first_run, pebble_root, tmp_path):
    """The renewal runner renews on disk with --no-reload (as if the reload had been forgotten): status.yml connects with
    SNI, sees the old serial served and says served_mismatch with the fix; after a reload it is served_ok again."""
    old = {name: served(edge_lab, pebble_root, name)["serialNumber"] for name in GOOD}
    on_edge(edge_lab, "python3 -c 'import json; c = json.load(open(\"/etc/linkcert/renew.json\")); c[\"force\"] = True; "
                      "json.dump(c, open(\"/root/renew-forced.json\", \"w\"))'")
    on_edge(edge_lab, "python3 /usr/local/lib/linkcert/linkcert-renew.pyz --config /root/renew-forced.json --no-reload; rm /root/renew-forced.json")
    run, rows, page = run_status(edge_lab, tmp_path)
    assert run.rc == 0, run.stdout
    for name in GOOD:
        row = rows[name]
        assert (row["reason"], row["label"]) == ("served_mismatch", "SSL Issued"), row
        assert int(row["served_serial"], 16) == int(old[name], 16) != int(row["serial"], 16)
        assert "nginx has not been reloaded" in row["message"] and "systemctl reload nginx" in row["remediation"]
    assert "served_mismatch" in page
    on_edge(edge_lab, "nginx -t && systemctl reload nginx")
    run, rows, _page = run_status(edge_lab, tmp_path)
    assert run.rc == 0
    for name in GOOD:
        assert rows[name]["alerts"] == [] and int(rows[name]["served_serial"], 16) == int(rows[name]["serial"], 16)
