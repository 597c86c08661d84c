"""The PostgreSQL store's schema: its migrations and the SQL text of its queries.

Migrations: ``MIGRATIONS[i]`` (SQL statements) takes the schema from version *i* to *i + 1*,
numbered like the SQLite store's; the version lives in ``lrctl_schema``. Every replica
migrates at startup inside one transaction that first takes a database-wide advisory lock,
so replicas starting together on an empty database migrate it exactly once
(:func:`migrate`). The tables are described in :mod:`controller.store_pg`.
"""

from __future__ import annotations

from typing import Any

from controller.rows import EVENT_COLUMNS, JOB_COLUMNS, check_schema_version

__all__ = [
    "EVENT_COLUMNS_SQL",
    "INSERT_EVENT",
    "JOB_COLUMNS_SQL",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SELECT_JOB",
    "UPSERT_JOB",
    "migrate",
]

#: The migration lock's advisory lock key (one bigint).
_MIGRATION_LOCK = 0x6C7263746C5F6D69  # "lrctl_mi"

_V1 = (
    """CREATE TABLE lrctl_jobs (
        job_id text PRIMARY KEY,
        schedule text NOT NULL,
        base_lrs text NOT NULL,
        version bigint NOT NULL,
        created_version bigint NOT NULL,
        step bigint NOT NULL,
        state text NOT NULL,
        "verbose" integer NOT NULL,  -- quoted: VERBOSE is a reserved word
        created_at double precision NOT NULL,
        updated_at double precision NOT NULL,
        lrs text,
        rev bigint NOT NULL,
        created_rev bigint NOT NULL
    )""",
    """CREATE TABLE lrctl_events (
        job_id text NOT NULL REFERENCES lrctl_jobs (job_id),
        version bigint NOT NULL,
        op text NOT NULL,
        value double precision,
        schedule text,
        param_group integer,
        effective_step bigint,
        actor text NOT NULL,
        reason text NOT NULL,
        created_at double precision NOT NULL,
        applied_at double precision,
        rev bigint NOT NULL,
        PRIMARY KEY (job_id, version)
    )""",
    "CREATE INDEX lrctl_events_rev ON lrctl_events (job_id, rev)",
)
_V2 = (
    # ReduceLROnPlateau: the consumed metrics (as SQLite's schema version 2).
    """CREATE TABLE lrctl_plateau_metrics (
        job_id text NOT NULL REFERENCES lrctl_jobs (job_id),
        step bigint NOT NULL,
        value double precision,
        schedule_version bigint NOT NULL,
        rev bigint NOT NULL,
        PRIMARY KEY (job_id, step)
    )""",
)

_V3 = (
    # Reports: the agreed version every rank applied, and the run's world size.
    "ALTER TABLE lrctl_jobs ADD COLUMN applied_version bigint NOT NULL DEFAULT 0",
    "ALTER TABLE lrctl_jobs ADD COLUMN world_size bigint NOT NULL DEFAULT 0",
)

_V4 = (
    # Attach epochs (as SQLite's schema version 4): handed out under the job's row lock.
    "ALTER TABLE lrctl_jobs ADD COLUMN epoch bigint NOT NULL DEFAULT 0",
)

#: ``MIGRATIONS[i]`` upgrades a database at schema version ``i`` to ``i + 1``.
MIGRATIONS: tuple[tuple[str, ...], ...] = (_V1, _V2, _V3, _V4)
SCHEMA_VERSION = len(MIGRATIONS)

# The rows are the SQLite store's (controller.store's converters), plus the bookkeeping.
# Quoted: ``verbose`` is a reserved word in PostgreSQL.
JOB_COLUMNS_SQL = ", ".join(f'"{c}"' for c in JOB_COLUMNS)
EVENT_COLUMNS_SQL = ", ".join(f'"{c}"' for c in EVENT_COLUMNS)
_N = len(JOB_COLUMNS)
SELECT_JOB = f"SELECT {JOB_COLUMNS_SQL}, rev, created_rev FROM lrctl_jobs WHERE job_id = $1"
UPSERT_JOB = f"""
    INSERT INTO lrctl_jobs AS j ({JOB_COLUMNS_SQL}, rev, created_rev)
    VALUES ({", ".join(f"${i + 1}" for i in range(_N))}, 1, 1)
    ON CONFLICT (job_id) DO UPDATE SET
        {", ".join(f'"{c}" = excluded."{c}"' for c in JOB_COLUMNS[1:])},
        rev = j.rev + 1,
        created_rev = CASE WHEN excluded.created_version <> j.created_version
                           THEN j.rev + 1 ELSE j.created_rev END
    WHERE j.rev = ${_N + 1}
    RETURNING rev"""
INSERT_EVENT = (
    f"INSERT INTO lrctl_events (job_id, {EVENT_COLUMNS_SQL}, rev) VALUES "
    f"({', '.join(f'${i + 1}' for i in range(len(EVENT_COLUMNS) + 2))})"
)


async def migrate(conn: Any, target: int = SCHEMA_VERSION) -> int:
    """Upgrade the schema behind ``conn`` to ``target`` in one transaction.

    Safe when several replicas call it at the same moment: the transaction first takes a
    database-wide advisory lock, so one migrates and the others then find it done.

    Returns:
        The schema version found before upgrading.

    Raises:
        StoreError: the database is newer than this code.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS lrctl_schema (version integer NOT NULL)")
        found = int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM lrctl_schema"))
        check_schema_version(found, SCHEMA_VERSION)
        if found >= target:
            return found
        for statements in MIGRATIONS[found:target]:
            for statement in statements:
                await conn.execute(statement)
        await conn.execute("DELETE FROM lrctl_schema")
        await conn.execute("INSERT INTO lrctl_schema (version) VALUES ($1)", target)
    return found
