"""Who is next: smooth weighted round robin (the one nginx uses), over the people who can take a
trial now, with the reason for every pick. Pure: ``services.rotation`` reads the candidates and
their running credits, and writes the new credits back under the role's lock.

Each turn, everyone who can take a trial adds their weight to their credit; the highest credit
is picked and pays back the sum of the weights. Over any stretch the picks follow the weights
exactly (to within one turn per person), and they are interleaved rather than bunched. People
away or at their cap neither earn nor pay: they come back level, not owed a burst of trials.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date


@dataclass(frozen=True)
class Candidate:
    email: str
    name: str
    weight: float = 1.0
    open_trials: int = 0
    max_open_trials: int | None = None
    away_until: date | None = None


@dataclass(frozen=True)
class Skipped:
    email: str
    name: str
    why: str


@dataclass(frozen=True)
class Pick:
    """The person picked (None: nobody can take it), why, and who was passed over and for what."""
    email: str | None
    name: str | None
    why: str
    skipped: tuple[Skipped, ...] = ()

    def explain(self) -> str:
        """``Carl: next in rotation; Cora skipped: away until 12-08``."""
        head = f"{self.name}: {self.why}" if self.email else f"nobody: {self.why}"
        return "; ".join([head, *(f"{s.name} skipped: {s.why}" for s in self.skipped)])


def why_not(person: Candidate, today: date) -> str | None:
    """Why ``person`` cannot take a trial today, or None."""
    if person.away_until is not None and today <= person.away_until:
        return f"away until {person.away_until:%m-%d}"
    if person.max_open_trials is not None and person.open_trials >= person.max_open_trials:
        return f"at their cap of {person.max_open_trials} open trial{'' if person.max_open_trials == 1 else 's'}"
    if person.weight <= 0:
        return "weight 0"
    return None


def choose(candidates: Sequence[Candidate], credits: dict[str, float], today: date,
           prefer: str | None = None, prefer_why: str = "") -> tuple[Pick, dict[str, float]]:
    """The next pick and everyone's credits after it. ``prefer``: a person to pick when they can
    take it (an AE/CE pair); they are charged for the turn as if the rotation had picked them."""
    skipped = tuple(Skipped(c.email, c.name, reason) for c in candidates
                    if (reason := why_not(c, today)) is not None)
    passed = {s.email for s in skipped}
    able = [c for c in candidates if c.email not in passed]
    after = dict(credits)
    if not able:
        return Pick(None, None, "no one in the rotation can take it" if candidates else "no one in the rotation",
                    skipped), after
    total = sum(c.weight for c in able)
    for c in able:
        after[c.email] = after.get(c.email, 0.0) + c.weight
    preferred = next((c for c in able if c.email == prefer), None)
    if preferred is not None:
        winner, why = preferred, prefer_why or "preferred"
    else:
        # max() keeps the first of equal credits: candidates come in a stable order (by email).
        winner = max(able, key=lambda c: after[c.email])
        why = "next in rotation" if winner.weight == 1 else f"next in rotation (weight {winner.weight:g})"
    after[winner.email] -= total
    return Pick(winner.email, winner.name, why, skipped), after


def render(picks: Iterable[tuple[str, str]]) -> str:
    """``AE Andy: next in rotation · CE Carl: …`` from (role, explanation) pairs."""
    return " · ".join(f"{role.upper()} {text}" for role, text in picks)
