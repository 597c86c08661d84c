"""What tests of the gRPC API build the same way: a token file, a rank's report of an override."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from controller.tokens import hash_token
from lrctl.v1 import lrctl_pb2 as pb

#: token name -> (the token itself, its role, the job patterns it is scoped to or None)
Tokens = Mapping[str, tuple[str, str, list[str] | None]]


def write_token_file(path: Path, tokens: Tokens) -> Path:
    """Write ``tokens`` to ``path`` in the hashed form ``lrctl serve --token-file`` reads."""
    entries = [
        {
            "name": name,
            "sha256": hash_token(token),
            "role": role,
            **({"jobs": jobs} if jobs else {}),
        }
        for name, (token, role, jobs) in tokens.items()
    ]
    path.write_text(json.dumps({"tokens": entries}))
    return path


def applied_report(
    job_id: str, step: int, version: int, *, rank: int = 0, **fields: Any
) -> pb.ReportRequest:
    """``rank``'s report at ``step`` saying override ``version`` took effect at that step;
    ``fields`` are more of the request (``applied_version``, ``world_size``, ...)."""
    applied = [pb.AppliedVersion(version=version, effective_step=step)]
    return pb.ReportRequest(job_id=job_id, rank=rank, step=step, applied=applied, **fields)
