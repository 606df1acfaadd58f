"""The capture image's network: read from this machine's real ``ip -j`` output, and from
iproute2 JSON of a bonded, VLAN-tagged host (this VM's kernel has no bonding, 8021q or
dummy links to build one, so that one is a fixture in iproute2's exact format).

The init fragment is checked by busybox sh's parser, and run for real in an empty network
namespace, where it must fail (no link with the recorded MAC) quickly with one clear line.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from pathlib import Path

import pytest

from kdumpy.errors import KdumpyError
from kdumpy.setup.config import parse_config
from kdumpy.setup.netconf import (
    CaptureNetwork,
    Link,
    capture_network,
    network_for_image,
    read_dns,
    run_ip,
    target_host,
)


def sh_syntax_ok(script: str) -> None:
    proc = subprocess.run(["busybox", "sh", "-n"], input=script, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def default_route() -> dict:
    routes = [r for r in run_ip(["route", "show", "default"]) if r.get("gateway")]
    assert routes, "this machine has no default route"
    return routes[0]


def test_this_machine_static_route_to_the_gateway():
    gw = default_route()
    net = capture_network(gw["gateway"])
    assert net is not None and net.interface == gw["dev"]
    mac = Path(f"/sys/class/net/{gw['dev']}/address").read_text().strip()
    assert net.links[-1].mac == mac and net.links[-1].kind == "ether"
    real = [a for a in run_ip(["addr", "show", "dev", gw["dev"]])[0]["addr_info"]
            if a["family"] == "inet" and a.get("scope") == "global"]
    if any(a.get("dynamic") for a in real):
        assert net.method == "dhcp"
    else:
        assert net.method == "static"
        assert net.addresses == [f"{a['local']}/{a['prefixlen']}" for a in real]
        assert net.gateway == gw["gateway"]
        for a in net.addresses:
            assert ipaddress.ip_address(net.gateway) in ipaddress.ip_interface(a).network
    script = net.init_script()
    sh_syntax_ok(script)
    assert f"kdumpy_by_mac '{mac}'" in script or f"kdumpy_by_mac {mac}" in script
    json.dumps(net.to_json())


def test_loopback_target_needs_no_network():
    assert capture_network("127.0.0.1") is None
    cfg = parse_config('[target]\nssh = "ssh://u@127.0.0.1:2222/srv/crash"\n')
    assert target_host(cfg) == "127.0.0.1" and network_for_image(cfg) is None
    assert network_for_image(parse_config('[target]\npath = "/var/crash"\n')) is None
    cfg = parse_config('[target]\ns3 = "s3://crash/x"\ns3_endpoint = "https://s3.example:9000"\n'
                       's3_credentials = "/etc/kdumpy/c"\n')
    assert target_host(cfg) == "s3.example"
    assert target_host(parse_config('[target]\nnfs = "nfs://filer.example/export"\n')) == \
        "filer.example"


# iproute2 6.1 `ip -j -d addr show` of a host whose eth0+eth1 form an 802.3ad bond0 with a
# VLAN 100 on top, leased by DHCP (trimmed to the fields ip prints that matter here)
BONDED = [
    {"ifindex": 1, "ifname": "lo", "flags": ["LOOPBACK", "UP", "LOWER_UP"], "mtu": 65536,
     "link_type": "loopback", "address": "00:00:00:00:00:00",
     "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8, "scope": "host"}]},
    {"ifindex": 2, "ifname": "eth0", "flags": ["BROADCAST", "MULTICAST", "SLAVE", "UP"],
     "mtu": 9000, "master": "bond0", "link_type": "ether", "address": "52:54:00:aa:00:01",
     "linkinfo": {"info_slave_kind": "bond", "info_slave_data": {
         "state": "ACTIVE", "mii_status": "UP", "perm_hwaddr": "52:54:00:aa:00:01"}},
     "addr_info": []},
    {"ifindex": 3, "ifname": "eth1", "flags": ["BROADCAST", "MULTICAST", "SLAVE", "UP"],
     "mtu": 9000, "master": "bond0", "link_type": "ether", "address": "52:54:00:aa:00:01",
     "linkinfo": {"info_slave_kind": "bond", "info_slave_data": {
         "state": "BACKUP", "mii_status": "UP", "perm_hwaddr": "52:54:00:aa:00:02"}},
     "addr_info": []},
    {"ifindex": 4, "ifname": "bond0", "flags": ["BROADCAST", "MULTICAST", "MASTER", "UP"],
     "mtu": 9000, "link_type": "ether", "address": "52:54:00:aa:00:01",
     "linkinfo": {"info_kind": "bond", "info_data": {"mode": "802.3ad", "miimon": 100,
                                                     "xmit_hash_policy": "layer3+4"}},
     "addr_info": []},
    {"ifindex": 5, "ifname": "bond0.100", "link": "bond0",
     "flags": ["BROADCAST", "MULTICAST", "UP", "LOWER_UP"], "mtu": 9000,
     "link_type": "ether", "address": "52:54:00:aa:00:01",
     "linkinfo": {"info_kind": "vlan", "info_data": {"protocol": "802.1Q", "id": 100,
                                                     "flags": ["REORDER_HDR"]}},
     "addr_info": [{"family": "inet", "local": "10.20.0.7", "prefixlen": 22,
                    "scope": "global", "dynamic": True, "label": "bond0.100"}]},
]


def fake_ip(route: dict, links: list, default: list | None = None):
    def ip(args):
        if args[:2] == ["route", "get"]:
            return [route]
        if args[:3] == ["route", "show", "default"]:
            return default or []
        if args[:3] == ["-d", "addr", "show"]:
            return links
        raise AssertionError(args)
    return ip


def test_bond_with_vlan_and_dhcp():
    net = capture_network("dumps.example", resolve_fn=lambda h: "10.20.8.9",
                          ip=fake_ip({"dst": "10.20.8.9", "gateway": "10.20.0.1",
                                      "dev": "bond0.100", "prefsrc": "10.20.0.7"}, BONDED))
    assert net is not None and net.method == "dhcp" and net.interface == "bond0.100"
    assert [(lk.name, lk.kind) for lk in net.links] == [
        ("eth0", "ether"), ("eth1", "ether"), ("bond0", "bond"), ("bond0.100", "vlan")]
    assert [lk.mac for lk in net.links[:2]] == ["52:54:00:aa:00:01", "52:54:00:aa:00:02"]
    assert net.links[2].bond_mode == "802.3ad" and net.links[2].slaves == ["eth0", "eth1"]
    assert net.links[3].vlan_id == 100 and net.links[3].parent == "bond0"
    script = net.init_script()
    sh_syntax_ok(script)
    assert "type bond mode 802.3ad miimon 100" in script
    assert 'ip link add link "$kdumpy_if2" name "$kdumpy_if3" type vlan id 100' in script
    assert 'udhcpc -i "$kdumpy_if3"' in script
    assert 'ip link set "$kdumpy_if0" master "$kdumpy_if2"' in script
    assert net.dns == []                     # DHCP brings its own


def test_static_copies_address_route_dns():
    links = [BONDED[0], {"ifindex": 2, "ifname": "ens3", "link_type": "ether", "mtu": 1500,
                         "address": "52:54:00:12:34:56",
                         "addr_info": [{"family": "inet", "local": "192.168.7.20",
                                        "prefixlen": 24, "scope": "global"}]}]
    files = {"/etc/resolv.conf": "nameserver 127.0.0.53\nsearch lan\n",
             "/run/systemd/resolve/resolv.conf": "nameserver 192.168.7.1\nnameserver 9.9.9.9\n"}
    net = capture_network("192.168.7.5", read=lambda p: files[p],
                          ip=fake_ip({"dst": "192.168.7.5", "dev": "ens3"}, links,
                                     [{"dst": "default", "gateway": "192.168.7.1",
                                       "dev": "ens3"}]))
    assert net is not None and net.method == "static"
    assert net.addresses == ["192.168.7.20/24"] and net.gateway == "192.168.7.1"
    assert net.dns == ["192.168.7.1", "9.9.9.9"] and net.search == ["lan"]
    script = net.init_script()
    sh_syntax_ok(script)
    assert 'ip addr add 192.168.7.20/24 dev "$kdumpy_if0"' in script
    assert 'ip route add default via 192.168.7.1 dev "$kdumpy_if0"' in script
    assert "nameserver 9.9.9.9" in script


def test_unsupported_and_broken_stacks_are_refused():
    team = [BONDED[0], {"ifname": "team0", "linkinfo": {"info_kind": "team"}, "addr_info": []}]
    with pytest.raises(KdumpyError, match="team links are not supported"):
        capture_network("10.0.0.1", resolve_fn=lambda h: h,
                        ip=fake_ip({"dev": "team0", "gateway": "10.0.0.254"}, team))
    lonely = [BONDED[3]]
    with pytest.raises(KdumpyError, match="bond without slaves"):
        capture_network("10.0.0.1", resolve_fn=lambda h: h,
                        ip=fake_ip({"dev": "bond0"}, lonely))


def test_read_dns_plain():
    ns, search = read_dns(lambda p: "# x\nnameserver 10.1.1.1\nnameserver 127.0.0.1\n"
                                    "domain corp\n")
    assert ns == ["10.1.1.1"] and search == ["corp"]


def test_fragment_fails_fast_without_the_link(tmp_path):
    """In an empty network namespace the recorded MAC is nowhere: exit 1, one line."""
    net = CaptureNetwork(target="10.9.9.9", target_addr="10.9.9.9", interface="eth0",
                         method="static", links=[Link("eth0", "ether",
                                                      mac="52:54:00:de:ad:01")],
                         addresses=["10.9.9.2/24"], gateway="10.9.9.1")
    script = tmp_path / "net.sh"
    script.write_text(net.init_script(deadline=10))
    proc = subprocess.run(["unshare", "-n", "busybox", "sh", str(script)],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == \
        "kdumpy: no link with MAC 52:54:00:de:ad:01 (eth0)"
