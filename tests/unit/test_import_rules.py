"""The rooms' import rules (README, Architecture): `schemas/` is the contract everyone imports and
that imports none of them; `streams/`, `training/` and `serving/` never import each other, nor
`infra/` (which may import them all, as the processes' launcher)."""

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PROCESSES = ("streams", "training", "serving")
ALLOWED = {"schemas": set(), **{process: {"schemas"} for process in PROCESSES}}
PROJECT_PACKAGES = {"schemas", "infra", *PROCESSES}


def imported_packages(path: Path) -> set[str]:
    """The project's top-level packages a module imports, at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & PROJECT_PACKAGES


def test_the_parser_sees_nested_and_from_imports(tmp_path):
    module = tmp_path / "module.py"
    module.write_text("import os, serving.app\nfrom schemas import events\ndef f():\n    from infra.stack import up\n")

    assert imported_packages(module) == {"serving", "schemas", "infra"}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_imports_only_what_its_room_may(package):
    crossings = {
        str(path.relative_to(REPO_ROOT)): sorted(imported - ALLOWED[package] - {package})
        for path in sorted((REPO_ROOT / package).rglob("*.py"))
        if (imported := imported_packages(path)) - ALLOWED[package] - {package}
    }

    assert crossings == {}


REDIS_CLIENTS = {"Redis", "RedisCluster", "StrictRedis", "from_url"}
STORE = REPO_ROOT / "schemas" / "feature_store.py"


def redis_clients_made(path: Path) -> list[int]:
    """Lines of `path` that construct a Redis client (`redis.Redis(...)`, `RedisCluster(...)`, `from_url(...)`)."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
        if isinstance(node, ast.Call)
        and (node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None))
        in REDIS_CLIENTS
    ]


def test_only_the_feature_store_opens_redis_in_the_deployed_processes():
    """REDIS_FORMAT.md: the feature store is the one module that writes and reads Kingfisher's keys;
    `infra/` may open Redis to start and check the local server."""
    opened = {
        str(path.relative_to(REPO_ROOT)): lines
        for package in ("schemas", *PROCESSES)
        for path in sorted((REPO_ROOT / package).rglob("*.py"))
        if path != STORE and (lines := redis_clients_made(path))
    }

    assert redis_clients_made(STORE) and opened == {}
