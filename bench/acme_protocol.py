"""Benchmark: ACME HTTP-01 issuance by mailops.linkcert.acme_http01_cert against a bare-client floor.

Usage::

    .venv/py311/bin/python bench/acme_protocol.py [--count N] [--json out.json]

Starts a private lab (Pebble, pebble-challtestsrv, nginx) on free ports under
``.work/bench-lab``, then measures:

* the floor: a minimal client on certbot's ``acme`` library issuing N certificates one after
  the other, polling tightly (10 ms), timed per certificate from ``new_order`` to the
  downloaded certificate (account registration not timed);
* the module, run as users run it (``ansible localhost -m ...``): one N-certificate task with
  ``workers: 1``, the same task again with nothing due (the no-op run), and N other names with
  ``workers: 8``. The module's per-certificate protocol time is
  ``(wall(N-cert task) - wall(no-op task)) / N``, which removes Ansible's fixed start-up cost.

This is a benchmark, not a test: it exits 0 whatever the ratio is (1 only when something
failed, so the numbers would be meaningless). See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "lab"))
sys.path.insert(0, str(REPO / "tests" / "lab"))

import labctl  # noqa: E402
from labtools import ansible_env  # noqa: E402

import josepy as jose  # noqa: E402
from acme import challenges, messages  # noqa: E402
from acme import client as acme_client  # noqa: E402
from acme import crypto_util  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

ADDR = "127.0.0.1"
WORK = REPO / ".work" / "bench-lab"
LAB_DIR = WORK / "lab"
MODULE_DIR = WORK / "module"
PEBBLE_ENV = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
MODULE = "mailops.linkcert.acme_http01_cert"
POLL_SLEEP = 0.01       # seconds between polls of the floor client
POLL_DEADLINE = 60.0    # seconds one authorization or order may take in the floor
CERT_TIMEOUT = 60       # the module's per-certificate deadline
PARALLEL_WORKERS = 8
RATIO_LIMIT = 2.0


class BenchError(RuntimeError):
    """The benchmark could not produce meaningful numbers."""


# --------------------------------------------------------------------------- names


def floor_names(count: int) -> List[str]:
    return ["b%03d.floor.bench.test" % i for i in range(1, count + 1)]


def module_names(count: int) -> Dict[str, List[str]]:
    """b000 registers the account; b001..bN run sequentially; bN+1..b2N run with 8 workers."""
    return {
        "account": ["b000.module.bench.test"],
        "sequential": ["b%03d.module.bench.test" % i for i in range(1, count + 1)],
        "parallel": ["b%03d.module.bench.test" % i for i in range(count + 1, 2 * count + 1)],
    }


# --------------------------------------------------------------------------- lab


def make_lab() -> labctl.Lab:
    ports = dict(zip(labctl.PORT_KEYS, labctl.free_ports(len(labctl.PORT_KEYS), ADDR)))
    lab = labctl.Lab(dir=LAB_DIR, addr=ADDR, ports=ports, nginx=True, timeout=30.0, pebble_env=PEBBLE_ENV)
    running = lab.pids()
    if running:
        raise BenchError("a lab already runs in %s (%s): is another benchmark running? Stop it with "
                         "LINKCERT_LAB_DIR=%s python lab/labctl.py stop" % (LAB_DIR, running, LAB_DIR))
    # Fresh state every run: the lab's CA and Pebble's roots change, so old certificates and
    # module state would only make the module think nothing is due.
    shutil.rmtree(WORK, ignore_errors=True)
    return lab


# --------------------------------------------------------------------------- floor


def _pem_key_and_csr(name: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return crypto_util.make_csr(pem, [name])


def _poll_authorization(client: acme_client.ClientV2, authzr: messages.AuthorizationResource) -> None:
    deadline = time.monotonic() + POLL_DEADLINE
    while True:
        authzr, _response = client.poll(authzr)
        status = authzr.body.status
        if status == messages.STATUS_VALID:
            return
        if status != messages.STATUS_PENDING:
            errors = [str(c.error) for c in authzr.body.challenges if c.error is not None]
            raise BenchError("floor: authorization for %s is %s: %s" % (authzr.body.identifier.value, status, "; ".join(errors)))
        if time.monotonic() > deadline:
            raise BenchError("floor: authorization for %s still pending after %.0f s" % (authzr.body.identifier.value, POLL_DEADLINE))
        time.sleep(POLL_SLEEP)


def _poll_order(client: acme_client.ClientV2, orderr: messages.OrderResource) -> messages.Order:
    deadline = time.monotonic() + POLL_DEADLINE
    body = orderr.body
    while not (body.status == messages.STATUS_VALID and body.certificate):
        if body.status == messages.STATUS_INVALID:
            raise BenchError("floor: order %s is invalid: %s" % (orderr.uri, body.error))
        if time.monotonic() > deadline:
            raise BenchError("floor: order %s still %s after %.0f s" % (orderr.uri, body.status, POLL_DEADLINE))
        time.sleep(POLL_SLEEP)
        body = messages.Order.from_json(client._post_as_get(orderr.uri).json())  # pylint: disable=protected-access
    return body


def _issue_one(client: acme_client.ClientV2, jwk: jose.JWK, webroot: Path, csr_pem: bytes) -> str:
    orderr = client.new_order(csr_pem)
    written: List[Path] = []
    try:
        for authzr in orderr.authorizations:
            if authzr.body.status == messages.STATUS_VALID:
                continue
            challb = next((c for c in authzr.body.challenges if isinstance(c.chall, challenges.HTTP01)), None)
            if challb is None:
                raise BenchError("floor: no http-01 challenge for %s" % authzr.body.identifier.value)
            response, validation = challb.response_and_validation(jwk)
            path = webroot / challenges.HTTP01.URI_ROOT_PATH / challb.chall.encode("token")
            path.write_text(validation)
            written.append(path)
            client.answer_challenge(challb, response)
            _poll_authorization(client, authzr)
        orderr = client.begin_finalization(orderr)
        body = _poll_order(client, orderr)
        return client._post_as_get(body.certificate).text  # pylint: disable=protected-access
    finally:
        for path in written:
            path.unlink(missing_ok=True)


def run_floor(lab: labctl.Lab, names: Sequence[str], webroot: Optional[Path] = None) -> Dict[str, Any]:
    """Issue ``names`` one after the other; ``webroot`` is where the lab's HTTP-01 server reads (default: the lab's nginx)."""
    env = lab.env()
    account_key = ec.generate_private_key(ec.SECP256R1())
    jwk = jose.JWKEC(key=account_key)
    net = acme_client.ClientNetwork(jwk, alg=jose.ES256, verify_ssl=env["LINKCERT_LAB_CA_BUNDLE"], user_agent="linkcert-bench")
    directory = acme_client.ClientV2.get_directory(env["LINKCERT_LAB_ACME_DIRECTORY"], net)
    client = acme_client.ClientV2(directory, net)
    client.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True))
    webroot = webroot or Path(env["LINKCERT_LAB_WEBROOT"])
    (webroot / challenges.HTTP01.URI_ROOT_PATH).mkdir(parents=True, exist_ok=True)

    times_ms: List[float] = []
    for name in names:
        csr_pem = _pem_key_and_csr(name)  # key and CSR are made before the clock starts
        start = time.perf_counter()
        chain = _issue_one(client, jwk, webroot, csr_pem)
        times_ms.append((time.perf_counter() - start) * 1000.0)
        if "BEGIN CERTIFICATE" not in chain:
            raise BenchError("floor: no certificate downloaded for %s" % name)
    return {
        "per_cert_ms": times_ms,
        "median_ms": statistics.median(times_ms),
        "mean_ms": statistics.fmean(times_ms),
        "min_ms": min(times_ms),
        "max_ms": max(times_ms),
    }


# --------------------------------------------------------------------------- module


class ModuleRun:
    """One ``ansible HOST -m MODULE`` invocation (JSON result format): wall time and parsed result."""

    def __init__(self, label: str, wall_s: float, proc: subprocess.CompletedProcess, host: str = "localhost") -> None:
        self.label = label
        self.wall_s = wall_s
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.state: Optional[str] = None
        self.result: Dict[str, Any] = {}
        marker = host + " | "
        at = proc.stdout.find(marker)
        if at >= 0:
            head, sep, rest = proc.stdout[at + len(marker):].partition(" => ")
            if sep:
                self.state = head.strip()
                try:
                    self.result, _end = json.JSONDecoder().raw_decode(rest.lstrip())
                except ValueError:
                    self.result = {}

    def actions(self) -> Dict[str, int]:
        counts: Dict[str, int] = {}
        for item in self.result.get("results") or []:
            counts[item.get("action", "?")] = counts.get(item.get("action", "?"), 0) + 1
        return counts

    def failure_text(self) -> str:
        if self.state is None or not self.result:
            return "no module result in ansible output (rc %s)\n--- stdout ---\n%s\n--- stderr ---\n%s" % (
                self.rc, self.stdout[-3000:], self.stderr[-3000:])
        if self.state.startswith("FAILED") or self.result.get("failed"):
            return "module FAILED: %s" % self.result.get("msg", json.dumps(self.result)[:3000])
        bad = [r for r in self.result.get("results") or [] if r.get("action") == "failed"]
        return "; ".join("%s: %s (%s)" % (r.get("domain"), r.get("reason"), r.get("message")) for r in bad[:5])


def module_args(lab: labctl.Lab, names: Sequence[str], workers: int) -> Dict[str, Any]:
    env = lab.env()
    return {
        "certificates": [{"domain": name} for name in names],
        "acme_directory": env["LINKCERT_LAB_ACME_DIRECTORY"],
        "acme_ca_bundle": env["LINKCERT_LAB_CA_BUNDLE"],
        "terms_agreed": True,
        "webroot": env["LINKCERT_LAB_WEBROOT"],
        "cert_root": str(MODULE_DIR / "live"),
        "state_root": str(MODULE_DIR / "state"),
        "challenge_port": int(env["LINKCERT_LAB_HTTP_PORT"]),
        "resolvers": [env["LINKCERT_LAB_RESOLVER"]],
        "self_check": True,
        "timeout": CERT_TIMEOUT,
        "workers": workers,
    }


def run_module(label: str, args: Dict[str, Any]) -> ModuleRun:
    cmd = [str(Path(sys.executable).parent / "ansible"), "localhost", "-m", MODULE, "-a", json.dumps(args),
           "-e", "ansible_python_interpreter=%s" % sys.executable, "-c", "local"]
    timeout = 120 + CERT_TIMEOUT * len(args["certificates"])
    start = time.perf_counter()
    env = ansible_env({"ANSIBLE_CALLBACK_RESULT_FORMAT": "json"})
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)
    return ModuleRun(label, time.perf_counter() - start, proc)


def expect(run: ModuleRun, action: str, count: int) -> None:
    """Fail unless every certificate of ``run`` got ``action``."""
    if run.state is None or run.state.startswith("FAILED") or run.actions() != {action: count}:
        detail = run.failure_text() or "actions %s, expected %d x %r" % (run.actions(), count, action)
        raise BenchError("module, %s run: %s" % (run.label, detail))


def run_module_bench(lab: labctl.Lab, names: Dict[str, List[str]]) -> Dict[str, Any]:
    count = len(names["sequential"])
    account = run_module("account registration", module_args(lab, names["account"], 1))
    expect(account, "issued", 1)

    issue = run_module("sequential issuance", module_args(lab, names["sequential"], 1))
    expect(issue, "issued", count)
    noop = run_module("no-op", module_args(lab, names["sequential"], 1))
    expect(noop, "none", count)
    if noop.result.get("ca_requests"):
        raise BenchError("module, no-op run: %s requests to the CA, expected 0" % noop.result["ca_requests"])

    parallel = run_module("parallel issuance", module_args(lab, names["parallel"], PARALLEL_WORKERS))
    expect(parallel, "issued", count)

    seq_ms = (issue.wall_s - noop.wall_s) * 1000.0 / count
    durations = [float(r["duration_ms"]) for r in issue.result.get("results") or []]
    return {
        "reported_ms": durations,
        "reported_median_ms": statistics.median(durations),
        "reported_mean_ms": statistics.fmean(durations),
        "account_run_wall_s": account.wall_s,
        "sequential_wall_s": issue.wall_s,
        "sequential_ca_requests": issue.result.get("ca_requests"),
        "noop_wall_s": noop.wall_s,
        "sequential_ms_per_cert": seq_ms,
        "parallel_workers": PARALLEL_WORKERS,
        "parallel_wall_s": parallel.wall_s,
        "parallel_ms_per_cert": parallel.wall_s * 1000.0 / count,
        "parallel_net_ms_per_cert": (parallel.wall_s - noop.wall_s) * 1000.0 / count,
    }


# --------------------------------------------------------------------------- report


def versions() -> Dict[str, str]:
    from importlib import metadata

    found = {"python": platform.python_version(), "cpus": str(os.cpu_count())}
    for dist in ("ansible-core", "acme", "josepy", "cryptography"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "?"
    return found


def table(count: int, floor: Dict[str, Any], module: Dict[str, Any], info: Dict[str, str]) -> str:
    # The primary figure: each certificate's own wall time as the module measures it (lock, decision,
    # key, self-check, protocol, files), which Ansible's start-up jitter cannot blur.
    ratio = module["reported_median_ms"] / floor["median_ms"]
    ratio_subtraction = module["sequential_ms_per_cert"] / floor["mean_ms"]
    rows = [
        ("floor ms/cert, median", "%.1f" % floor["median_ms"]),
        ("floor ms/cert, mean", "%.1f" % floor["mean_ms"]),
        ("floor ms/cert, min / max", "%.1f / %.1f" % (floor["min_ms"], floor["max_ms"])),
        ("module ms/cert, median (per-certificate duration_ms)", "%.1f" % module["reported_median_ms"]),
        ("module ms/cert, mean (per-certificate duration_ms)", "%.1f" % module["reported_mean_ms"]),
        ("ratio module/floor (medians)", "%.2f" % ratio),
        ("module N-cert task wall, workers=1", "%.0f ms" % (module["sequential_wall_s"] * 1000)),
        ("module no-op run wall, same N", "%.0f ms" % (module["noop_wall_s"] * 1000)),
        ("module ms/cert, sequential (subtraction)", "%.1f" % module["sequential_ms_per_cert"]),
        ("ratio module/floor (subtraction / floor mean)", "%.2f" % ratio_subtraction),
        ("module ms/cert, workers=%d (wall/N)" % module["parallel_workers"], "%.1f" % module["parallel_ms_per_cert"]),
        ("module ms/cert, workers=%d (minus no-op)" % module["parallel_workers"], "%.1f" % module["parallel_net_ms_per_cert"]),
    ]
    width = max(len(label) for label, _value in rows)
    lines = ["ACME HTTP-01 protocol benchmark, N=%d (python %s, ansible-core %s, acme %s, %s CPUs)" % (
        count, info["python"], info["ansible-core"], info["acme"], info["cpus"])]
    lines += ["  %-*s  %s" % (width, label, value) for label, value in rows]
    lines.append("ratio <= %.1f: %s" % (RATIO_LIMIT, "yes" if ratio <= RATIO_LIMIT else "no"))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--count", type=int, default=20, help="certificates per measurement (default 20)")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers to FILE as JSON")
    opts = parser.parse_args(argv)
    if not 1 <= opts.count <= 999:
        parser.error("--count must be between 1 and 999")

    names = module_names(opts.count)
    try:
        lab = make_lab()
    except (BenchError, labctl.LabError) as exc:
        print("bench: %s" % exc, file=sys.stderr)
        return 1
    try:
        lab.start()
        for name in floor_names(opts.count) + [n for group in names.values() for n in group]:
            lab.dns_set("a", name, [lab.addr])
        print("lab up: %s (log in %s)" % (lab.env()["LINKCERT_LAB_ACME_DIRECTORY"], LAB_DIR / "log"), flush=True)
        print("floor: %d certificates with the acme library ..." % opts.count, flush=True)
        floor = run_floor(lab, floor_names(opts.count))
        print("module: account run, %d sequential, no-op, %d with %d workers ..." % (opts.count, opts.count, PARALLEL_WORKERS),
              flush=True)
        module = run_module_bench(lab, names)
    except (BenchError, labctl.LabError, subprocess.TimeoutExpired) as exc:
        print("bench: FAILED: %s" % exc, file=sys.stderr)
        return 1
    finally:
        lab.stop()

    info = versions()
    print()
    print(table(opts.count, floor, module, info))
    if opts.json:
        ratio = module["reported_median_ms"] / floor["median_ms"]
        report = {
            "count": opts.count,
            "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": info,
            "floor": floor,
            "module": module,
            "ratio_module_over_floor_medians": ratio,
            "ratio_subtraction_over_floor_mean": module["sequential_ms_per_cert"] / floor["mean_ms"],
            "ratio_limit": RATIO_LIMIT,
            "ratio_within_limit": ratio <= RATIO_LIMIT,
        }
        Path(opts.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
