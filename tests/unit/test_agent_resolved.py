"""Root mode on a systemd-resolved host: detection, and the exact commands run and undone.

resolved is not installed here (it would take over the host's resolv.conf and needs D-Bus),
so the system is replaced at the command seam: a recorder stands in for `run_command` and
the tests assert the argv lists, their order, the plan written before the first change, and
the undo after `umbra down`, after a crash and after a failure half-way.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any, cast

import pytest

from umbranet.agent import planfile, redirect, resolved
from umbranet.agent.config import ConfigError, RootSettings
from umbranet.agent.rootmode import RootMode, _upstreams
from umbranet.agent.stats import Counters

NETWORK = "100.64.0.0/10"
ROUTE = ["100.64.0.0/10", "dev", "lo", "src", "127.0.0.1"]
SETUP = [
    ["ip", "link", "add", "umbra-dns", "type", "dummy"],
    ["ip", "-4", "addr", "add", "100.64.0.0/32", "dev", "umbra-dns"],
    ["ip", "link", "set", "umbra-dns", "up"],
    ["resolvectl", "dns", "umbra-dns", "127.0.0.153"],
    ["resolvectl", "domain", "umbra-dns", "~umbra"],
    ["resolvectl", "default-route", "umbra-dns", "false"],
    ["resolvectl", "llmnr", "umbra-dns", "no"],
    ["resolvectl", "mdns", "umbra-dns", "no"],
    ["resolvectl", "dnssec", "umbra-dns", "no"],
    ["resolvectl", "dnsovertls", "umbra-dns", "no"],
]
UNDO = [
    ["nft", "delete", "table", "ip", "umbranet"],
    ["ip", "route", "del", *ROUTE],
    ["resolvectl", "revert", "umbra-dns"],
    ["ip", "link", "del", "umbra-dns"],
]


class Recorder:
    """The system as the agent sees it: every command is recorded; `existing_link` says
    whether ``ip link show`` finds our link; `fail_on` makes the first matching command fail
    like a real failure would (a ConfigError when checked)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.argvs: list[list[str]] = []
        self.plan_at_first_change: dict[str, Any] | None = None
        self.existing_link = False
        self.fail_on: list[str] | None = None

    def __call__(self, argv: list[str], stdin: str | None = None, check: bool = True) -> bool:
        if argv[:3] == ["ip", "link", "show"]:
            self.argvs.append(argv)
            return self.existing_link
        if not self.argvs or all(a[:3] == ["ip", "link", "show"] for a in self.argvs):
            state = self.state_dir / redirect.STATE_FILE
            self.plan_at_first_change = json.loads(state.read_text()) if state.exists() else {}
        self.argvs.append(argv)
        if self.fail_on is not None and argv[: len(self.fail_on)] == self.fail_on:
            if check:
                raise ConfigError("system_change_failed", f"{' '.join(argv[:3])} failed")
            return False
        return True


@pytest.fixture
def resolved_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A root where /etc/resolv.conf is resolved's stub symlink (absolute, as Debian has it)."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "run/systemd/resolve").mkdir(parents=True)
    (root / "run/systemd/resolve/stub-resolv.conf").write_text("nameserver 127.0.0.53\n")
    (root / "etc/resolv.conf").symlink_to("../run/systemd/resolve/stub-resolv.conf")
    monkeypatch.setattr(resolved.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    return root


@pytest.fixture
def system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Recorder:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    recorder = Recorder(state_dir)
    monkeypatch.setattr(redirect, "run_command", recorder)
    monkeypatch.setattr(redirect, "_run_output", lambda argv: "[]")
    for module in (redirect, planfile):  # install checks in redirect, undo in planfile
        monkeypatch.setattr(module, "current_netns", lambda: 4026531840)
        monkeypatch.setattr(module, "require_root", lambda: None)
    return recorder


def _install(system: Recorder, root: Path, stub_port: int = 53) -> redirect.Installed:
    return redirect.install(
        system.state_dir,
        NETWORK,
        41000,
        "127.0.0.153",
        root / "etc/resolv.conf",
        stub_port=stub_port,
        suffix="umbra",
    )


# -- detection ----------------------------------------------------------------------------------


def test_resolveds_stub_symlink_is_detected_and_its_upstream_list_found(
    resolved_root: Path,
) -> None:
    resolv = resolved_root / "etc/resolv.conf"
    assert resolved.manages(resolv) is True
    assert resolved.upstreams_file(resolv) == resolved_root / "run/systemd/resolve/resolv.conf"
    absolute = resolved_root / "etc/resolv.conf.abs"
    absolute.symlink_to("/run/systemd/resolve/stub-resolv.conf")  # dangling here: still ours
    assert resolved.manages(absolute) is True
    static = resolved_root / "etc/resolv.conf.static"
    static.symlink_to("/usr/lib/systemd/resolv.conf")
    assert resolved.manages(static) is True


def test_a_plain_resolv_conf_is_rewritten_as_before(tmp_path: Path) -> None:
    plain = tmp_path / "resolv.conf"
    plain.write_text("nameserver 10.0.0.2\n")
    assert resolved.manages(plain) is False


@pytest.mark.parametrize(
    ("target", "code"),
    [
        ("/run/systemd/resolve/resolv.conf", "resolv_conf_managed"),  # bypasses resolved
        ("/run/resolvconf/resolv.conf", "resolv_conf_managed"),
    ],
)
def test_other_symlinks_are_refused_with_a_reason(tmp_path: Path, target: str, code: str) -> None:
    link = tmp_path / "resolv.conf"
    link.symlink_to(target)
    with pytest.raises(ConfigError) as caught:
        resolved.manages(link)
    assert caught.value.code == code
    assert target in str(caught.value)


def test_missing_resolv_conf_and_missing_resolvectl_are_refused(
    resolved_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError) as caught:
        resolved.manages(resolved_root / "etc/nothing")
    assert caught.value.code == "no_resolv_conf"
    monkeypatch.setattr(resolved.shutil, "which", lambda tool: None)
    with pytest.raises(ConfigError) as caught:
        resolved.manages(resolved_root / "etc/resolv.conf")
    assert caught.value.code == "missing_tool"
    assert "resolvectl" in str(caught.value)


def test_routing_domains_cover_the_suffix_and_the_other_names_the_stub_answers() -> None:
    names = ["web.umbra", "db.corp.internal.", "Wiki.Corp", "10.0.0.7", "umbra", ""]
    assert resolved.routing_domains("umbra", names) == ["~umbra", "~db.corp.internal", "~wiki.corp"]
    assert resolved.routing_domains("umbra", []) == ["~umbra"]


# -- the commands -------------------------------------------------------------------------------


def test_install_records_the_plan_then_adds_a_dns_scope_and_leaves_resolv_conf_alone(
    system: Recorder, resolved_root: Path
) -> None:
    resolv = resolved_root / "etc/resolv.conf"
    plan = _install(system, resolved_root)
    assert system.argvs == [
        ["ip", "link", "show", "dev", "umbra-dns"],
        ["nft", "-f", "-"],
        ["ip", "route", "add", *ROUTE],
        *SETUP,
    ]
    # Written before the first change, so a crash at any point can be undone.
    assert system.plan_at_first_change is not None
    assert system.plan_at_first_change["dns_link"] == "umbra-dns"
    assert plan.dns_link == "umbra-dns" and plan.resolv_path == ""
    assert resolv.is_symlink() and os.readlink(resolv) == "../run/systemd/resolve/stub-resolv.conf"
    assert redirect.leftovers(system.state_dir) == plan


def test_down_reverts_resolved_and_deletes_the_link(system: Recorder, resolved_root: Path) -> None:
    _install(system, resolved_root)
    system.argvs.clear()
    removed = redirect.uninstall(system.state_dir)
    assert system.argvs == UNDO
    assert "resolved DNS on umbra-dns reverted" in removed and "link umbra-dns" in removed
    assert redirect.leftovers(system.state_dir) is None
    system.argvs.clear()
    assert redirect.uninstall(system.state_dir) == [] and system.argvs == []


def test_the_next_start_after_a_crash_undoes_the_old_scope_first(
    system: Recorder, resolved_root: Path
) -> None:
    _install(system, resolved_root)  # the agent is killed: nothing undone, the plan remains
    system.argvs.clear()
    _install(system, resolved_root)
    assert system.argvs[: len(UNDO)] == UNDO
    assert system.argvs[len(UNDO) :] == [
        ["ip", "link", "show", "dev", "umbra-dns"],
        ["nft", "-f", "-"],
        ["ip", "route", "add", *ROUTE],
        *SETUP,
    ]


def test_a_failure_half_way_undoes_everything(system: Recorder, resolved_root: Path) -> None:
    system.fail_on = ["resolvectl", "domain"]
    with pytest.raises(ConfigError) as caught:
        _install(system, resolved_root)
    assert caught.value.code == "system_change_failed"
    done = system.argvs.index(["resolvectl", "domain", "umbra-dns", "~umbra"])
    assert system.argvs[done + 1 :] == UNDO
    assert redirect.leftovers(system.state_dir) is None


def test_a_link_of_our_name_we_did_not_make_is_not_touched(
    system: Recorder, resolved_root: Path
) -> None:
    system.existing_link = True
    with pytest.raises(ConfigError) as caught:
        _install(system, resolved_root)
    assert caught.value.code == "link_in_use"
    assert system.argvs == [["ip", "link", "show", "dev", "umbra-dns"]]
    assert redirect.leftovers(system.state_dir) is None


def test_a_stub_on_another_port_is_named_with_its_port(
    system: Recorder, resolved_root: Path
) -> None:
    _install(system, resolved_root, stub_port=5353)
    assert ["resolvectl", "dns", "umbra-dns", "127.0.0.153:5353"] in system.argvs


def test_a_plan_from_before_resolved_support_still_restores_resolv_conf(
    system: Recorder, tmp_path: Path
) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("ours\n")
    old = {
        "netns": 4026531840,
        "network": NETWORK,
        "tcp_port": 41000,
        "route": " ".join(ROUTE),
        "resolv_path": str(resolv),
        "resolv_original": "nameserver 10.0.0.2\n",
        "resolv_ours": "ours\n",
    }
    (system.state_dir / redirect.STATE_FILE).write_text(json.dumps(old))
    removed = redirect.uninstall(system.state_dir)
    assert system.argvs == UNDO[:2]
    assert resolv.read_text() == "nameserver 10.0.0.2\n" and f"{resolv} restored" in removed


# -- root mode on top ---------------------------------------------------------------------------


def test_the_stub_forwards_to_resolveds_upstreams_never_back_to_resolved(
    resolved_root: Path,
) -> None:
    settings = RootSettings(resolv_conf=resolved_root / "etc/resolv.conf")
    assert _upstreams(settings) == []  # resolved has no upstream list yet: answer ours only
    (resolved_root / "run/systemd/resolve/resolv.conf").write_text(
        "nameserver 127.0.0.53\nnameserver 10.0.0.2\nnameserver 127.0.0.54\nsearch corp\n"
    )
    assert _upstreams(settings) == [("10.0.0.2", 53)]


def test_routing_domains_follow_the_services(
    system: Recorder, resolved_root: Path, tmp_path: Path
) -> None:
    settings = RootSettings(
        resolv_conf=resolved_root / "etc/resolv.conf", dns_names={"wiki.corp": "web"}
    )
    mode = RootMode(settings, tmp_path, cast(Any, None), cast(Any, None), Counters())
    mode.installed = _install(system, resolved_root)
    mode._domains = ["~umbra"]
    system.argvs.clear()
    asyncio.run(mode.update({"web": [], "db": ["db.corp.internal"]}))
    asyncio.run(mode.update({"web": [], "db": ["db.corp.internal"]}))
    assert system.argvs == [
        ["resolvectl", "domain", "umbra-dns", "~umbra", "~db.corp.internal", "~wiki.corp"]
    ]
    asyncio.run(mode.update({}))
    assert system.argvs[-1] == ["resolvectl", "domain", "umbra-dns", "~umbra"]


def test_a_kernel_without_the_dummy_driver_gets_an_ifb_link(
    system: Recorder, resolved_root: Path
) -> None:
    system.fail_on = ["ip", "link", "add", "umbra-dns", "type", "dummy"]
    _install(system, resolved_root)
    assert system.argvs[3:6] == [
        ["ip", "link", "add", "umbra-dns", "type", "dummy"],
        ["ip", "link", "add", "umbra-dns", "type", "ifb"],
        ["ip", "-4", "addr", "add", "100.64.0.0/32", "dev", "umbra-dns"],
    ]


def test_status_says_the_names_reach_the_stub_through_resolved(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from umbranet.cli.agent_cmd import _render_status

    data: dict[str, Any] = {
        "identity": {"spiffe_id": "spiffe://t/workload/a", "cert_not_after": "x"},
        "agent": {"pid": 1, "socket": "s"},
        "controller": {"last_refresh": None, "error": None},
        "routers": [],
        "dial": [],
        "host": [],
        "streams": {"dial": 0, "host": 0},
        "counters": {},
        "root": {
            "proxy_range": NETWORK,
            "transparent_listen": "127.0.0.1:41000",
            "resolved_link": "umbra-dns",
            "dns": {"listen": "127.0.0.153:53", "upstreams": ["10.0.0.2:53"], "names": {}},
        },
    }
    data["identity"]["controller_url"] = "https://c"
    _render_status(data)
    assert "names via resolved link umbra-dns" in capsys.readouterr().out


def test_an_undo_goes_on_when_resolvectl_is_gone() -> None:
    assert redirect.run_command(["umbra-no-such-program-x"], check=False) is False
    with pytest.raises(ConfigError) as caught:
        redirect.run_command(["umbra-no-such-program-x"])
    assert caught.value.code == "missing_tool"
