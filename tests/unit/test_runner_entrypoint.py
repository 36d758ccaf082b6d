"""The runner entrypoint's own logic, on the host's Python: its options, the libraries pyseccomp is shown, the
script's encoding. (What it does inside a runner is tested with real runners in tests/foundation and
tests/isolation.)"""

from __future__ import annotations

import sys

import pytest
from runner_rootfs import entrypoint


def test_options_as_the_sandbox_passes_them_and_their_defaults() -> None:
    args = entrypoint.parse_args(["--nofile", "512", "--cpu-seconds", "60", "--address-space", "1073741824",
                                  "--preimport", "seatable_api,pandas", "--no-seccomp"])
    assert (args.nofile, args.cpu_seconds, args.address_space) == (512, 60, 1 << 30)
    assert args.preimport == "seatable_api,pandas" and args.no_seccomp is True and args.probe is False
    defaults = entrypoint.parse_args([])
    assert (defaults.nofile, defaults.nproc, defaults.sigpending, defaults.msgqueue) == (1024, 0, -1, -1)
    assert defaults.preimport == "" and defaults.no_seccomp is False


@pytest.mark.parametrize(("argv", "problem"), [
    (["--bogus", "1"], "unrecognized argument: --bogus"),
    (["--nproc", "many"], "--nproc: not an integer: 'many'"),
    (["--nofile"], "--nofile expects a value"),
    (["512"], "unrecognized argument: 512"),
])
def test_a_wrong_option_ends_the_runner_with_a_usage_line(argv: list[str], problem: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ended:
        entrypoint.parse_args(argv)
    assert ended.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("usage: runner-entrypoint [--address-space N]")
    assert err[1] == f"runner-entrypoint: error: {problem}"


def test_pyseccomp_is_shown_sonames_and_the_script_gets_the_real_ctypes_util() -> None:
    real = sys.modules.pop("ctypes.util", None)
    try:
        with entrypoint.known_libraries():
            import ctypes.util

            stand_in = sys.modules["ctypes.util"]
            assert ctypes.util is stand_in and not hasattr(stand_in, "__file__")
            assert ctypes.util.find_library("c") == "libc.so.6"  # glibc: this host, like the runner image
            assert ctypes.util.find_library("no-such-library-here") is None  # the real search answered
        import ctypes.util as after

        assert after is not stand_in and after.__file__.endswith("ctypes/util.py")
        assert after.find_library is not stand_in.find_library
    finally:
        if real is not None:
            sys.modules["ctypes.util"] = real


@pytest.mark.parametrize(("source", "expected"), [
    (b"print('h\xc3\xa9')\n", None),
    (b"\xef\xbb\xbfprint(1)\n", None),  # a BOM: tokenize decides
    (b"# -*- coding: latin-1 -*-\nprint('h\xe9')\n", None),  # a declaration: tokenize decides
    (b"print('h\xe9')\n", "Non-UTF-8 code starting with '\\xe9' in file /scripts/index.py on line 1"),
    (b"# -*- coding: no-such-codec -*-\nprint(1)\n", "unknown encoding"),
])
def test_the_script_is_read_as_python_reads_a_file(source: bytes, expected: str | None) -> None:
    if expected is None:
        assert entrypoint.compile_script(source) is not None
    else:
        with pytest.raises(SyntaxError, match=expected.replace("\\", "\\\\").replace("(", r"\(")):
            entrypoint.compile_script(source)
