"""The `criu dump` / `criu restore` command lines and how failures are quoted."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpumux.checkpoint.criu import CriuSettings, dump_argv, error_lines, restore_argv

pytestmark = pytest.mark.unit

IMG = Path("/img")
LOG = Path("/logs/a.criu.log")


def test_dump_flags_follow_the_reference() -> None:
    argv = dump_argv(CriuSettings(criu_path="/usr/sbin/criu"), 42, IMG, LOG, tcp_established=False)
    assert argv[:6] == ["/usr/sbin/criu", "dump", "-t", "42", "-D", "/img"]
    for flag in ("--ext-unix-sk", "--file-locks", "--link-remap", "-v4", "--log-file"):
        assert flag in argv
    assert "--shell-job" not in argv  # backends have their own session and no terminal
    assert "--leave-running" not in argv  # the dump kills the tree
    assert "--tcp-established" not in argv
    assert "-L" not in argv


def test_tp_trees_keep_their_tcp_connections_with_an_nftables_lock() -> None:
    argv = dump_argv(CriuSettings(), 42, IMG, LOG, tcp_established=True)
    assert argv[argv.index("--network-lock") + 1] == "nftables"
    assert "--tcp-established" in argv


def test_restore_is_detached_sibling_with_a_pidfile() -> None:
    argv = restore_argv(CriuSettings(), IMG, LOG, Path("/run/a.pid"), tcp_established=False)
    assert argv[1:4] == ["restore", "-D", "/img"]
    assert "--restore-detached" in argv
    assert "--restore-sibling" in argv  # parent = gpumux, so no parent-death signal fires
    assert argv[argv.index("--pidfile") + 1] == "/run/a.pid"
    # CRIU's stats file goes beside the log, never into the (stamped, maybe read-only) image.
    assert argv[argv.index("--work-dir") + 1] == str(LOG.parent)


def test_cuda_plugin_dir_only_when_the_plugin_is_there(tmp_path: Path) -> None:
    settings = CriuSettings(plugin_dir=str(tmp_path))
    assert "-L" not in dump_argv(settings, 1, IMG, LOG, tcp_established=False)
    (tmp_path / "cuda_plugin.so").write_bytes(b"")
    argv = dump_argv(settings, 1, IMG, LOG, tcp_established=False)
    assert argv[argv.index("-L") + 1] == str(tmp_path)
    argv = restore_argv(settings, IMG, LOG, Path("/p"), tcp_established=False)
    assert argv[argv.index("-L") + 1] == str(tmp_path)


def test_error_lines_skip_the_harmless_rlimit_error(tmp_path: Path) -> None:
    log = tmp_path / "dump.log"
    log.write_text(
        "(00.01) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self\n"
        "(00.05) inet: Connected TCP socket, consider using --tcp-established option.\n"
        "(00.05) Error (criu/sk-inet.c:199): inet: Connected TCP socket\n"
        "(00.06) Error (criu/cr-dump.c:1975): Dumping FAILED.\n"
    )
    text = error_lines(log)
    assert "RLIMIT_NOFILE" not in text
    assert "Connected TCP socket" in text
    assert text.endswith("Dumping FAILED.")
    assert error_lines(tmp_path / "missing.log") == ""
