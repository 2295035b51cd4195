"""The rooms' import rules (ARCHITECTURE.md): the contract (`schemas/` outside `schemas/runtime/`)
imports no other room and no library heavier than pydantic and orjson; the shared runtime
(`schemas/runtime/`) imports the contract only; `streams/`, `training/` and `serving/` import the
floor and never each other, nor `infra/` (which may import them all, as the processes' launcher)."""

import ast
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CONTRACT, RUNTIME = "schemas", "schemas.runtime"
PROCESSES = ("streams", "training", "serving")
ALLOWED = {CONTRACT: set(), RUNTIME: {CONTRACT}, **{process: {CONTRACT, RUNTIME} for process in PROCESSES}}
CONTRACT_LIBRARIES = {"pydantic", "pydantic_settings", "orjson"}


def room_of(module: str) -> str | None:
    """The room a dotted module name belongs to; None: not the project's."""
    if module == RUNTIME or module.startswith(RUNTIME + "."):
        return RUNTIME
    top = module.split(".")[0]
    return top if top in {CONTRACT, "infra", *PROCESSES} else None


def imported_modules(path: Path) -> set[str]:
    """The dotted names of every module `path` imports, at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def imported_rooms(path: Path) -> set[str]:
    """The rooms a module imports (`from schemas import runtime` imports the runtime)."""
    return {room_of(module) for module in imported_modules(path)} - {None}


def files_of(room: str) -> list[Path]:
    if room == CONTRACT:
        return sorted(path for path in (REPO_ROOT / "schemas").rglob("*.py") if "runtime" not in path.parts)
    return sorted((REPO_ROOT / room.replace(".", "/")).rglob("*.py"))


def test_the_parser_sees_nested_and_from_imports(tmp_path):
    module = tmp_path / "module.py"
    module.write_text(
        "import os, serving.app\nfrom schemas import events\nfrom schemas.runtime.ann import ItemIndex\n"
        "def f():\n    from infra.stack import up\n"
    )

    assert imported_rooms(module) == {"serving", CONTRACT, RUNTIME, "infra"}


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_each_room_imports_only_what_it_may(room):
    crossings = {
        str(path.relative_to(REPO_ROOT)): sorted(imported - ALLOWED[room] - {room})
        for path in files_of(room)
        if (imported := imported_rooms(path)) - ALLOWED[room] - {room}
    }

    assert crossings == {}


def test_the_contract_needs_no_library_heavier_than_pydantic_and_orjson():
    libraries = {
        str(path.relative_to(REPO_ROOT)): sorted(outside)
        for path in files_of(CONTRACT)
        if (
            outside := {module.split(".")[0] for module in imported_modules(path)}
            - set(sys.stdlib_module_names)
            - CONTRACT_LIBRARIES
            - {CONTRACT}
        )
    }

    assert libraries == {}


REDIS_CLIENTS = {"Redis", "RedisCluster", "StrictRedis", "from_url"}
STORE = REPO_ROOT / "schemas" / "runtime" / "feature_store.py"


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


FORMAT_INTERNALS = {"redis_key", "key_pattern", "encode_value", "decode_value", "encode_feature_spec"}


def test_only_the_feature_store_builds_keys_and_encodes_values_in_the_deployed_processes():
    """REDIS_FORMAT.md: callers name an entity and hand over its value; the store builds the key and
    encodes the value, so the format has one writer."""
    used = {
        str(path.relative_to(REPO_ROOT)): sorted(names)
        for room in PROCESSES
        for path in files_of(room)
        if (
            names := {m.rsplit(".", 1)[1] for m in imported_modules(path) if m.startswith("schemas.redis_format.")}
            & FORMAT_INTERNALS
        )
    }

    assert used == {}
