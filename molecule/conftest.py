"""Fixtures shared by the molecule scenarios' testinfra checks: the scenario's lab and its edge."""

import json
import os
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "lab"))
import labctl  # noqa: E402  (the lab's own helpers)

EPHEMERAL = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "."))


@pytest.fixture(scope="module")
def lab():
    """The lab create.yml started (lab.json: addresses, ports, CA bundle)."""
    return json.loads((EPHEMERAL / "lab" / "lab.json").read_text())


@pytest.fixture(scope="module")
def edge_addr():
    """The first test host's address."""
    instances = yaml.safe_load((EPHEMERAL / "instance_config.yml").read_text())
    return instances[0]["address"]


@pytest.fixture(scope="module")
def pebble_root(lab, tmp_path_factory):
    """Pebble's root certificate, which issued certificates chain to."""
    return labctl.write_pebble_root(lab, tmp_path_factory.mktemp("pebble") / "root.pem")


@pytest.fixture(scope="module")
def edge_addrs():
    """Every test host's address, by inventory name."""
    instances = yaml.safe_load((EPHEMERAL / "instance_config.yml").read_text())
    return {entry["instance"]: entry["address"] for entry in instances}
