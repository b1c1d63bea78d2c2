"""Fixtures for integration tests: the lab and test DNS servers."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterator, List

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "lab"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import labctl  # noqa: E402
from dnsresponder import DNSResponder  # noqa: E402

ADDR = "127.0.0.1"
# Names the lab DNS knows nothing about answer with this address: loopback, where
# nothing listens, so an unconfigured name never looks like it routes to the edge.
NOWHERE = "127.0.0.9"


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[labctl.Lab]:
    """The lab (Pebble, pebble-challtestsrv, nginx) on free ports, for the whole session."""
    ports = dict(zip(labctl.PORT_KEYS, labctl.free_ports(len(labctl.PORT_KEYS), ADDR)))
    # PEBBLE_AUTHZREUSE=0: every order validates afresh, so failure paths are deterministic
    # (by default Pebble reuses half of the valid authorizations).
    instance = labctl.Lab(dir=tmp_path_factory.mktemp("lab"), addr=ADDR, ports=ports, nginx=True,
                          default_ipv4=NOWHERE, timeout=30.0, pebble_env={"PEBBLE_AUTHZREUSE": "0"})
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="session")
def lab_resolver(lab: labctl.Lab) -> str:
    return "%s:%d" % (ADDR, lab.ports["dns"])


@pytest.fixture
def responder() -> Iterator[Any]:
    """Factory for in-process DNS servers; every one started is stopped after the test."""
    started: List[DNSResponder] = []

    def make(zone_text: str, address: str = ADDR, port: int = 0, **kwargs: Any) -> DNSResponder:
        server = DNSResponder(zone_text, address=address, port=port, **kwargs).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()
