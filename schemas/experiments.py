"""Experiments between model versions: arms, the assignment of users to arms, the request ids that
carry an answer's arm to the events that follow it, and the per-arm tallies the stream keeps.
Specified in EXPERIMENTS.md.

A user's arm is a stable hash of the experiment's name and the user id, so it never changes while
the experiment runs, and two experiments split users independently. The service writes the arm into
every answer's `request_id` (``<experiment>:<arm>:<token>``); an impression or click published with
that id in `context.request_id` is counted for the arm by the stream, with no lookup on the way.
A shadow arm ranks a share of requests beside the arm that serves them; the request id then also
carries a digest of each item it would have shown (``:<shadow arm>=<8 hex digits per item>``), so
the stream can count how often a clicked item was among them.
"""

import hashlib
import math
import re
import secrets
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.events import Event, EventType

NAME_PATTERN = r"^[A-Za-z0-9_-]{1,32}$"
REQUEST_ID_SEPARATOR = ":"
SHADOW_SEPARATOR = "="
DIGEST_HEX = 8
# A request id rides in an event's context (at most 2 KiB as JSON): two shadow arms of 100 digests
# each, with the longest names, take 1,750 characters.
MAX_SHADOW_ARMS = 2
MAX_SHADOW_DIGESTS = 100
SHARE_TOLERANCE = 1e-9
Z_95 = 1.959963984540054
COUNTED = (EventType.IMPRESSION, EventType.CLICK)

_NAME = re.compile(NAME_PATTERN)
_HEX = re.compile(r"[0-9a-f]*")
Name = Annotated[str, Field(strict=True, pattern=NAME_PATTERN)]


class Arm(BaseModel):
    """One arm: the model version it serves to its share of users, or (shadow) ranks for a share of requests."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    version: int | None = Field(None, ge=1, description="Model version; null: the registry's live version.")
    share: float = Field(
        gt=0, le=1, description="Fraction of users assigned to the arm; a shadow arm's: of requests it also ranks."
    )
    shadow: bool = Field(
        False, description="Ranks its share of requests beside the arm that serves them, and serves none."
    )


class Experiment(BaseModel):
    """Arms that serve, whose shares add up to 1, and shadow arms; the first arm serves, and is the
    champion the others are compared with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    arms: tuple[Arm, ...] = Field(min_length=2)

    @model_validator(mode="after")
    def _check_arms(self) -> "Experiment":
        names = [arm.name for arm in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arms: names must be unique, got {names}")
        if self.arms[0].shadow:
            raise ValueError("arms: the first arm, the champion, must serve")
        if len(self.shadows) > MAX_SHADOW_ARMS:
            raise ValueError(f"arms: at most {MAX_SHADOW_ARMS} shadow arms (request ids carry what each would show)")
        if abs(sum(arm.share for arm in self.serving) - 1) > SHARE_TOLERANCE:
            shares = sum(arm.share for arm in self.serving)
            raise ValueError(f"arms: the shares of the arms that serve must add up to 1, got {shares:g}")
        return self

    @property
    def serving(self) -> tuple[Arm, ...]:
        return tuple(arm for arm in self.arms if not arm.shadow)

    @property
    def shadows(self) -> tuple[Arm, ...]:
        return tuple(arm for arm in self.arms if arm.shadow)

    def arm_of(self, user_id: str) -> Arm:
        """The user's arm: where the hash of (experiment, user) falls among the serving arms' cumulative shares."""
        digest = hashlib.blake2b(f"{self.name}\x00{user_id}".encode(), digest_size=8).digest()
        point, reached, serving = int.from_bytes(digest, "big") / 2**64, 0.0, self.serving
        for arm in serving:
            reached += arm.share
            if point < reached:
                return arm
        return serving[-1]  # shares that add up to 1 - 1e-12 leave a sliver past the last arm


def item_digest(item_id: str) -> int:
    """32 bits of an item id, for a request id to say which items a shadow arm would have shown
    (a false match: about 1 in 4 billion per item listed)."""
    return zlib.crc32(item_id.encode())


def new_request_id(
    experiment: str | None = None, arm: str | None = None, shadows: Mapping[str, Sequence[str]] | None = None
) -> str:
    """A fresh request id; within an experiment it names the experiment and the arm that answered,
    and each shadow arm that ranked the request with the digests of the items it would have shown
    (its first MAX_SHADOW_DIGESTS)."""
    token = secrets.token_hex(8)
    if not (experiment and arm):
        return token
    shadow_parts = [
        f"{shadow}{SHADOW_SEPARATOR}"
        + "".join(f"{item_digest(item):0{DIGEST_HEX}x}" for item in items[:MAX_SHADOW_DIGESTS])
        for shadow, items in (shadows or {}).items()
    ]
    return REQUEST_ID_SEPARATOR.join((experiment, arm, token, *shadow_parts))


@dataclass(frozen=True, slots=True)
class Attribution:
    """What a request id `new_request_id` made says: the experiment, the arm that answered, and what
    each shadow arm that ranked the request would have shown (digests of item ids)."""

    experiment: str
    arm: str
    shadows: Mapping[str, frozenset[int]] = field(default_factory=dict)


def attributed_arm(request_id: str | None) -> Attribution | None:
    """The attribution a request id `new_request_id` made carries, or None for any other text."""
    parts = request_id.split(REQUEST_ID_SEPARATOR) if request_id else []
    if len(parts) < 3 or not (_NAME.fullmatch(parts[0]) and _NAME.fullmatch(parts[1])):
        return None
    shadows = {}
    for part in parts[3:]:
        shadow, separator, digests = part.partition(SHADOW_SEPARATOR)
        if not (separator and _NAME.fullmatch(shadow) and _HEX.fullmatch(digests)) or len(digests) % DIGEST_HEX:
            return None
        shadows[shadow] = frozenset(int(digests[i : i + DIGEST_HEX], 16) for i in range(0, len(digests), DIGEST_HEX))
    return Attribution(parts[0], parts[1], shadows)


def counted_arm(event: Event) -> tuple[str, str, tuple[tuple[str, bool], ...]] | None:
    """What an impression or click counts for, by its `context.request_id`: (experiment, arm, and for a
    click each shadow arm that ranked the request with whether it would have shown the clicked item);
    None for other events."""
    if event.context is None or event.type not in COUNTED:
        return None
    attribution = attributed_arm(event.request_id)
    if attribution is None:
        return None
    shown = ()
    if event.type is EventType.CLICK:
        clicked = item_digest(event.item_id)
        shown = tuple((shadow, clicked in digests) for shadow, digests in attribution.shadows.items())
    return attribution.experiment, attribution.arm, shown


@dataclass(frozen=True, slots=True)
class ArmTally:
    """A serving arm's impressions and clicks; a shadow arm's clicks on the answers of requests it
    ranked, and how many of those clicked items it would have shown."""

    impressions: int = 0
    clicks: int = 0
    would_have_shown: int = 0

    @property
    def ctr(self) -> float | None:
        """Clicks per impression; capped at 1, as clicks whose impressions were never published would exceed it."""
        return min(self.clicks, self.impressions) / self.impressions if self.impressions else None


@dataclass(frozen=True, slots=True)
class ExperimentTallies:
    """What the stream counted for one experiment: arm -> its impressions and clicks."""

    arms: dict[str, ArmTally] = field(default_factory=dict)
    version: int = 0
    """Events counted, so a Redis write that would move the tallies backwards is refused."""
    at_ts: int = 0

    def counted(
        self, arm: str, event_type: EventType, ts: int, shadows_shown: Iterable[tuple[str, bool]] = ()
    ) -> "ExperimentTallies":
        """These tallies with one more impression or click (`event_type`) for `arm`, and for a click
        the shadow arms that ranked its request, each with whether it would have shown the item."""
        arms, tally = dict(self.arms), self.arms.get(arm, ArmTally())
        if event_type is EventType.IMPRESSION:
            arms[arm] = ArmTally(tally.impressions + 1, tally.clicks, tally.would_have_shown)
        else:
            arms[arm] = ArmTally(tally.impressions, tally.clicks + 1, tally.would_have_shown)
        for shadow, shown in shadows_shown:
            tally = arms.get(shadow, ArmTally())
            arms[shadow] = ArmTally(tally.impressions, tally.clicks + 1, tally.would_have_shown + shown)
        return ExperimentTallies(arms, self.version + 1, max(self.at_ts, ts))

    def merged(self, other: "ExperimentTallies") -> "ExperimentTallies":
        """The tallies of two disjoint sets of events, from the tallies of each."""
        arms = dict(self.arms)
        for arm, theirs in other.arms.items():
            ours = arms.get(arm, ArmTally())
            arms[arm] = ArmTally(ours.impressions + theirs.impressions, ours.clicks + theirs.clicks,
                                 ours.would_have_shown + theirs.would_have_shown)  # fmt: skip
        return ExperimentTallies(arms, self.version + other.version, max(self.at_ts, other.at_ts))


def tallies_of(events: Iterable[Event]) -> dict[str, ExperimentTallies]:
    """Each experiment's tallies after `events` (distinct, in order), as the stream counts them."""
    tallies: dict[str, ExperimentTallies] = {}
    for event in events:
        if (counted := counted_arm(event)) is not None:
            experiment, arm, shadows_shown = counted
            before = tallies.get(experiment, ExperimentTallies())
            tallies[experiment] = before.counted(arm, event.type, event.ts, shadows_shown)
    return tallies


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (95 % by default); None without trials. Unlike the
    normal approximation it stays within [0, 1] and is honest at the small counts an experiment starts with."""
    if trials == 0:
        return None
    p, z2 = min(successes, trials) / trials, z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_interval(champion: ArmTally, challenger: ArmTally, z: float = Z_95) -> tuple[float, float] | None:
    """The 95 % interval of challenger CTR - champion CTR (normal approximation of two independent
    proportions); None until both arms have impressions."""
    if champion.impressions == 0 or challenger.impressions == 0:
        return None
    p1, p2 = champion.ctr, challenger.ctr
    spread = z * math.sqrt(p1 * (1 - p1) / champion.impressions + p2 * (1 - p2) / challenger.impressions)
    return p2 - p1 - spread, p2 - p1 + spread


def experiment_report(experiment: Experiment, tallies: ExperimentTallies | None) -> dict:
    """Each arm's counts, CTR with its interval, and the difference from the champion (the first arm)."""
    counted = tallies.arms if tallies else {}
    champion = counted.get(experiment.arms[0].name, ArmTally())
    rows = []
    for position, arm in enumerate(experiment.arms):
        tally = counted.get(arm.name, ArmTally())
        rows.append({
            "name": arm.name,
            "version": arm.version,
            "share": arm.share,
            "shadow": arm.shadow,
            "impressions": tally.impressions,
            "clicks": tally.clicks,
            "ctr": tally.ctr,
            "ctr_interval": wilson_interval(tally.clicks, tally.impressions),
            "difference_interval": difference_interval(champion, tally) if position and not arm.shadow else None,
            "would_have_shown": tally.would_have_shown if arm.shadow else None,
            "shown_interval": wilson_interval(tally.would_have_shown, tally.clicks) if arm.shadow else None,
        })  # fmt: skip
    return {"name": experiment.name, "arms": rows, "as_of": tallies.at_ts if tallies else None}
