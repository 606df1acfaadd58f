"""What the capture image needs to bring the network up for an ssh/nfs/s3 target.

Read at ``kdumpy rebuild`` time from the running system, through iproute2's JSON output:

* ``ip -j route get ADDR``: the interface (``dev``), gateway (``gateway``) and source
  address (``prefsrc``) the kernel would use to reach the target right now;
* ``ip -j -d addr show``: every link's addresses, MAC, MTU, and its ``linkinfo``: a VLAN
  (``info_kind`` ``vlan``, ``info_data.id``, the lower link in ``link``), a bond
  (``info_kind`` ``bond``, ``info_data.mode``/``miimon``; its slaves name it in
  ``master`` and carry ``info_slave_data.perm_hwaddr``);
* an address with the ``dynamic`` flag was leased (DHCP): the capture kernel asks again;
  otherwise the running system's address, route and DNS servers (``/etc/resolv.conf``; the
  systemd-resolved upstream list when it is only the 127.0.0.53 stub) are copied.

The capture kernel boots without udev's predictable names, so physical links are found by
MAC address (``/sys/class/net/*/address``), as dracut's ``ifname=NAME:MAC`` does.

:func:`capture_network` returns the data (:class:`CaptureNetwork`, JSON-able) and
:meth:`CaptureNetwork.init_script` a POSIX-sh fragment (busybox ``ip``/``udhcpc`` or
iproute2 and ``dhclient``) that brings the path up, waits for the link and the route a
bounded time, and exits non-zero at the deadline so the image's /init runs the failure
action.
"""

from __future__ import annotations

import ipaddress
import json
import shlex
import socket
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from kdumpy.errors import KdumpyError

IpFn = Callable[[Sequence[str]], Any]
#: seconds the fragment waits for a link (carrier), a DHCP lease, and the whole bring-up
LINK_WAIT = 30
DHCP_WAIT = 60
DEADLINE = 120


def run_ip(args: Sequence[str]) -> Any:
    """``ip -j ARGS`` parsed (iproute2 5.x and newer print JSON with ``-j``)."""
    proc = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=False,
                          timeout=10)
    if proc.returncode != 0:
        raise KdumpyError(f"ip -j {' '.join(args)}: {proc.stderr.strip()}")
    return json.loads(proc.stdout or "[]")


@dataclass
class Link:
    """One link the capture kernel must configure, lower ones first."""

    name: str                       # name on the running system
    kind: str                       # ether | vlan | bond
    mac: str | None = None          # physical links are found by this
    mtu: int | None = None
    vlan_id: int | None = None
    parent: str | None = None       # vlan: the lower link's name
    bond_mode: str | None = None
    bond_miimon: int | None = None
    slaves: list[str] = field(default_factory=list)


@dataclass
class CaptureNetwork:
    target: str                     # host name or address from the config
    target_addr: str                # resolved at rebuild time
    interface: str                  # the link that routes to the target
    method: str                     # dhcp | static
    links: list[Link] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)   # "a.b.c.d/len" (static)
    gateway: str | None = None
    dns: list[str] = field(default_factory=list)
    search: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def init_script(self, *, deadline: int = DEADLINE) -> str:
        return init_script(self, deadline=deadline)


def resolve(host: str) -> str:
    """The target's address as the running system resolves it now (the capture kernel may
    have no resolver; the name is kept for TLS/host keys, the address for routing)."""
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise KdumpyError(f"{host}: cannot resolve ({exc.strerror})") from None
    infos.sort(key=lambda i: i[0] != socket.AF_INET)   # IPv4 first
    return str(infos[0][4][0])


def read_dns(read: Callable[[str], str]) -> tuple[list[str], list[str]]:
    """(nameservers, search domains) from resolv.conf; behind systemd-resolved's stub
    (127.0.0.53) the upstream list in /run/systemd/resolve/resolv.conf."""
    def parse(text: str) -> tuple[list[str], list[str]]:
        ns, search = [], []
        for line in text.splitlines():
            words = line.split("#", 1)[0].split()
            if len(words) >= 2 and words[0] == "nameserver":
                ns.append(words[1])
            elif words and words[0] in ("search", "domain"):
                search = words[1:]
        return ns, search
    try:
        ns, search = parse(read("/etc/resolv.conf"))
    except OSError:
        ns, search = [], []
    if ns and all(n.startswith("127.0.0.53") for n in ns):
        try:
            ns, search2 = parse(read("/run/systemd/resolve/resolv.conf"))
            search = search or search2
        except OSError:
            pass
    return [n for n in ns if not n.startswith("127.")], search


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def capture_network(target_host: str, *, ip: IpFn = run_ip,
                    read: Callable[[str], str] = _read_text,
                    resolve_fn: Callable[[str], str] = resolve) -> CaptureNetwork | None:
    """The network the capture image needs to reach ``target_host``; None when the route
    is local (loopback: nothing to bring up)."""
    addr = resolve_fn(target_host)
    routes = ip(["route", "get", addr])
    if not routes:
        raise KdumpyError(f"no route to {target_host} ({addr})")
    route = routes[0]
    dev = route.get("dev")
    if not dev:
        raise KdumpyError(f"no route to {target_host} ({addr}): {route}")
    if dev == "lo" or route.get("type") == "local":
        return None
    links = {lk["ifname"]: lk for lk in ip(["-d", "addr", "show"])}
    if dev not in links:
        raise KdumpyError(f"{dev}: routes to {target_host} but ip addr does not list it")
    out = CaptureNetwork(target=target_host, target_addr=addr, interface=dev,
                         method="static", gateway=route.get("gateway"))
    out.links = _stack(dev, links)
    inet = [a for a in links[dev].get("addr_info", [])
            if a.get("family") == "inet" and a.get("scope") == "global"]
    if any(a.get("dynamic") for a in inet):
        out.method = "dhcp"
    else:
        out.addresses = [f"{a['local']}/{a['prefixlen']}" for a in inet]
        if not out.addresses:
            raise KdumpyError(f"{dev}: no IPv4 address to copy into the capture image")
        out.dns, out.search = read_dns(read)
        if out.gateway is None:   # the target is on-link; keep the default route anyway
            for r in ip(["route", "show", "default"]):
                if r.get("dev") == dev and r.get("gateway"):
                    out.gateway = r["gateway"]
                    break
    return out


def _stack(dev: str, links: dict[str, Any]) -> list[Link]:
    """``dev`` and the links below it, lowest first."""
    info = links[dev]
    li = info.get("linkinfo") or {}
    kind = li.get("info_kind")
    data = li.get("info_data") or {}
    if kind == "vlan":
        parent = info.get("link")
        if not parent or parent not in links:
            raise KdumpyError(f"{dev}: VLAN without a known lower link ({parent})")
        return _stack(parent, links) + [Link(dev, "vlan", mtu=info.get("mtu"),
                                             vlan_id=int(data["id"]), parent=parent)]
    if kind == "bond":
        slaves = [name for name, lk in links.items() if lk.get("master") == dev]
        if not slaves:
            raise KdumpyError(f"{dev}: bond without slaves")
        below = []
        for s in slaves:
            sd = ((links[s].get("linkinfo") or {}).get("info_slave_data") or {})
            below.append(Link(s, "ether", mac=sd.get("perm_hwaddr") or links[s].get("address"),
                              mtu=links[s].get("mtu")))
        return below + [Link(dev, "bond", mac=info.get("address"), mtu=info.get("mtu"),
                             bond_mode=str(data.get("mode", "active-backup")),
                             bond_miimon=data.get("miimon"), slaves=slaves)]
    if kind not in (None, "", "veth", "virtio", "tun"):
        raise KdumpyError(f"{dev}: {kind} links are not supported in the capture image")
    return [Link(dev, "ether", mac=info.get("address"), mtu=info.get("mtu"))]


# -- the init fragment --------------------------------------------------------------------

def init_script(net: CaptureNetwork, *, deadline: int = DEADLINE) -> str:
    """POSIX sh that brings ``net`` up in the capture kernel; exit 0 when the target's
    route is there, 1 at the deadline. Runs under busybox sh; uses ``ip`` and ``udhcpc``
    (busybox) or ``dhclient``."""
    q = shlex.quote
    lines = [
        "# kdumpy: bring up the path to the dump target",
        f"kdumpy_net_deadline=$(( $(cut -d. -f1 /proc/uptime) + {int(deadline)} ))",
        "kdumpy_net_late() { [ \"$(cut -d. -f1 /proc/uptime)\" -ge \"$kdumpy_net_deadline\" ]; }",
        "kdumpy_by_mac() {  # the kernel's name of the link with MAC $1",
        "  for d in /sys/class/net/*; do",
        "    [ \"$(cat \"$d/address\" 2>/dev/null)\" = \"$1\" ] && { echo \"${d##*/}\"; return 0; }",
        "  done; return 1; }",
        "kdumpy_wait_link() {  # carrier on $1, bounded",
        f"  n=0; while [ \"$(cat /sys/class/net/$1/carrier 2>/dev/null)\" != 1 ] && "
        f"[ $n -lt {LINK_WAIT * 2} ]; do",
        "    kdumpy_net_late && return 1; sleep 0.5; n=$((n + 1)); done",
        "  [ \"$(cat /sys/class/net/$1/carrier 2>/dev/null)\" = 1 ]; }",
        "ip link set lo up",
    ]
    names: dict[str, str] = {}
    for i, link in enumerate(net.links):
        var = f"kdumpy_if{i}"
        names[link.name] = f'"${var}"'
        if link.kind == "ether":
            lines += [f"{var}=$(kdumpy_by_mac {q(link.mac or '')}) || "
                      f"{{ echo 'kdumpy: no link with MAC {link.mac} ({link.name})' >&2; exit 1; }}"]
        elif link.kind == "vlan":
            lines += [f"{var}={q(link.name)}",
                      f"ip link add link {names[link.parent or '']} name \"${var}\" type vlan "
                      f"id {int(link.vlan_id or 0)} || exit 1"]
        elif link.kind == "bond":
            lines += [f"{var}={q(link.name)}",
                      f"ip link add \"${var}\" type bond mode {q(link.bond_mode or 'active-backup')}"
                      + (f" miimon {int(link.bond_miimon)}" if link.bond_miimon else "")
                      + " || exit 1"]
            for s in link.slaves:
                lines += [f"ip link set {names[s]} down",
                          f"ip link set {names[s]} master \"${var}\" || exit 1"]
        if link.mtu:
            lines += [f"ip link set \"${var}\" mtu {int(link.mtu)}"]
        lines += [f"ip link set \"${var}\" up"]
    top = names[net.interface]
    lines += [f"kdumpy_wait_link {top} || {{ echo 'kdumpy: no carrier on {net.interface}' >&2; "
              "exit 1; }"]
    if net.method == "dhcp":
        lines += [
            "if command -v udhcpc >/dev/null 2>&1; then",
            f"  udhcpc -i {top} -n -q -t {DHCP_WAIT // 3} -T 3 || exit 1",
            "elif command -v dhclient >/dev/null 2>&1; then",
            f"  timeout {DHCP_WAIT} dhclient -1 {top} || exit 1",
            "else echo 'kdumpy: no DHCP client in the image' >&2; exit 1; fi",
        ]
    else:
        for a in net.addresses:
            lines += [f"ip addr add {q(a)} dev {top} || exit 1"]
        if net.gateway:
            lines += [f"ip route add default via {q(net.gateway)} dev {top} || exit 1"]
        if net.dns or net.search:
            content = "".join(f"nameserver {n}\n" for n in net.dns)
            if net.search:
                content += f"search {' '.join(net.search)}\n"
            lines += [f"printf %s {q(content)} > /etc/resolv.conf"]
    lines += [
        f"until ip route get {q(net.target_addr)} >/dev/null 2>&1; do",
        "  kdumpy_net_late && { echo 'kdumpy: network not up by the deadline' >&2; exit 1; }",
        "  sleep 0.5; done",
        f"echo 'kdumpy: network up on {net.interface} for {net.target}'",
    ]
    return "\n".join(lines) + "\n"


def target_host(cfg: Any) -> str | None:
    """The host a config's ``[target]`` needs the network for (None: local target)."""
    t = cfg.target
    if t.kind == "ssh":
        return t.host
    if t.kind == "nfs":
        host = (t.nfs_source or "").rsplit(":", 1)[0]
        return host.strip("[]") or None
    if t.kind == "s3":
        from urllib.parse import urlsplit
        return urlsplit(t.s3_endpoint or "").hostname
    return None


def network_for_image(cfg: Any, **kw: Any) -> CaptureNetwork | None:
    """The image builder's entry point: the network data for ``cfg`` (a
    :class:`kdumpy.setup.config.Config`), None for a local target or a loopback route."""
    host = target_host(cfg)
    return capture_network(host, **kw) if host else None
