"""Experiments between model versions: arms, the assignment of users to arms, the request ids that
carry an answer's arm to the events that follow it, and the per-arm tallies the stream keeps.
Specified in EXPERIMENTS.md.

A user's arm is a stable hash of the experiment's name and the user id, so it never changes while
the experiment runs, and two experiments split users independently. The service writes the arm into
every answer's `request_id` (``<experiment>:<arm>:<token>``); an impression or click published with
that id in `context.request_id` is counted for the arm by the stream, with no lookup on the way.
"""

import hashlib
import math
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.events import Event, EventType

NAME_PATTERN = r"^[A-Za-z0-9_-]{1,32}$"
REQUEST_ID_SEPARATOR = ":"
SHARE_TOLERANCE = 1e-9
Z_95 = 1.959963984540054
COUNTED = (EventType.IMPRESSION, EventType.CLICK)

_NAME = re.compile(NAME_PATTERN)
Name = Annotated[str, Field(strict=True, pattern=NAME_PATTERN)]


class Arm(BaseModel):
    """One arm: the model version it serves to its share of users."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    version: int | None = Field(None, ge=1, description="Model version served; null: the registry's live version.")
    share: float = Field(gt=0, le=1, description="Fraction of users assigned to the arm.")


class Experiment(BaseModel):
    """Arms whose shares add up to 1; the first arm is the champion the others are compared with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    arms: tuple[Arm, ...] = Field(min_length=2)

    @model_validator(mode="after")
    def _check_arms(self) -> "Experiment":
        names = [arm.name for arm in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arms: names must be unique, got {names}")
        if abs(sum(arm.share for arm in self.arms) - 1) > SHARE_TOLERANCE:
            raise ValueError(f"arms: shares must add up to 1, got {sum(arm.share for arm in self.arms):g}")
        return self

    def arm_of(self, user_id: str) -> Arm:
        """The user's arm: where the hash of (experiment, user) falls among the cumulative shares."""
        digest = hashlib.blake2b(f"{self.name}\x00{user_id}".encode(), digest_size=8).digest()
        point, reached = int.from_bytes(digest, "big") / 2**64, 0.0
        for arm in self.arms:
            reached += arm.share
            if point < reached:
                return arm
        return self.arms[-1]  # shares that add up to 1 - 1e-12 leave a sliver past the last arm


def new_request_id(experiment: str | None = None, arm: str | None = None) -> str:
    """A fresh request id; within an experiment it names the experiment and the arm that answered."""
    token = secrets.token_hex(8)
    return REQUEST_ID_SEPARATOR.join((experiment, arm, token)) if experiment and arm else token


def attributed_arm(request_id: str | None) -> tuple[str, str] | None:
    """(experiment, arm) named by a request id `new_request_id` made, or None for any other text."""
    if not request_id or request_id.count(REQUEST_ID_SEPARATOR) != 2:
        return None
    experiment, arm, _ = request_id.split(REQUEST_ID_SEPARATOR)
    return (experiment, arm) if _NAME.fullmatch(experiment) and _NAME.fullmatch(arm) else None


def counted_arm(event: Event) -> tuple[str, str] | None:
    """(experiment, arm) an impression or click counts for, by its `context.request_id`; None for other events."""
    if event.context is None or event.type not in COUNTED:
        return None
    return attributed_arm(event.request_id)


@dataclass(frozen=True, slots=True)
class ArmTally:
    impressions: int = 0
    clicks: int = 0

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

    def counted(self, arm: str, event_type: EventType, ts: int) -> "ExperimentTallies":
        """These tallies with one more impression or click (`event_type`) for `arm`."""
        tally = self.arms.get(arm, ArmTally())
        if event_type is EventType.IMPRESSION:
            tally = ArmTally(tally.impressions + 1, tally.clicks)
        else:
            tally = ArmTally(tally.impressions, tally.clicks + 1)
        return ExperimentTallies({**self.arms, arm: tally}, self.version + 1, max(self.at_ts, ts))


def tallies_of(events: Iterable[Event]) -> dict[str, ExperimentTallies]:
    """Each experiment's tallies after `events` (distinct, in order), as the stream counts them."""
    tallies: dict[str, ExperimentTallies] = {}
    for event in events:
        if (counted := counted_arm(event)) is not None:
            experiment, arm = counted
            tallies[experiment] = tallies.get(experiment, ExperimentTallies()).counted(arm, event.type, event.ts)
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
            "impressions": tally.impressions,
            "clicks": tally.clicks,
            "ctr": tally.ctr,
            "ctr_interval": wilson_interval(tally.clicks, tally.impressions),
            "difference_interval": difference_interval(champion, tally) if position else None,
        })  # fmt: skip
    return {"name": experiment.name, "arms": rows, "as_of": tallies.at_ts if tallies else None}
