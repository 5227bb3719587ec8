"""Hosts for the multi-machine scenarios: network namespaces on one bridge, each with an address of its
own, that a test can cut off the network (`ip link set ... down`) and bring back, as a pulled cable
would. It needs root and iproute2 (CI and the machines here run as root); elsewhere `why_no_hosts`
says why not."""

import contextlib
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass

SUBNET = "10.77.0"


def why_no_hosts() -> str | None:
    """None when network namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI and the project's machines run as root)"
    missing = [tool for tool in ("ip", "nsenter") if shutil.which(tool) is None]
    return f"missing {', '.join(missing)} (iproute2, util-linux)" if missing else None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def remove_leftovers() -> None:
    """Bridges and namespaces of an earlier run that was killed before it could remove them: a second
    bridge on SUBNET would take the hosts' traffic."""
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout.splitlines()
    for name in (line.split()[0].split("@")[0] for line in links if line.startswith("tmbr")):
        subprocess.run(["ip", "link", "del", name], capture_output=True)
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines()
    for name in (line.split()[0] for line in namespaces if line.startswith("tm-")):
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    netns: str
    link: str  # its cable: the root side of its veth pair

    def run(self, argv: list[str]) -> list[str]:
        """argv, run on this host (in its network namespace)."""
        return ["nsenter", f"--net=/var/run/netns/{self.netns}", "--", *argv]

    def cut(self) -> None:
        _ip("link", "set", self.link, "down")

    def reconnect(self) -> None:
        _ip("link", "set", self.link, "up")


class Network(contextlib.ExitStack):
    """A bridge in the root namespace (SUBNET.1, so the tests reach every host) and hosts on it."""

    def __init__(self) -> None:
        super().__init__()
        self.tag = uuid.uuid4().hex[:4]
        self.bridge = f"tmbr{self.tag}"
        self.hosts: dict[str, Host] = {}

    def __enter__(self) -> "Network":
        super().__enter__()
        remove_leftovers()
        _ip("link", "add", self.bridge, "type", "bridge")
        self.callback(_ip, "link", "del", self.bridge)
        _ip("addr", "add", f"{SUBNET}.1/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        return self

    def add(self, name: str) -> Host:
        number = len(self.hosts) + 2
        host = Host(name, f"{SUBNET}.{number}", f"tm-{self.tag}-{name}", f"tm{self.tag}h{number}")
        _ip("netns", "add", host.netns)
        self.callback(_ip, "netns", "del", host.netns)
        _ip("link", "add", host.link, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        self.callback(subprocess.run, ["ip", "link", "del", host.link], capture_output=True)
        _ip("link", "set", host.link, "master", self.bridge)
        _ip("link", "set", host.link, "up")
        for command in (("addr", "add", f"{host.address}/24", "dev", "eth0"), ("link", "set", "eth0", "up"),
                        ("link", "set", "lo", "up")):  # fmt: skip
            _ip("-n", host.netns, *command)
        self.hosts[name] = host
        return host
