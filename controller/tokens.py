"""Bearer tokens and whom they stand for: roles, job scopes and the token file.

A token file (``lrctl serve --token-file``, ``LRCTL_TOKEN_FILE``) has one of two forms::

    {"tokens": [
        {"name": "alice", "sha256": "<64 hex digits>", "role": "operator"},
        {"name": "ci-runs", "sha256": "<64 hex digits>", "role": "worker", "jobs": ["run-*"]}
    ]}

    {"TOKEN": "ROLE", ...}            # the older form: tokens in clear, no names, no scopes

The first stores only the SHA-256 (hex) of each token, so the file reveals no token; a
``name`` is the token's identity (the ``actor`` of the overrides it makes) and ``jobs``,
when present, limits the token to job ids matching one of its :func:`fnmatch.fnmatchcase`
patterns (job ids hold no glob characters). In the older form a token's identity is
``sha256:<first 12 hex digits of its hash>``.

``python -m controller.tokens NAME ROLE [--jobs GLOB ...]`` makes a new random token and
prints it with its file entry.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import re
import secrets
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrctl.constants import DEFAULT_MAX_ACTOR_CHARS

__all__ = [
    "ADMIN",
    "OPERATOR",
    "READER",
    "ROLES",
    "WORKER",
    "TokenEntry",
    "as_entries",
    "hash_token",
    "load_tokens",
    "parse_tokens",
]

#: Every call, including recreating a job (CreateJob with ``replace``).
ADMIN = "admin"
#: Create, recreate, override, finish and read jobs; no reports.
OPERATOR = "operator"
#: What a training run's rank 0 needs: create or attach to a job, Watch and Report.
WORKER = "worker"
#: Read only: GetJob, ListJobs, History, Preview and Watch.
READER = "reader"
#: The roles a token file may name (which role may call what: :mod:`controller.auth`).
ROLES = (ADMIN, OPERATOR, WORKER, READER)

_HEX64 = re.compile(r"[0-9a-f]{64}")
_ENTRY_KEYS = frozenset({"name", "sha256", "role", "jobs"})


@dataclass(frozen=True)
class TokenEntry:
    """One token the controller accepts, and whom it stands for.

    Attributes:
        name: The token's identity: the ``actor`` recorded for its overrides.
        sha256: SHA-256 of the token, 64 lowercase hex digits (the token itself is never kept).
        role: One of :data:`ROLES`.
        jobs: fnmatch patterns of the job ids it may touch; None for every job.
    """

    name: str
    sha256: str
    role: str
    jobs: tuple[str, ...] | None = None

    def covers(self, job_id: str) -> bool:
        """Whether this token may touch job ``job_id``."""
        return self.jobs is None or any(fnmatch.fnmatchcase(job_id, p) for p in self.jobs)


def hash_token(token: str) -> str:
    """Return the SHA-256 of ``token`` (UTF-8) as 64 lowercase hex digits."""
    return hashlib.sha256(token.encode()).hexdigest()


def plain_entry(token: str, role: str) -> TokenEntry:
    """Return the entry of a token of the older ``{"TOKEN": "ROLE"}`` form.

    Raises:
        ValueError: an empty token, one with spaces, or an unknown role.
    """
    if not isinstance(token, str) or not token or any(ch.isspace() for ch in token):
        raise ValueError(
            f"expected each token to be a non-empty string without spaces, got {token!r}"
        )
    _check_role(role, "")
    digest = hash_token(token)
    return TokenEntry(name=f"sha256:{digest[:12]}", sha256=digest, role=role)


def as_entries(tokens: Mapping[str, str] | Iterable[TokenEntry]) -> tuple[TokenEntry, ...]:
    """Return ``tokens`` as entries: a ``{token: role}`` mapping (the older form, as tests and
    embedding code pass it) or entries already.

    Raises:
        ValueError: a bad token or role, or two entries with the same hash or name.
    """
    if isinstance(tokens, Mapping):
        entries = tuple(plain_entry(token, role) for token, role in tokens.items())
    else:
        entries = tuple(tokens)
        for entry in entries:
            if not isinstance(entry, TokenEntry):
                raise ValueError(f"expected TokenEntry items, got {type(entry).__name__}")
    _check_unique(entries, "")
    return entries


def parse_tokens(data: object, source: str = "token file") -> tuple[TokenEntry, ...]:
    """Return the entries of a token file's JSON (either form; see the module docstring).

    Raises:
        ValueError: anything but the two forms, with what was expected and what came.
    """
    if not isinstance(data, dict):
        raise ValueError(
            f'expected {source} to hold a JSON object {{"tokens": [...]}} or '
            f'{{"TOKEN": "ROLE"}}, got {type(data).__name__}'
        )
    if not isinstance(data.get("tokens"), list):
        return as_entries(data)  # the older form
    if set(data) != {"tokens"}:
        extra = ", ".join(repr(k) for k in sorted(set(data) - {"tokens"}))
        raise ValueError(f'expected only the key "tokens" in {source}, got also {extra}')
    entries = tuple(_entry(item, i, source) for i, item in enumerate(data["tokens"]))
    _check_unique(entries, source)
    return entries


def load_tokens(path: str | os.PathLike[str]) -> tuple[TokenEntry, ...]:
    """Read a token file (either form).

    Raises:
        ValueError: the file is missing, not JSON, or holds something else.
    """
    where = f"token file {os.fspath(path)!r}"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read {where}: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{where} is not JSON: {exc}") from None
    return parse_tokens(data, where)


def _entry(item: object, index: int, source: str) -> TokenEntry:
    where = f"tokens[{index}] of {source}"
    if not isinstance(item, dict):
        raise ValueError(
            f'expected {where} to be an object {{"name", "sha256", "role"[, '
            f'"jobs"]}}, got {type(item).__name__}'
        )
    unknown = set(item) - _ENTRY_KEYS
    if unknown:
        # A typo such as "job" must not silently widen a token to every job.
        hint = " (store the token's SHA-256, never the token)" if "token" in unknown else ""
        raise ValueError(
            f"expected the keys name, sha256, role and jobs in {where}, got "
            f"{', '.join(sorted(map(repr, unknown)))}{hint}"
        )
    name, digest, role = item.get("name"), item.get("sha256"), item.get("role")
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest.lower()):
        raise ValueError(
            f"expected {where} to have a sha256 of 64 hex digits (e.g. "
            f"`printf %s TOKEN | sha256sum`), got {digest!r}"
        )
    digest = digest.lower()
    if name is None:
        name = f"sha256:{digest[:12]}"
    if (
        not isinstance(name, str)
        or not name.strip()
        or len(name) > DEFAULT_MAX_ACTOR_CHARS
        or not name.isprintable()
    ):
        # The name is the actor of its overrides and is written in log lines: printable only,
        # the rule of an override's actor (controller.jobs.check_note).
        raise ValueError(
            f"expected {where} to have a name of 1-{DEFAULT_MAX_ACTOR_CHARS} "
            f"printable characters, got {name!r}"
        )
    _check_role(role, f" in {where}")
    jobs = item.get("jobs")
    if jobs is not None:
        if (
            not isinstance(jobs, list)
            or not jobs
            or not all(isinstance(p, str) and p.strip() for p in jobs)
        ):
            raise ValueError(
                f"expected {where} to have jobs as a non-empty list of job-id "
                f'patterns such as ["run-*"] (leave it out for every job), '
                f"got {jobs!r}"
            )
        jobs = tuple(jobs)
    return TokenEntry(name=name, sha256=digest, role=str(role), jobs=jobs)


def _check_role(role: object, where: str) -> None:
    if role not in ROLES:
        raise ValueError(f"expected a role of {', '.join(map(repr, ROLES))}{where}, got {role!r}")


def _check_unique(entries: Sequence[TokenEntry], source: str) -> None:
    where = f" in {source}" if source else ""
    seen_hash: set[str] = set()
    seen_name: set[str] = set()
    for entry in entries:
        if entry.sha256 in seen_hash:
            raise ValueError(
                f"expected each token once{where}, got one twice (sha256 {entry.sha256[:12]}...)"
            )
        if entry.name in seen_name:
            raise ValueError(f"expected unique token names{where}, got {entry.name!r} twice")
        seen_hash.add(entry.sha256)
        seen_name.add(entry.name)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m controller.tokens NAME ROLE [--jobs GLOB ...]``: a new token and its entry."""
    parser = argparse.ArgumentParser(
        prog="python -m controller.tokens",
        description="Make a random bearer token; print it (give it to its holder) and the "
        'entry to add to the token file\'s "tokens" list (it holds only the '
        "token's SHA-256).",
    )
    parser.add_argument("name", help="the token's identity, recorded as actor")
    parser.add_argument("role", choices=ROLES)
    parser.add_argument(
        "--jobs",
        nargs="+",
        metavar="GLOB",
        help="job-id patterns it may touch (default: every job)",
    )
    args = parser.parse_args(argv)
    token = secrets.token_urlsafe(32)
    entry: dict[str, Any] = {"name": args.name, "sha256": hash_token(token), "role": args.role}
    if args.jobs:
        entry["jobs"] = args.jobs
    _entry(entry, 0, "the new entry")  # the same checks as the server's
    print(f"token: {token}")
    print(f"entry: {json.dumps(entry)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
