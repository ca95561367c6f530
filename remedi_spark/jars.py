"""Resolve the JVM jars (Delta Lake, SynapseML LightGBM) from Maven Central once, at setup time.

``python -m remedi_spark.jars`` runs ``mvn dependency:copy-dependencies`` on ``jvm/pom.xml``
into ``.jars/``, then drops every jar whose artifact pyspark already ships (scala-library,
slf4j, httpclient, ...) so the classpath holds one copy of each library. A stamp file keyed
by the pom's hash makes a second run a no-op, so sessions and tests never hit the network.
"""
from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

_JAR_NAME = re.compile(r"^(?P<artifact>.+?)-(?P<version>\d[^-]*(?:-[A-Za-z0-9.]+)*)\.jar$")
STAMP = ".resolved"


def artifact_name(jar_file: str) -> str:
    """``'scala-library-2.12.18.jar'`` → ``'scala-library'``."""
    m = _JAR_NAME.match(jar_file)
    return m.group("artifact") if m else jar_file


def pyspark_jars_dir() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "jars"


def resolve_jars(pom: Path, out_dir: Path, force: bool = False) -> list[Path]:
    """Copy the pom's runtime dependencies into ``out_dir`` minus what pyspark ships.

    Returns the jar paths. Raises ``RuntimeError`` with Maven's output if resolution fails.
    """
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    stamp = out_dir / STAMP
    if not force and stamp.exists() and stamp.read_text().strip() == digest:
        return sorted(out_dir.glob("*.jar"))
    if shutil.which("mvn") is None:
        raise RuntimeError("Maven (mvn) is needed once to resolve the Delta and SynapseML jars; install it "
                           "(apt-get install maven) or point spark.jars_dir at a folder holding them")
    staging = out_dir.with_name(out_dir.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    cmd = ["mvn", "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
           f"-DoutputDirectory={staging.resolve()}", "-DincludeScope=runtime"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"jar resolution failed ({' '.join(cmd)}):\n{proc.stdout}\n{proc.stderr}")
    shipped = {artifact_name(p.name) for p in pyspark_jars_dir().glob("*.jar")}
    for jar in staging.glob("*.jar"):
        if artifact_name(jar.name) in shipped:
            jar.unlink()
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    (out_dir / STAMP).write_text(digest + "\n")
    return sorted(out_dir.glob("*.jar"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pom", default="jvm/pom.xml")
    parser.add_argument("--out", default=".jars")
    parser.add_argument("--force", action="store_true", help="resolve again even if the stamp matches")
    args = parser.parse_args(argv)
    jars = resolve_jars(Path(args.pom), Path(args.out), force=args.force)
    print(f"{len(jars)} jars in {args.out}: " + ", ".join(p.name for p in jars))
    return 0


if __name__ == "__main__":
    sys.exit(main())
