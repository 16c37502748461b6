"""The endpoint's vocabulary, as the vendor's reference page gives it.

Written here from ``team-stats-reference.txt`` (the ``orderBy`` "Value in" list,
the ``type``, ``countBy`` and ``sortOrder`` values), not imported from the
client's :mod:`fetcher.spec`: a stand-in that copied the client's lists would
share the client's mistakes instead of catching them.
``tests/test_simulator.py`` compares the two.
"""

from __future__ import annotations

from typing import Final, Literal

__all__ = ["MAX_PAGE_SIZE", "METRICS_BY_TYPE", "CountBy", "ReportType", "SortOrder"]

ReportType = Literal["prospect", "email"]
CountBy = Literal["relative", "absolute"]
SortOrder = Literal["asc", "desc"]

#: The reference's ``orderBy`` list is the prospect metrics, then the email ones.
METRICS_BY_TYPE: Final[dict[str, tuple[str, ...]]] = {
    "prospect": (
        "prospectAdded", "prospectContacted", "opened", "clicked", "replied",
        "unSubscribed", "bounced", "Uncategorized", "Interested", "Not Interested",
        "Meeting Booked", "Out of Office", "Closed", "Not Now", "Do Not Contact",
    ),
    "email": ("prospectContacted", "emailSent", "opened", "clicked", "replied", "bounced"),
}  # fmt: skip

#: The reference publishes no largest ``limit``; the simulator refuses more than this
#: by default (``--max-page-size``).
MAX_PAGE_SIZE: Final = 1000
