"""Find a Java 21+ runtime for pyserini (Lucene) and point pyjnius at it before the JVM starts.

pyjnius reads `JAVA_HOME` once, when it is first imported, and a process can start only one JVM. So
`ensure_jvm()` must run before anything imports `jnius` or `pyserini`; every embedkit code path that
uses pyserini calls it first::

    from embedkit.lexical.java import ensure_jvm
    ensure_jvm()                 # raises EmbedkitError saying what to install when no Java 21+ exists
    from pyserini.search.lucene import LuceneSearcher
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from embedkit.errors import EmbedkitError

log = logging.getLogger(__name__)

MIN_JAVA = 21
# Where Linux distributions, Homebrew and SDKMAN install JVMs; each entry holds one JVM per folder.
JVM_ROOTS = (
    "/usr/lib/jvm",
    "/usr/java",
    "/opt/java",
    "/usr/local/opt",
    "/Library/Java/JavaVirtualMachines",
    "~/.sdkman/candidates/java",
    "~/.jdks",
)
INSTALL_HINT = (
    f"pyserini needs Java {MIN_JAVA} or newer. Install one (e.g. `apt install openjdk-21-jdk-headless`, "
    "`brew install openjdk@21`, or a Temurin build from adoptium.net) and set JAVA_HOME to it, "
    "or use the embedded BM25 backend: --backend bm25s"
)


@dataclass(frozen=True, slots=True)
class JavaRuntime:
    home: Path
    version: int

    @property
    def libjvm(self) -> Path | None:
        for candidate in ("lib/server/libjvm.so", "jre/lib/server/libjvm.so", "lib/server/libjvm.dylib",
                          "Contents/Home/lib/server/libjvm.dylib"):
            if (self.home / candidate).is_file():
                return self.home / candidate
        return None


def java_version(home: str | Path) -> int | None:
    """The major version of the JVM installed at `home` (from its `release` file), or None."""
    home = Path(home)
    for release in (home / "release", home / "Contents" / "Home" / "release"):
        if release.is_file():
            match = re.search(r'^JAVA_VERSION="(\d+)(?:\.(\d+))?', release.read_text(errors="replace"), re.MULTILINE)
            if match:
                major = int(match.group(1))
                # Java 8 and older spell themselves 1.8, 1.7, …
                return int(match.group(2) or 0) if major == 1 else major
    return None


def _runtime(home: str | Path) -> JavaRuntime | None:
    home = Path(home).expanduser()
    if home.name == "bin":
        home = home.parent
    if (home / "Contents" / "Home").is_dir():  # macOS bundles
        home = home / "Contents" / "Home"
    version = java_version(home)
    if version is None:
        return None
    runtime = JavaRuntime(home=home.resolve(), version=version)
    return runtime if runtime.libjvm is not None else None


def installed_runtimes(roots: tuple[str, ...] | list[str] | None = None) -> list[JavaRuntime]:
    """Every JVM found under `roots` (default: JVM_ROOTS) and the one `java` on PATH belongs to, newest first."""
    roots = JVM_ROOTS if roots is None else roots
    found: dict[Path, JavaRuntime] = {}
    for root in roots:
        folder = Path(root).expanduser()
        if not folder.is_dir():
            continue
        for child in sorted(folder.iterdir()):
            runtime = _runtime(child)
            if runtime is not None:
                found.setdefault(runtime.home, runtime)
    on_path = shutil.which("java")
    if on_path:
        runtime = _runtime(Path(on_path).resolve().parent.parent)
        if runtime is not None:
            found.setdefault(runtime.home, runtime)
    return sorted(found.values(), key=lambda r: (-r.version, str(r.home)))


def find_java(minimum: int = MIN_JAVA, *, roots: tuple[str, ...] | list[str] | None = None,
              environ: Mapping[str, str] | None = None) -> JavaRuntime | None:
    """The JVM to use: `JAVA_HOME` when it is new enough, else the newest installed one that is.

    A `JAVA_HOME` older than `minimum` is passed over with a warning (it is often set for other tools).
    """
    configured = (os.environ if environ is None else environ).get("JAVA_HOME")
    if configured:
        runtime = _runtime(configured)
        if runtime is not None and runtime.version >= minimum:
            return runtime
        if runtime is None:
            log.warning("JAVA_HOME=%s is not a Java installation; looking for another Java %d+", configured, minimum)
        else:
            log.warning("JAVA_HOME=%s is Java %d; pyserini needs %d+, looking for another", configured,
                        runtime.version, minimum)
    for runtime in installed_runtimes(roots):
        if runtime.version >= minimum:
            return runtime
    return None


def java_available(minimum: int = MIN_JAVA) -> bool:
    """True when a Java `minimum`+ runtime exists (or the JVM is already running in this process)."""
    return _started_runtime is not None or find_java(minimum) is not None


_started_runtime: JavaRuntime | None = None


def ensure_jvm(minimum: int = MIN_JAVA) -> JavaRuntime:
    """Point pyjnius at a Java `minimum`+ runtime; call before importing pyserini. Idempotent."""
    global _started_runtime
    if _started_runtime is not None:
        return _started_runtime
    if "jnius" in sys.modules:
        # Someone imported pyjnius first: it already picked its JVM from the environment of that moment.
        home = os.environ.get("JAVA_HOME")
        runtime = _runtime(home) if home else None
        if runtime is None or runtime.version < minimum:
            raise EmbedkitError(
                "pyjnius was imported before embedkit could choose a Java runtime, and JAVA_HOME "
                f"({home or 'unset'}) is not Java {minimum}+; set JAVA_HOME to a Java {minimum}+ installation"
            )
        _started_runtime = runtime
        return runtime
    runtime = find_java(minimum)
    if runtime is None:
        raise EmbedkitError(f"no Java {minimum}+ runtime found (JAVA_HOME={os.environ.get('JAVA_HOME') or 'unset'}, "
                            f"searched {', '.join(JVM_ROOTS)} and PATH). {INSTALL_HINT}")
    os.environ["JAVA_HOME"] = str(runtime.home)
    # pyjnius looks for libjvm under JAVA_HOME; keep the runtime's own bin first for tools pyserini spawns.
    os.environ["PATH"] = f"{runtime.home / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    if runtime.version >= 23:
        import jnius_config

        # Lucene's mmap cleaner uses sun.misc.Unsafe, which Java 23+ warns about on every start.
        if not jnius_config.vm_running:
            jnius_config.add_options("--sun-misc-unsafe-memory-access=allow")
    log.debug("using Java %d at %s", runtime.version, runtime.home)
    _started_runtime = runtime
    return runtime
