"""Write the JSON Schema files of the wire contracts, for producers in other languages.

    python -m schemas.export_json_schemas [--check]

The files are generated from the pydantic models and checked in; `--check` (run by the tests)
fails when they are out of date.
"""

import argparse
import json
import sys
from pathlib import Path

from pydantic import BaseModel

from schemas.catalogue import CatalogueItem
from schemas.events import Event
from schemas.experiments import Experiment

SCHEMA_DIR = Path(__file__).parent / "json"
CONTRACTS: dict[str, type[BaseModel]] = {
    "event-v1": Event,
    "catalogue-item-v1": CatalogueItem,
    "experiment-v1": Experiment,
}


def rendered_schemas() -> dict[Path, str]:
    return {
        SCHEMA_DIR / f"{name}.schema.json": json.dumps(
            {"$schema": "https://json-schema.org/draft/2020-12/schema", **model.model_json_schema()}, indent=2
        )
        + "\n"
        for name, model in CONTRACTS.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m schemas.export_json_schemas", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only report whether the checked-in files are current")
    arguments = parser.parse_args(argv)
    stale = [path for path, text in rendered_schemas().items() if not path.exists() or path.read_text() != text]
    if arguments.check:
        for path in stale:
            print(f"out of date: {path}; run python -m schemas.export_json_schemas", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(rendered_schemas()[path])
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
