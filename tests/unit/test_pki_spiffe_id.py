"""SPIFFE ID parsing and construction (umbranet.pki.spiffe_id): the SPIFFE-ID spec rules."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from umbranet.pki import KINDS, PkiError, SpiffeId

VALID = [
    ("spiffe://demo.umbra/device/alice", "demo.umbra", "/device/alice", "device", "alice"),
    ("spiffe://demo.umbra/controller", "demo.umbra", "/controller", None, None),
    ("spiffe://demo.umbra", "demo.umbra", "", None, None),
    (
        "spiffe://a_b-c.9/workload/web-1.prod",
        "a_b-c.9",
        "/workload/web-1.prod",
        "workload",
        "web-1.prod",
    ),
    ("spiffe://td/router/r1", "td", "/router/r1", "router", "r1"),
    ("spiffe://td/admin/root", "td", "/admin/root", "admin", "root"),
    ("spiffe://td/Mixed/Case_Path/x.y", "td", "/Mixed/Case_Path/x.y", None, None),
    ("spiffe://td/device/Alice", "td", "/device/Alice", None, None),  # not an Umbranet name
    ("spiffe://td/device/a/b", "td", "/device/a/b", None, None),
    ("spiffe://td/...", "td", "/...", None, None),
]

INVALID = [
    "",
    "spiffe://",
    "spiffe:///path",
    "SPIFFE://td/path",
    "https://td/path",
    "spiffe:/td/path",
    "spiffe://TD/path",
    "spiffe://td:443/path",
    "spiffe://user@td/path",
    "spiffe://td/path?query=1",
    "spiffe://td/path#frag",
    "spiffe://td/",
    "spiffe://td//path",
    "spiffe://td/path/",
    "spiffe://td/./path",
    "spiffe://td/path/..",
    "spiffe://td/pa%20th",
    "spiffe://td/pa th",
    "spiffe://td/päth",
    "spiffe://tüd/path",
    "spiffe://td/path\n",
    "spiffe://" + "a" * 256,
    "spiffe://td/" + "a" * 2040,
]


@pytest.mark.parametrize(("uri", "trust_domain", "path", "kind", "name"), VALID)
def test_parse_valid(
    uri: str, trust_domain: str, path: str, kind: str | None, name: str | None
) -> None:
    parsed = SpiffeId.parse(uri)
    assert (parsed.trust_domain, parsed.path, parsed.kind, parsed.name) == (
        trust_domain,
        path,
        kind,
        name,
    )
    assert str(parsed) == uri


@pytest.mark.parametrize("uri", INVALID)
def test_parse_invalid(uri: str) -> None:
    with pytest.raises(PkiError) as caught:
        SpiffeId.parse(uri)
    assert caught.value.code == "spiffe_id_invalid"


def test_max_length_is_2048() -> None:
    prefix = "spiffe://td/"
    assert len(str(SpiffeId.parse(prefix + "a" * (2048 - len(prefix))))) == 2048
    with pytest.raises(PkiError):
        SpiffeId.parse(prefix + "a" * (2049 - len(prefix)))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_for_identity_each_kind(kind: str) -> None:
    spiffe_id = SpiffeId.for_identity("demo.umbra", kind, "alice-laptop")
    assert str(spiffe_id) == f"spiffe://demo.umbra/{kind}/alice-laptop"
    assert spiffe_id.kind == kind
    assert spiffe_id.name == "alice-laptop"
    assert SpiffeId.parse(str(spiffe_id)) == spiffe_id


@pytest.mark.parametrize(
    ("trust_domain", "kind", "name"),
    [
        ("demo.umbra", "user", "alice"),
        ("demo.umbra", "controller", "alice"),
        ("demo.umbra", "device", ""),
        ("demo.umbra", "device", "Alice"),
        ("demo.umbra", "device", "-alice"),
        ("demo.umbra", "device", ".alice"),
        ("demo.umbra", "device", "a" * 64),
        ("demo.umbra", "device", "al/ice"),
        ("demo.umbra", "device", "alice\n"),
        ("Demo.umbra", "device", "alice"),
        ("", "device", "alice"),
    ],
)
def test_for_identity_rejects(trust_domain: str, kind: str, name: str) -> None:
    with pytest.raises(PkiError) as caught:
        SpiffeId.for_identity(trust_domain, kind, name)
    assert caught.value.code == "spiffe_id_invalid"


def test_name_of_63_chars_is_allowed() -> None:
    assert SpiffeId.for_identity("td", "device", "a" * 63).name == "a" * 63


def test_controller_id() -> None:
    controller = SpiffeId.controller("demo.umbra")
    assert str(controller) == "spiffe://demo.umbra/controller"
    assert controller.is_controller
    assert controller.kind is None
    assert controller.name is None


def test_is_hashable_and_frozen() -> None:
    a = SpiffeId.parse("spiffe://td/device/a")
    assert {a: 1}[SpiffeId.for_identity("td", "device", "a")] == 1
    with pytest.raises(AttributeError):
        a.path = "/x"  # type: ignore[misc]


@given(st.text(max_size=300))
def test_parse_any_text_raises_pki_error_or_round_trips(text: str) -> None:
    try:
        parsed = SpiffeId.parse(text)
    except PkiError as exc:
        assert exc.code == "spiffe_id_invalid"
    else:
        assert str(parsed) == text


_SEGMENT = st.text(alphabet="abcXYZ019.-_", min_size=1, max_size=10).filter(
    lambda s: s not in (".", "..")
)


@given(
    st.text(alphabet="abc019.-_", min_size=1, max_size=20),
    st.lists(_SEGMENT, max_size=5),
)
def test_parse_accepts_generated_valid_ids(trust_domain: str, segments: list[str]) -> None:
    uri = "spiffe://" + trust_domain + "".join("/" + s for s in segments)
    parsed = SpiffeId.parse(uri)
    assert parsed.trust_domain == trust_domain
    assert parsed.segments == tuple(segments)
