"""Network mode's routes without root: which peer carries which route, and the plan of a
subnet router / exit node (recorded before each change, undone by uninstall)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from umbranet.agent import planfile, tunplan
from umbranet.agent.tunroutes import choose_routes

K1, K2, K3 = b"1" * 32, b"2" * 32, b"3" * 32


def test_a_subnet_comes_from_the_first_peer_and_the_exit_only_from_the_chosen_one() -> None:
    offered = {
        K2: ("gw-b", ("10.1.0.0/16", "0.0.0.0/0", "::/0")),
        K1: ("gw-a", ("10.1.0.0/16", "10.2.0.0/16", "fd10::/64")),
        K3: ("exit", ("0.0.0.0/0", "::/0", "not-a-prefix")),
    }
    choice = choose_routes(offered, "exit", ipv6=True)
    assert choice.by_peer == {
        K1: ["10.1.0.0/16", "10.2.0.0/16", "fd10::/64"],
        K3: ["0.0.0.0/0", "::/0"],
    }
    assert choice.subnets == ["10.1.0.0/16", "10.2.0.0/16", "fd10::/64"]
    assert choice.conflicts == 1 and choice.exit_found
    no_v6 = choose_routes(offered, None, ipv6=False)
    assert no_v6.by_peer == {K1: ["10.1.0.0/16", "10.2.0.0/16"]} and not no_v6.exit_found


class Recorder:
    """Stands in for `run_command`: keeps every command and what the plan said meanwhile."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.calls: list[tuple[list[str], dict[str, object]]] = []

    def __call__(self, argv: list[str], stdin: str | None = None, check: bool = True) -> bool:
        plan = json.loads((self.state_dir / tunplan.STATE_FILE).read_text())
        self.calls.append((argv, plan))
        return not (argv[2:4] == ["rule", "del"] and self._deleted(argv))

    def _deleted(self, argv: list[str]) -> bool:
        """Each rule deletes once, then `ip rule del` fails (the rule is gone)."""
        seen = [a for a, _ in self.calls[:-1]]
        return argv in seen


@pytest.fixture
def recorder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Recorder:
    rec = Recorder(tmp_path)
    monkeypatch.setattr(tunplan, "run_command", rec)
    monkeypatch.setattr(planfile, "require_root", lambda: None)  # undo checks it there
    return rec


def test_exit_rules_are_recorded_before_they_are_made_and_uninstall_deletes_them(
    tmp_path: Path, recorder: Recorder
) -> None:
    plan = tunplan.TunPlan.new("umbra0", None, "127.0.0.153")
    tunplan.record(tmp_path, plan)
    plan = tunplan.route_through_exit(
        tmp_path, plan, table=7567, mark=0x756D, priority=7560, allow_lan=False,
        exempt=["198.18.0.254", "2001:db8::1"], ipv6=True,
    )  # fmt: skip
    added = [argv for argv, _ in recorder.calls if argv[2:4] == ["rule", "add"]]
    assert ["ip", "-4", "rule", "add", "to", "198.18.0.254", "lookup", "main", "priority",
            "7560"] in added  # fmt: skip
    assert ["ip", "-4", "rule", "add", "not", "fwmark", "0x756d", "table", "7567", "priority",
            "7562"] in added  # fmt: skip
    assert not any("suppress_prefixlength" in argv for argv in added)  # LAN not allowed
    for argv, seen in recorder.calls:
        assert [argv[1], *argv[4:]] in seen["rules"] or argv[2] == "route", argv  # type: ignore[operator]
    recorder.calls.clear()
    done = tunplan.uninstall(tmp_path)
    deleted = [argv for argv, _ in recorder.calls if argv[2:4] == ["rule", "del"]]
    assert len(done) == len(plan.rules or []) == 4 and len(deleted) == 2 * len(done)
    assert tunplan.leftovers(tmp_path) is None


def test_lan_allowed_adds_the_suppress_rule(tmp_path: Path, recorder: Recorder) -> None:
    plan = tunplan.TunPlan.new("umbra0", None, "127.0.0.153")
    tunplan.record(tmp_path, plan)
    plan = tunplan.route_through_exit(
        tmp_path, plan, table=7567, mark=1, priority=7560, allow_lan=True, exempt=[], ipv6=False
    )
    assert plan.rules == [
        ["-4", "table", "main", "suppress_prefixlength", "0", "priority", "7561"],
        ["-4", "not", "fwmark", "0x1", "table", "7567", "priority", "7562"],
    ]


def test_forwarding_is_recorded_then_set_and_put_back_only_if_still_ours(
    tmp_path: Path, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    v4, v6 = tmp_path / "ip_forward", tmp_path / "forwarding6"
    v4.write_text("0\n")
    v6.write_text("1\n")
    monkeypatch.setattr(tunplan, "FORWARDING", (str(v4), str(v6)))
    plan = tunplan.TunPlan.new("umbra0", None, "127.0.0.153")
    tunplan.record(tmp_path, plan)
    plan = tunplan.forward_and_masquerade(tmp_path, plan)
    assert plan.forwarding == {str(v4): "0", str(v6): "1"}
    assert v4.read_text() == "1\n"
    nft_argv, seen = recorder.calls[-1]
    assert nft_argv == ["nft", "-f", "-"] and seen["nft_table"] == tunplan.NFT_TABLE
    done = tunplan.uninstall(tmp_path)
    assert v4.read_text() == "0\n" and v6.read_text() == "1\n"  # v6 was already on: kept
    assert ["nft", "delete", "table", "inet", "umbranet_tun"] in [a for a, _ in recorder.calls]
    assert any("ip_forward back to 0" in line for line in done)
