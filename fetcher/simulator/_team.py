"""The simulated team: deterministic members with vendor-looking user ids.

User ids look like the vendor's (``2AwrlZ3aQn``: ten base62 characters) and are
derived from ``blake2b(seed, index)``, so the same seed always yields the same
team on every platform and Python version (unlike :mod:`random`, whose
algorithms may change between releases).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

__all__ = ["Member", "build_team", "stable_unit"]

_BASE62: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_ID_LENGTH: Final = 10

_FIRST_NAMES: Final = (
    "Aarav", "Amelia", "Ana", "Ben", "Chloe", "Daniel", "Diya", "Elena", "Emma", "Ethan",
    "Fatima", "Gabriel", "Hana", "Isaac", "Ishaan", "Jade", "James", "Kavya", "Leo", "Lucia",
    "Maya", "Mateo", "Mei", "Noah", "Olivia", "Omar", "Priya", "Rahul", "Riya", "Sara",
    "Sofia", "Tariq", "Theo", "Uma", "Vikram", "Yara", "Yusuf", "Zara", "Zoe", "Arjun",
)  # fmt: skip
_LAST_NAMES: Final = (
    "Ali", "Bauer", "Chen", "Costa", "Dubois", "Evans", "Fischer", "Garcia", "Gupta", "Hansen",
    "Ito", "Jansen", "Kapoor", "Kim", "Kowalski", "Lopez", "Mehta", "Moreau", "Nakamura",
    "Novak", "Okafor", "Patel", "Quinn", "Rossi", "Sato", "Schmidt", "Shah", "Silva", "Singh",
    "Tanaka", "Uddin", "Varga", "Wang", "Weber", "Xu", "Yilmaz", "Zhang", "Ziegler", "Desai",
)  # fmt: skip


def stable_unit(*parts: object) -> float:
    """A uniform number in [0, 1) fixed by ``parts``: the simulator's only source of chance.

    Hashing (rather than a seeded generator) makes every draw independent of the
    order in which requests arrive.
    """
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True, slots=True)
class Member:
    """One member of the simulated team.

    Args:
        user_id: the encrypted user id the API expects in ``userIds``.
        first_name: given name.
        last_name: family name.
        email: a unique address under ``example.com``.
    """

    user_id: str
    first_name: str
    last_name: str
    email: str


def _user_id(seed: int, index: int, attempt: int) -> str:
    digest = hashlib.blake2b(f"user\x1f{seed}\x1f{index}\x1f{attempt}".encode(), digest_size=16)
    number = int.from_bytes(digest.digest(), "big")
    chars = []
    for _ in range(_ID_LENGTH):
        number, digit = divmod(number, 62)
        chars.append(_BASE62[digit])
    return "".join(chars)


def build_team(seed: int, size: int) -> tuple[Member, ...]:
    """Build a deterministic team.

    Args:
        seed: the same seed always gives the same members in the same order.
        size: number of members (>= 0).

    Returns:
        Members with unique 10-character base62 user ids and unique emails.

    Raises:
        ValueError: if ``size`` is negative.
    """
    if size < 0:
        raise ValueError(f"team size must be >= 0, got {size}")
    members: list[Member] = []
    seen_ids: set[str] = set()
    seen_emails: set[str] = set()
    for index in range(size):
        attempt = 0
        user_id = _user_id(seed, index, attempt)
        # 62**10 ids make a collision astronomically rare, but uniqueness is a promise.
        while user_id in seen_ids:
            attempt += 1
            user_id = _user_id(seed, index, attempt)
        seen_ids.add(user_id)
        first = _FIRST_NAMES[int(stable_unit("first", seed, index) * len(_FIRST_NAMES))]
        last = _LAST_NAMES[int(stable_unit("last", seed, index) * len(_LAST_NAMES))]
        local = f"{first}.{last}".lower()
        email = f"{local}@example.com"
        if email in seen_emails:
            email = f"{local}{index}@example.com"
        seen_emails.add(email)
        members.append(Member(user_id, first, last, email))
    return tuple(members)
