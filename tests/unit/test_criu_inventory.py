"""The /proc scans that gate a CRIU dump or restore, against a directory laid out like /proc."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from gpumux.checkpoint.criu_inventory import (
    IO_URING,
    describe_io_uring,
    io_uring_users,
    port_holders,
    port_is_free,
    shm_files,
    taken_pids,
    tcp_sockets,
)

pytestmark = pytest.mark.unit

URING_MAP = f"7f32fcb34000-7f32fcb38000 rw-s 10000000 00:10 55232                      {IO_URING}"


def fake_proc(root: Path, pid: int, links: dict[int, str], maps: tuple[str, ...] = ()) -> None:
    """`<root>/<pid>/fd/<n>` symlinks to `links[n]`, and a `maps` file with `maps` lines."""
    fd_dir = root / str(pid) / "fd"
    fd_dir.mkdir(parents=True)
    for fd, target in links.items():
        os.symlink(target, fd_dir / str(fd))
    (root / str(pid) / "maps").write_text("".join(line + "\n" for line in maps))


@pytest.fixture
def shm_file() -> Iterator[Path]:
    path = Path("/dev/shm") / f"psm_gpumux_test_{os.getpid()}"
    path.write_bytes(b"\0" * 4096)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def test_io_uring_found_by_fd_and_by_mapping(tmp_path: Path) -> None:
    fake_proc(tmp_path, 100, {0: "/dev/null", 7: IO_URING})
    fake_proc(
        tmp_path,
        101,
        {0: "/dev/null"},
        ("00400000-00452000 r-xp 00000000 08:02 173521 /usr/bin/python3", URING_MAP),
    )
    fake_proc(tmp_path, 102, {0: "/dev/null", 3: "socket:[1234]"})
    found = io_uring_users([100, 101, 102, 999], proc_root=tmp_path)
    assert [(u.pid, u.where) for u in found] == [
        (100, "fd 7"),
        (101, "mapping 7f32fcb34000-7f32fcb38000"),
    ]


def test_io_uring_message_names_the_pids_and_the_sysctl(tmp_path: Path) -> None:
    fake_proc(tmp_path, 100, {9: IO_URING})
    message = describe_io_uring(io_uring_users([100], proc_root=tmp_path))
    assert "pid 100 fd 9" in message
    assert "kernel.io_uring_disabled=2" in message


def test_a_clean_tree_has_no_io_uring(tmp_path: Path) -> None:
    fake_proc(tmp_path, 100, {0: "/dev/null", 1: "/var/log/a.log", 4: "anon_inode:[eventpoll]"})
    assert io_uring_users([100], proc_root=tmp_path) == []


def test_shm_files_kept_deleted_and_foreign_ones_not(tmp_path: Path, shm_file: Path) -> None:
    fake_proc(
        tmp_path,
        100,
        {5: str(shm_file), 6: "/dev/shm/sem.mp-gone (deleted)", 7: "/tmp/not-shm"},
        [
            f"7f00-7f10 rw-s 00000000 00:1a 77 {shm_file}",
            "7f10-7f20 rw-s 0 00:1a 78 /dev/shm/vanished",
        ],
    )
    assert shm_files([100], proc_root=tmp_path) == [str(shm_file)]


def test_taken_pids_sees_ourselves_not_a_free_pid() -> None:
    taken = taken_pids([os.getpid(), 2**22 + 7])
    assert list(taken) == [os.getpid()]


def test_port_is_free_until_someone_listens() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.listen()
        assert not port_is_free(port)
    assert port_is_free(port)


def test_listening_sockets_are_listed_once_each_and_connections_not() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as v4,
        socket.create_server(("::1", 0), family=socket.AF_INET6) as v6,
        socket.create_connection(v4.getsockname()[:2]) as client,
    ):
        server_side, _ = v4.accept()
        with server_side:
            open_, found = tcp_sockets([os.getpid(), os.getpid(), 2**22 + 7])
        listened = [("127.0.0.1", v4.getsockname()[1]), ("::1", v6.getsockname()[1])]
        connected = client.getsockname()[1]
    assert set(listened) <= set(found)
    assert connected not in {port for _host, port in found}
    assert found == sorted(set(found))
    assert any(f":{connected} -> " in line for line in open_)  # the connection, as open


def test_a_port_bound_on_ipv6_is_not_free_there() -> None:
    with socket.create_server(("::1", 0), family=socket.AF_INET6) as sock:
        port = sock.getsockname()[1]
        assert not port_is_free(port, "::1")
    assert port_is_free(port, "::1")


def test_who_holds_a_port_is_named() -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
        holders = port_holders([port])
    assert holders[port] == [f"pid {os.getpid()} ({psutil.Process().name()})"]
