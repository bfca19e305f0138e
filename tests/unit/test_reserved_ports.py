"""Reserving a CRIU image's listening ports: the list syntax, the merge, and the release.

The pure part (`gpumux.core.port_ranges`) on strings and sets; the adapter
(`gpumux.checkpoint.reserved_ports`) on a temporary file standing in for
/proc/sys/net/ipv4/ip_local_reserved_ports, so the host's list is never touched.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gpumux.checkpoint.reserved_ports import PortReservations
from gpumux.core.port_ranges import format_ports, parse_ports, reconcile

pytestmark = pytest.mark.unit


# ---- the kernel's syntax -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ports"),
    [
        ("", set()),
        ("\n", set()),
        ("8080\n", {8080}),
        ("8080,9000-9002\n", {8080, 9000, 9001, 9002}),
        (" 5 , 7-7 ,", {5, 7}),
        ("40000-40001,1", {1, 40000, 40001}),
    ],
)
def test_the_list_is_parsed_as_ports_and_inclusive_ranges(text: str, ports: set[int]) -> None:
    assert parse_ports(text) == ports


@pytest.mark.parametrize("text", ["80-", "x", "9002-9000", "65536", "1-70000", "-5"])
def test_what_is_not_the_kernels_syntax_is_refused(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each bad input has its own message
        parse_ports(text)


def test_runs_are_written_as_ranges_in_order() -> None:
    assert format_ports([]) == ""
    assert format_ports([9001, 80, 9000, 9002, 443, 81]) == "80-81,443,9000-9002"
    assert format_ports({65535}) == "65535"


def test_a_written_list_reads_back_the_same() -> None:
    ports = {1, 2, 3, 10, 12, 13, 40000, 65534, 65535}
    assert parse_ports(format_ports(ports)) == ports


# ---- merge and release ---------------------------------------------------------------------


def test_reserving_keeps_every_entry_someone_else_put_there() -> None:
    change = reconcile(frozenset({22, 5000}), wanted=frozenset({41000, 5000}), ours=frozenset())
    assert change.listed == {22, 5000, 41000}
    assert change.added == {41000}  # 5000 was listed already: not ours
    assert change.ours == {41000}
    assert change.changed


def test_only_our_own_ports_are_released_and_only_when_unwanted() -> None:
    present = frozenset({22, 5000, 41000, 41001})
    change = reconcile(present, wanted=frozenset({41001, 5000}), ours=frozenset({41000, 41001}))
    assert change.released == {41000}
    assert change.listed == {22, 5000, 41001}  # 5000 stays: someone else's
    assert change.ours == {41001}
    nothing = reconcile(present, wanted=frozenset({41000, 41001}), ours=frozenset({41000}))
    assert not nothing.changed
    assert nothing.listed == present


def test_a_port_someone_else_unlisted_is_no_longer_ours() -> None:
    change = reconcile(frozenset({22}), wanted=frozenset(), ours=frozenset({41000}))
    assert not change.changed  # nothing of ours to take off the list
    assert change.ours == frozenset()


# ---- the adapter on a stand-in file ------------------------------------------------------


@pytest.fixture
def listing(tmp_path: Path) -> Path:
    path = tmp_path / "ip_local_reserved_ports"
    path.write_text("22,5000-5002\n")  # what an operator reserved before gpumux ran
    return path


def test_images_reserve_their_ports_and_release_them_when_gone(listing: Path) -> None:
    ports = PortReservations(listing)
    a, b = Path("/images/a/v1"), Path("/images/b/v1")
    with capture_logs() as logs:
        ports.need(a, {41000, 41001, 5001}, lasting=False)
    assert parse_ports(listing.read_text()) == {22, 5000, 5001, 5002, 41000, 41001}
    assert ports.ours == {41000, 41001}  # 5001 was the operator's
    (line,) = [e for e in logs if e["event"] == "ports_reserved"]
    assert line["reserved"] == "41000-41001"
    assert line["released"] == ""

    ports.need(b, {41001, 42000}, lasting=False)  # b shares 41001
    ports.drop(a)
    assert parse_ports(listing.read_text()) == {22, 5000, 5001, 5002, 41001, 42000}
    ports.drop(b)
    assert listing.read_text() == "22,5000-5002\n"  # the operator's entries, untouched
    assert ports.ours == frozenset()


def test_a_replaced_image_releases_what_only_it_needed(listing: Path) -> None:
    ports = PortReservations(listing)
    old, new = Path("/images/a/v1"), Path("/images/a/v2")
    ports.need(old, {41000, 41001}, lasting=False)
    ports.need(new, {41001, 41002}, lasting=False)
    ports.drop(old)  # pruned after the new dump
    assert parse_ports(listing.read_text()) == {22, 5000, 5001, 5002, 41001, 41002}


def test_at_exit_a_prebaked_images_ports_stay_reserved(listing: Path) -> None:
    ports = PortReservations(listing)
    ports.need(Path("/prebaked/a"), {41000}, lasting=True)
    ports.need(Path("/images/b/v1"), {42000}, lasting=False)
    ports.close()
    # The next start restores the pre-baked image: its port must stay unassigned.
    assert parse_ports(listing.read_text()) == {22, 5000, 5001, 5002, 41000}


def test_an_unchanged_list_is_not_rewritten(listing: Path) -> None:
    ports = PortReservations(listing)
    ports.need(Path("/images/a/v1"), {5000}, lasting=False)  # already the operator's
    assert listing.read_text() == "22,5000-5002\n"
    assert ports.ours == frozenset()


def test_without_a_writable_list_it_says_so_once_and_goes_on(tmp_path: Path) -> None:
    ports = PortReservations(tmp_path / "absent" / "ip_local_reserved_ports")
    with capture_logs() as logs:
        ports.need(Path("/images/a/v1"), {41000}, lasting=False)
        ports.need(Path("/images/b/v1"), {41001}, lasting=False)
        ports.drop(Path("/images/a/v1"))
        ports.close()
    warnings = [e for e in logs if e["event"] == "ports_not_reserved"]
    assert len(warnings) == 1
    assert "port_busy" in warnings[0]["consequence"]
    assert ports.ours == frozenset()


def test_an_unreadable_list_is_never_overwritten(listing: Path) -> None:
    listing.write_text("not a port list\n")
    ports = PortReservations(listing)
    with capture_logs() as logs:
        ports.need(Path("/images/a/v1"), {41000}, lasting=False)
    assert listing.read_text() == "not a port list\n"
    assert [e["event"] for e in logs] == ["ports_not_reserved"]
