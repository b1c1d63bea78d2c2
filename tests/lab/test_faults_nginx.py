"""Fault suite: a broken nginx configuration already on the host, during a first issuance and a renewal.

The module runs ``server_check`` (here real ``nginx -t`` on a copy of the lab's configuration, which a
case breaks with an unknown directive in an included file) once something is due and before anything is
ordered. When nginx cannot load its configuration, a new certificate could not be served: nothing is
ordered (no CA request at all), nothing is written, the working certificate is still served, and the
answer quotes nginx's own error naming the broken file. Once the file is fixed the next run does the job.

The renewal runner does the same, and when nginx cannot be reloaded after a renewal it remembers it
(``STATE_ROOT/reload-pending``, exit status 3) and retries on every run until the reload succeeds.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict

import labctl
import pytest
from cryptography import x509
from labtools import acme_args, run_module
from test_faults_ca import no_temporary_files, served_serial
from test_renewal_runner import install_runner

pytestmark = [pytest.mark.lab, pytest.mark.integration, pytest.mark.faults]

ADDR = "127.0.0.1"
BROKEN = "linkcert_no_such_directive on;\n"


@pytest.fixture(scope="module")
def nginx_lab(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("faults-nginx")
    ports = labctl.free_ports(len(labctl.PORT_KEYS) + 1, ADDR)
    lab = labctl.Lab(dir=base / "lab", addr=ADDR, ports=dict(zip(labctl.PORT_KEYS, ports)), nginx=True, timeout=30.0,
                     pebble_env={"PEBBLE_AUTHZREUSE": "0"}, serve_root=base / "live", serve_port=ports[-1])
    lab.start()
    # The configuration nginx -t checks: the lab's own, plus an include directory a case can break.
    conf_d = base / "conf.d"
    conf_d.mkdir()
    config = (lab.dir / "nginx.conf").read_text()
    cut = config.rindex("}")
    check_conf = base / "check.conf"
    check_conf.write_text(config[:cut] + "    include %s/*.conf;\n}\n" % conf_d)
    check = [lab.binaries["nginx"], "-t", "-c", str(check_conf), "-p", "%s/" % lab.dir, "-e", str(base / "check-error.log")]
    try:
        yield SimpleNamespace(lab=lab, live=base / "live", state=base / "state", conf_d=conf_d, check=check, serve_port=ports[-1],
                              root=labctl.write_pebble_root(lab.env(), base / "pebble-root.pem"))
    finally:
        lab.stop()


@pytest.fixture
def broken(nginx_lab):
    """An included file nginx -t rejects, as a colleague's half-finished edit would leave it."""
    path = nginx_lab.conf_d / "customer-redirects.conf"
    path.write_text(BROKEN)
    yield path
    path.unlink(missing_ok=True)


def issue(env: SimpleNamespace, domain: str, **extra: Any) -> Dict[str, Any]:
    args = acme_args(env.lab, env.live, env.state, [{"domain": domain}], **dict({"server_check": env.check, "workers": 1}, **extra))
    run = run_module("acme_http01_cert", args, timeout=300)
    assert run.state in ("SUCCESS", "CHANGED"), run.stdout + run.stderr
    result = run.result["results"][0]
    result["ca_requests"] = run.result["ca_requests"]
    return result


def files(env: SimpleNamespace, domain: str) -> Dict[str, Any]:
    live = env.live / domain
    found: Dict[str, Any] = {name: (live / ("%s.pem" % name)).read_bytes() for name in ("privkey", "cert", "fullchain")}
    found["key_mode"] = stat.S_IMODE(os.stat(live / "privkey.pem").st_mode)
    found["serial"] = x509.load_pem_x509_certificate(found["cert"]).serial_number
    return found


def state_of(env: SimpleNamespace, domain: str) -> Dict[str, Any]:
    return json.loads((env.state / ("%s.json" % domain)).read_text())


def test_the_check_is_real_nginx(nginx_lab, broken):
    """Control: the same command passes on the healthy configuration and fails, naming the file, on the broken one."""
    failing = subprocess.run(nginx_lab.check, capture_output=True, text=True, check=False)
    assert failing.returncode != 0 and "linkcert_no_such_directive" in failing.stderr and str(broken) in failing.stderr
    broken.unlink()
    passing = subprocess.run(nginx_lab.check, capture_output=True, text=True, check=False)
    assert passing.returncode == 0, passing.stderr


def test_first_issuance_orders_nothing_while_nginx_is_broken(nginx_lab, broken):
    domain = "first.nginx-broken.test"
    nginx_lab.lab.dns_set("a", domain, [nginx_lab.lab.addr])
    result = issue(nginx_lab, domain)
    assert (result["action"], result["reason"], result["ssl_status"], result["changed"]) == ("failed", "server_config_broken", "pending", False), result
    assert result["ca_requests"] == 0, "a certificate nginx could not load was ordered"
    assert "nothing was ordered" in result["message"] and str(broken) in result["message"], result["message"]
    assert "linkcert_no_such_directive" in result["message"]
    state = state_of(nginx_lab, domain)
    assert state["reason"] == "server_config_broken" and state["failures"][-1]["reason"] == "server_config_broken"
    assert not (nginx_lab.live / domain).exists() and served_serial(nginx_lab, domain) is None
    no_temporary_files(nginx_lab)

    broken.unlink()
    again = issue(nginx_lab, domain)
    assert (again["action"], again["ssl_status"]) == ("issued", "issued"), again
    assert served_serial(nginx_lab, domain) == files(nginx_lab, domain)["serial"]


def test_renewal_keeps_the_working_certificate_while_nginx_is_broken(nginx_lab):
    domain = "renew.nginx-broken.test"
    nginx_lab.lab.dns_set("a", domain, [nginx_lab.lab.addr])
    first = issue(nginx_lab, domain)
    assert first["action"] == "issued", first
    before = files(nginx_lab, domain)
    assert served_serial(nginx_lab, domain) == before["serial"]

    quiet = issue(nginx_lab, domain)
    assert (quiet["action"], quiet["ca_requests"]) == ("none", 0)

    path = nginx_lab.conf_d / "customer-redirects.conf"
    path.write_text(BROKEN)
    try:
        result = issue(nginx_lab, domain, force=True)
    finally:
        path.unlink()
    assert (result["action"], result["reason"], result["ssl_status"]) == ("failed", "server_config_broken", "issued"), result
    assert result["ca_requests"] == 0
    assert "installed certificate is untouched and still served" in result["message"] and str(path) in result["message"]
    after = files(nginx_lab, domain)
    assert after == before, "the working pair changed"
    assert after["key_mode"] == 0o600
    assert state_of(nginx_lab, domain)["serial"] == first["serial"]
    assert served_serial(nginx_lab, domain) == before["serial"]
    no_temporary_files(nginx_lab)

    renewed = issue(nginx_lab, domain, force=True)
    assert (renewed["action"], renewed["ssl_status"]) == ("renewed", "issued"), renewed
    assert served_serial(nginx_lab, domain) == files(nginx_lab, domain)["serial"] != before["serial"]


def test_renewal_runner_orders_nothing_and_retries_a_reload_it_could_not_do(nginx_lab, tmp_path):
    domain = "runner.nginx-broken.test"
    nginx_lab.lab.dns_set("a", domain, [nginx_lab.lab.addr])
    common = acme_args(nginx_lab.lab, nginx_lab.live, nginx_lab.state, [{"domain": domain}])
    assert run_module("acme_http01_cert", common).state == "CHANGED"
    before = files(nginx_lab, domain)
    reloaded = tmp_path / "reloaded"
    runner = install_runner(tmp_path / "lib")
    config_path = tmp_path / "renew.json"
    pending = nginx_lab.state / "reload-pending"

    def run(**config: Any) -> subprocess.CompletedProcess:
        config_path.write_text(json.dumps(dict(common, check_command=nginx_lab.check, **config)))
        return subprocess.run([sys.executable, str(runner), "--config", str(config_path)], capture_output=True, text=True, timeout=300,
                              check=False)

    # nginx -t fails before the renewal: nothing ordered, nothing reloaded, the old pair kept and served.
    broken = nginx_lab.conf_d / "customer-redirects.conf"
    broken.write_text(BROKEN)
    try:
        refused = run(force=True, reload_command=["touch", str(reloaded)])
    finally:
        broken.unlink()
    assert refused.returncode == 0, refused.stdout + refused.stderr  # the old certificate is still valid and served
    assert "nothing was ordered" in refused.stdout and "0 renewed or issued, 1 failed, 0 pending checked, 0 CA request(s)" in refused.stdout, refused.stdout
    assert str(broken) in refused.stdout, "the runner's message does not name the broken file"
    assert files(nginx_lab, domain) == before and not reloaded.exists() and not pending.exists()

    # The renewal works but the reload fails: remembered, exit 3, and retried by the next run with nothing due.
    failed_reload = run(force=True, reload_command=["sh", "-c", "echo 'nginx.service is not active' >&2; exit 1"])
    assert failed_reload.returncode == 3, failed_reload.stdout + failed_reload.stderr
    assert "1 renewed" in failed_reload.stdout and "reloading nginx failed: nginx.service is not active" in failed_reload.stdout
    assert pending.exists() and "not active" in pending.read_text() and stat.S_IMODE(pending.stat().st_mode) == 0o600
    renewed = files(nginx_lab, domain)
    assert renewed["serial"] != before["serial"]

    retried = run(reload_command=["touch", str(reloaded)])
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert "0 renewed" in retried.stdout and "0 CA request(s)" in retried.stdout
    assert "could not reload nginx: trying again" in retried.stdout and reloaded.exists() and not pending.exists()

    reloaded.unlink()
    quiet = run(reload_command=["touch", str(reloaded)])
    assert quiet.returncode == 0 and not reloaded.exists(), "a reload with nothing changed and nothing pending"
    assert Path(nginx_lab.live / domain / "privkey.pem").stat().st_mode & 0o777 == 0o600
