"""Java 21+ discovery for pyserini: JAVA_HOME first when new enough, else the newest installed JVM."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from embedkit.errors import EmbedkitError
from embedkit.lexical import java


def fake_jvm(root: Path, name: str, version: str) -> Path:
    home = root / name
    (home / "lib" / "server").mkdir(parents=True)
    (home / "lib" / "server" / "libjvm.so").write_bytes(b"")
    (home / "release").write_text(f'IMPLEMENTOR="Test"\nJAVA_VERSION="{version}"\n')
    return home


@pytest.fixture
def jvms(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no `java` on PATH
    root = tmp_path / "jvm"
    homes = {v: fake_jvm(root, f"jdk-{v}", f"{v}.0.1") for v in ("17", "21", "25")}
    fake_jvm(root, "jdk-8", "1.8.0_392")
    (root / "not-a-jdk").mkdir()
    return root, homes


def test_versions_are_read_from_release_files(jvms):
    root, homes = jvms
    assert java.java_version(homes["25"]) == 25
    assert java.java_version(root / "jdk-8") == 8
    assert java.java_version(root / "not-a-jdk") is None
    assert [r.version for r in java.installed_runtimes([str(root)])] == [25, 21, 17, 8]


def test_newest_java_21_plus_is_chosen_when_java_home_is_unset(jvms):
    root, homes = jvms
    runtime = java.find_java(roots=[str(root)], environ={})
    assert runtime is not None and runtime.version == 25 and runtime.home == homes["25"].resolve()


def test_java_home_is_honoured_when_new_enough(jvms):
    root, homes = jvms
    runtime = java.find_java(roots=[str(root)], environ={"JAVA_HOME": str(homes["21"])})
    assert runtime.version == 21
    # a JAVA_HOME/bin spelling works too
    assert java.find_java(roots=[], environ={"JAVA_HOME": str(homes["21"] / "bin")}).version == 21


def test_old_java_home_falls_back_to_an_installed_21_plus(jvms, caplog):
    root, homes = jvms
    runtime = java.find_java(roots=[str(root)], environ={"JAVA_HOME": str(homes["17"])})
    assert runtime.version == 25
    assert "Java 17" in caplog.text


def test_no_java_21_means_none(jvms):
    root, homes = jvms
    assert java.find_java(roots=[], environ={"JAVA_HOME": str(homes["17"])}) is None


def test_ensure_jvm_without_java_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(java, "JVM_ROOTS", (str(tmp_path / "nothing"),))
    monkeypatch.setattr(java, "_started_runtime", None)
    monkeypatch.delitem(sys.modules, "jnius", raising=False)
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(EmbedkitError) as error:
        java.ensure_jvm()
    message = str(error.value)
    assert "Java 21" in message and "JAVA_HOME" in message and "--backend bm25s" in message
