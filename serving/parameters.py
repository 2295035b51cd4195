"""The service's integer query parameters, declared once: the handlers parse them and the OpenAPI
document describes them from the same declaration, so the two cannot drift apart."""

from dataclasses import dataclass

from schemas.config import Settings


class BadRequest(ValueError):
    def __init__(self, *reasons: str):
        super().__init__("; ".join(reasons))
        self.reasons = list(reasons)


@dataclass(frozen=True)
class Count:
    """An integer query parameter from 1 to `most` (a number, or the name of the setting that holds it)."""

    name: str
    default: int
    most: int | str
    description: str

    def highest(self, settings: Settings) -> int:
        return self.most if isinstance(self.most, int) else getattr(settings, self.most)

    def parse(self, query, settings: Settings) -> int:
        raw, high = query.get(self.name), self.highest(settings)
        if raw is None:
            return self.default
        if not raw.lstrip("-").isdigit() or not 1 <= int(raw) <= high:
            raise BadRequest(f"{self.name}: must be an integer from 1 to {high}, got {raw!r}")
        return int(raw)

    def openapi(self, settings: Settings) -> dict:
        schema = {"type": "integer", "minimum": 1, "maximum": self.highest(settings), "default": self.default}
        return {"name": self.name, "in": "query", "required": False, "schema": schema, "description": self.description}


RECOMMENDED = Count("k", 20, "max_k", "How many items.")
SIMILAR = Count("k", 20, "max_k", "How many items.")
TRENDING = Count("k", 10, "max_k", "How many items.")
USERS = Count("limit", 12, 100, "How many.")
