"""The runner recipe's pure logic: lock detection, pip's format options, the digest, the profile's clone rule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sandbox import runner_lock
from sandbox.errors import SetupError
from sandbox.image import Recipe
from sandbox.seccomp_profile import DENIED, EPERM, clone_rules, tighten
from tests.support.entrypoint import checkout_entrypoint

REPO = Path(__file__).resolve().parents[2]
LOCKED = """# header
annotated-types==0.8.0 \\
    --hash=sha256:13b2 \\
    --hash=sha256:f072
    # via pydantic
docopt==0.6.2 \\
    --hash=sha256:49b3
"""


def test_a_uv_lock_is_recognised_and_a_plain_list_is_not() -> None:
    assert runner_lock.requirement_lines(LOCKED) == [
        "annotated-types==0.8.0 --hash=sha256:13b2 --hash=sha256:f072", "docopt==0.6.2 --hash=sha256:49b3"]
    assert runner_lock.is_locked(LOCKED)
    assert not runner_lock.is_locked("requests\npandas==2.2.0 --hash=sha256:ab\n")
    assert not runner_lock.is_locked("pandas==2.2.0\n")
    assert not runner_lock.is_locked("# nothing\n")


def test_the_packaged_lock_pins_every_package_with_hashes() -> None:
    lock = (REPO / "runner-rootfs" / "requirements.lock").read_text()
    assert runner_lock.is_locked(lock)
    pinned = {line.split("==")[0] for line in runner_lock.requirement_lines(lock)}
    wanted = {line.split("==")[0].split("[")[0].lower() for line in runner_lock.names(
        (REPO / "runner-rootfs" / "requirements.in").read_text())}
    assert wanted <= pinned, wanted - pinned
    assert "pyseccomp" in pinned and "docopt" in pinned


def test_wheels_only_but_the_sdist_only_packages_in_the_order_pip_needs() -> None:
    assert runner_lock.format_args(["docopt", "foo"]) == ["--only-binary=:all:", "--no-binary=docopt,foo"]
    assert runner_lock.format_args([]) == ["--only-binary=:all:"]
    platforms = [runner_lock.PIP_TARGET[i + 1] for i, arg in enumerate(runner_lock.PIP_TARGET) if arg == "--platform"]
    assert "manylinux2014_x86_64" in platforms and "manylinux_2_17_x86_64" in platforms
    assert f"manylinux_2_{runner_lock.GLIBC[1]}_x86_64" in platforms


def test_the_digest_covers_the_lock_but_not_the_entrypoint() -> None:
    recipe = Recipe.packaged()
    other_lock = Recipe(**{**recipe.__dict__, "lock": recipe.lock + "\n"})
    assert other_lock.digest() != recipe.digest()
    assert Recipe(**{**recipe.__dict__, "extra_packages": ("file",)}).digest() != recipe.digest()
    assert not hasattr(recipe, "entrypoint")  # mounted at run time: a change to it needs no new image


def test_a_requirements_file_without_hashes_is_refused_with_one_line(tmp_path: Path) -> None:
    plain = tmp_path / "reqs.txt"
    plain.write_text("requests\n")
    with pytest.raises(SetupError, match="is not a lock: every requirement needs ==VERSION and --hash"):
        Recipe.packaged(requirements=plain)


def test_the_profile_denies_every_syscall_the_entrypoint_filter_denies() -> None:
    from runner_rootfs.entrypoint import CLONE_NAMESPACE_FLAGS, DENIED_SYSCALLS

    assert set(DENIED_SYSCALLS) <= DENIED
    for path in (REPO / "containers" / "seccomp.json",):
        profile = json.loads(path.read_text())
        allowed = {n for r in profile["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" and not r.get("args")
                   for n in r["names"]}
        assert not allowed & (set(DENIED_SYSCALLS) | {"clone"})
        denied = {n for r in profile["syscalls"] if r["action"] == "SCMP_ACT_ERRNO" and not r.get("args")
                  and not r.get("includes") and not r.get("excludes") for n in r["names"]}
        assert set(DENIED_SYSCALLS) <= denied, set(DENIED_SYSCALLS) - denied
        assert [r for r in profile["syscalls"] if r["names"] == ["clone"]] == clone_rules()
    errno_rules = [r for r in clone_rules() if r["action"] == "SCMP_ACT_ERRNO"]
    assert sum(r["args"][0]["value"] for r in errno_rules if r["args"][0]["index"] == 0) == CLONE_NAMESPACE_FLAGS
    assert all(r["errnoRet"] == EPERM for r in errno_rules)


def test_clone_stays_allowed_without_namespace_flags() -> None:
    profile = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["clone", "clone3", "read", "unshare"], "action": "SCMP_ACT_ALLOW", "args": []}]}
    rules = tighten(profile)["syscalls"]
    assert rules[0] == {"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": []}
    allow = [r for r in rules if r["names"] == ["clone"] and r["action"] == "SCMP_ACT_ALLOW"]
    assert [(r["args"][0]["index"], r["args"][0]["valueTwo"]) for r in allow] == [(0, 0), (1, 0)]


@pytest.mark.parametrize(("source", "printed"), [
    (b"\xef\xbb\xbfx = 'bom'\n", "bom"),
    (b"# -*- coding: latin-1 -*-\nx = 'caf\xe9'\n", "caf\u00e9"),
    (b"x = 'caf\xc3\xa9'  # utf-8 by default\n", "caf\u00e9"),
    (b"# vim: set fileencoding=cp1252 :\nx = '\x80'\n", "\u20ac"),
])
def test_script_bytes_compile_as_python_reads_a_file(source: bytes, printed: str) -> None:
    namespace: dict[str, Any] = {}
    exec(checkout_entrypoint().compile_script(source), namespace)  # noqa: S102 - the test's own fixed sources
    assert namespace["x"] == printed


def test_invalid_utf8_without_a_declaration_is_the_file_readers_syntax_error() -> None:
    with pytest.raises(SyntaxError) as error:
        checkout_entrypoint().compile_script(b"print(1)\n# caf\xe9\n")
    assert str(error.value) == ("Non-UTF-8 code starting with '\\xe9' in file /scripts/index.py on line 2, but no "
                                "encoding declared; see https://peps.python.org/pep-0263/ for details")


def test_scripts_get_no_future_flags_from_the_entrypoint() -> None:
    namespace: dict[str, Any] = {}
    exec(checkout_entrypoint().compile_script(b"def f(x: int): pass\n"), namespace)  # noqa: S102
    assert namespace["f"].__annotations__ == {"x": int}


def test_uv_and_pip_failures_read_as_one_sentence() -> None:
    wrapped = ("  \u00d7 No solution found when resolving dependencies:\n"
               "  \u2570\u2500\u25b6 Because nothing-here was not found in the package registry and you\n"
               "      require nothing-here==1.0, we can conclude that your requirements are unsatisfiable.\n")
    assert runner_lock._uv_error(wrapped) == ("Because nothing-here was not found in the package registry and you "
                                              "require nothing-here==1.0, we can conclude that your requirements "
                                              "are unsatisfiable.")
    mismatch = ("ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE. If you have updated ...\n"
                "    idna==3.7 from https://files.example/idna-3.7-py3-none-any.whl (from -r bad.lock (line 1)):\n"
                "        Expected sha256 0000\n             Got        82fe\n")
    assert runner_lock._pip_error(mismatch) == ("idna==3.7 does not match the lock's hash (the file pip got is not "
                                                "the one the lock names)")
    assert runner_lock._pip_error("WARNING: Location x is ignored\nERROR: No matching distribution found for a==1\n") \
        == "ERROR: No matching distribution found for a==1"
