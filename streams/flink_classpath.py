"""Jars the Flink JVMs need on their classpath, not only in a job's `pipeline.jars`: the state
changelog (KF_STATE_CHANGELOG) is loaded by each TaskManager itself, before any job's code.

Kept free of PyFlink so that `make up` can start a standalone cluster with them cheaply.
"""

import os
from collections.abc import Mapping
from pathlib import Path

from schemas.config import Settings

CHANGELOG_JARS = ("flink-statebackend-changelog-*.jar", "flink-dstl-dfs-*.jar")


def flink_jars_directory(settings: Settings) -> Path:
    """Where `make setup` puts the jars of infra/flink/pom.xml."""
    return settings.stack.jars_dir.resolve() / "flink"


def changelog_jars(settings: Settings) -> list[Path]:
    directory = flink_jars_directory(settings)
    jars = [jar for pattern in CHANGELOG_JARS for jar in sorted(directory.glob(pattern))]
    if len(jars) < len(CHANGELOG_JARS):
        raise FileNotFoundError(
            f"the state changelog's jars ({', '.join(CHANGELOG_JARS)}) are not all in {directory}; run `make setup` "
            "to resolve them, or set KF_STATE_CHANGELOG=false"
        )
    return jars


def with_flink_classpath(settings: Settings, environment: Mapping[str, str]) -> dict[str, str]:
    """`environment` with the changelog's jars on the classpath of the Flink JVMs it starts: both
    PyFlink's local gateway and Flink's start scripts add HADOOP_CLASSPATH to theirs."""
    present = [entry for entry in environment.get("HADOOP_CLASSPATH", "").split(os.pathsep) if entry]
    added = [str(jar) for jar in changelog_jars(settings) if str(jar) not in present]
    return dict(environment) | {"HADOOP_CLASSPATH": os.pathsep.join([*present, *added])}
