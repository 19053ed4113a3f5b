"""Which paths exist, in report order, and which run by default."""

from __future__ import annotations

from collections.abc import Callable

from bench.nat_paths import UmbranetNatEasy, UmbranetNatHard
from bench.paths import BenchPath
from bench.paths.nebula import Nebula
from bench.paths.raw import Raw, RawPy
from bench.paths.socat import Socat1, Socat2
from bench.paths.ssh import Ssh
from bench.paths.stunnel import Stunnel
from bench.paths.umbranet import Umbranet, UmbranetAsync
from bench.paths.umbranet_agent import UmbranetAgent
from bench.paths.umbranet_l3 import UmbranetL3, UmbranetL3Relayed
from bench.paths.umbranet_mesh import UmbranetMesh2, UmbranetMesh3
from bench.paths.wireguard import WireguardGo

__all__ = ["DEFAULT_PATHS", "KNOWN_PATHS", "make_path"]

_FACTORIES: dict[str, Callable[[], BenchPath]] = {
    "raw": Raw,
    "rawpy": RawPy,
    "socat1": Socat1,
    "socat2": Socat2,
    "stunnel": Stunnel,
    "ssh": Ssh,
    "wireguard": WireguardGo,
    "nebula": Nebula,
    "umbranet": Umbranet,
    "umbranet-async": UmbranetAsync,
    "umbranet-agent": UmbranetAgent,
    "umbranet-mesh2": UmbranetMesh2,
    "umbranet-mesh3": UmbranetMesh3,
    "umbranet-l3": UmbranetL3,
    "umbranet-l3-relayed": UmbranetL3Relayed,
    "umbranet-l3-nat-easy": UmbranetNatEasy,
    "umbranet-l3-nat-hard": UmbranetNatHard,
}
KNOWN_PATHS = tuple(_FACTORIES)
DEFAULT_PATHS = (
    "raw",
    "socat2",
    "stunnel",
    "ssh",
    "wireguard",
    "nebula",
    "umbranet",
    "umbranet-async",
    "umbranet-agent",
    "umbranet-mesh2",
    "umbranet-mesh3",
    "umbranet-l3",
    "umbranet-l3-relayed",
    "umbranet-l3-nat-easy",
    "umbranet-l3-nat-hard",
)


def make_path(name: str) -> BenchPath:
    """A fresh instance of the path called `name` (KeyError if unknown)."""
    return _FACTORIES[name]()
