"""Identity scores (optional): only with dghs-imgutils and its models in the local cache; never a made-up number.

This version ships no identity scoring: `identity_status` says why no number is shown, and the report prints it.
"""

from __future__ import annotations

import importlib.util


def identity_status() -> str:
    """Why the report shows no identity numbers (one sentence for the reader)."""
    if importlib.util.find_spec("imgutils") is None:
        return ("identity scores unavailable: dghs-imgutils is not installed, so no CCIP identity similarity, "
                "both-present or clone rate is shown")
    return ("identity scores unavailable: dghs-imgutils is installed, but this version of kohya-1to2 does not run "
            "its CCIP and person-detection models yet, so no number is shown")
