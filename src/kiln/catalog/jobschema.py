"""The job queue's schema on a shared PostgreSQL catalog: procrastinate's tables and
kiln's own record of each run, both in the PostgreSQL schema ``kiln_jobs``.

They stay out of ``public``, where the catalog's Alembic-managed tables live: Alembic's
autogenerate would propose dropping any table there it does not know. Every connection
procrastinate opens gets ``search_path=kiln_jobs`` (:func:`connection_kwargs`), so its
unqualified queries and functions find its tables; kiln's own queries name the schema.
An SQLite catalog has no queue.

:func:`install` is idempotent and runs in one transaction under the advisory lock every
schema change of the catalog takes, so two ``kiln catalog upgrade`` at once install it
once.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from kiln.errors import StoreError

SCHEMA = "kiln_jobs"
LOCK_KEY = 4242424242  # the advisory lock of kiln.catalog.migrate: one schema change at once
MARKER = f"{SCHEMA}.procrastinate_jobs"  # present once procrastinate's schema is installed
RUNS = f"{SCHEMA}.kiln_job_runs"

# kiln's record of each run of a job: the run's host, KILN_HOME and output. Several runs
# of one job follow each other when a worker died or stopped while it ran one.
RUNS_DDL = f"""
CREATE TABLE IF NOT EXISTS {RUNS} (
    id bigserial PRIMARY KEY,
    job_id bigint NOT NULL REFERENCES {SCHEMA}.procrastinate_jobs(id) ON DELETE CASCADE,
    attempt integer NOT NULL,
    host text NOT NULL,
    home text NOT NULL,
    pid integer NOT NULL,
    started_at timestamp with time zone NOT NULL DEFAULT now(),
    updated_at timestamp with time zone NOT NULL DEFAULT now(),
    finished_at timestamp with time zone NULL,
    exit_code integer NULL,
    state text NOT NULL DEFAULT 'running',
    output text NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS kiln_job_runs_job_idx ON {RUNS} (job_id, id);
CREATE TABLE IF NOT EXISTS {SCHEMA}.kiln_job_schema (
    procrastinate text NOT NULL
);
"""
# procrastinate's functions and triggers name its tables unqualified: pinned to kiln_jobs,
# they find them from any session (a trigger fired by kiln's own queries, whose
# search_path is the catalog's), and no other schema on the path can stand in for them.
PIN_FUNCTIONS = f"""
DO $$
DECLARE routine record;
BEGIN
    FOR routine IN
        SELECT p.oid::regprocedure AS signature FROM pg_proc p
          JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = '{SCHEMA}'
           AND NOT coalesce(p.proconfig, '{{}}') @> ARRAY['search_path={SCHEMA}']
    LOOP
        EXECUTE format('ALTER ROUTINE %s SET search_path = {SCHEMA}', routine.signature);
    END LOOP;
END;
$$;
"""


@dataclass(frozen=True)
class JobSchema:
    """Where the job queue stands on a catalog."""

    supported: bool  # False: an SQLite catalog, which has no queue
    installed: bool
    procrastinate: str | None  # the version whose schema was installed

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA if self.supported else None,
            "supported": self.supported,
            "installed": self.installed,
            "procrastinate": self.procrastinate,
        }


def is_postgres(url: str) -> bool:
    return make_url(url).get_backend_name() == "postgresql"


def conninfo(url: str) -> str:
    """The libpq connection URI of an SQLAlchemy ``postgresql+psycopg://`` URL (its host
    may be a Unix socket folder, given as ``?host=``)."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def connection_kwargs() -> dict[str, Any]:
    """What each of procrastinate's connections is opened with: its schema first."""
    return {"options": f"-c search_path={SCHEMA}"}


def _read(connection: Any) -> JobSchema:
    found = connection.execute(text("SELECT to_regclass(:name)"), {"name": MARKER}).scalar()
    if found is None:
        return JobSchema(True, False, None)
    stamped = connection.execute(
        text("SELECT to_regclass(:name)"), {"name": f"{SCHEMA}.kiln_job_schema"}
    ).scalar()
    installed_version = None
    if stamped is not None:
        installed_version = connection.execute(
            text(f"SELECT procrastinate FROM {SCHEMA}.kiln_job_schema LIMIT 1")
        ).scalar()
    return JobSchema(True, True, installed_version)


def status(engine: Engine) -> JobSchema:
    """Whether the queue's schema is installed (changes nothing)."""
    if engine.dialect.name != "postgresql":
        return JobSchema(False, False, None)
    try:
        with engine.connect() as connection:
            return _read(connection)
    except DBAPIError as exc:
        raise StoreError(
            f"the job queue's schema could not be read: {exc.orig}",
            hint="check KILN_CATALOG_URL and that the database is up",
        ) from None


def install(engine: Engine) -> tuple[JobSchema, bool]:
    """Install procrastinate's schema and kiln's run table in ``kiln_jobs`` unless they
    are there; returns the state after and whether this call installed it."""
    if engine.dialect.name != "postgresql":
        return JobSchema(False, False, None), False
    from procrastinate.schema import SchemaManager

    try:
        with engine.begin() as connection:
            connection.execute(text(f"SELECT pg_advisory_xact_lock({LOCK_KEY})"))
            before = _read(connection)
            # scripts go whole to the driver (the simple protocol): they hold many
            # statements and '%' characters that are no placeholders
            raw = connection.connection.driver_connection
            assert raw is not None
            if before.installed:
                raw.execute(RUNS_DDL)  # kiln's tables may be newer than the queue's
                raw.execute(PIN_FUNCTIONS)
                return _read(connection), False
            raw.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
            raw.execute(f"SET LOCAL search_path = {SCHEMA}")
            raw.execute(SchemaManager.get_schema())
            raw.execute(RUNS_DDL)
            raw.execute(PIN_FUNCTIONS)
            connection.execute(
                text(f"INSERT INTO {SCHEMA}.kiln_job_schema (procrastinate) VALUES (:v)"),
                {"v": version("procrastinate")},
            )
            raw.execute("SET LOCAL search_path = DEFAULT")
            return _read(connection), True
    except DBAPIError as exc:
        raise StoreError(
            f"the job queue's schema ({SCHEMA}) could not be installed: {exc.orig}; "
            "nothing was changed",
            hint="the catalog's user needs CREATE on the database; 'kiln catalog status' "
            "shows where it stands",
        ) from None


def connector(url: str, pool: int = 2) -> Any:
    """procrastinate's asyncio connector to the catalog's queue (a worker's)."""
    from procrastinate import PsycopgConnector

    return PsycopgConnector(
        conninfo=conninfo(url), kwargs=connection_kwargs(), min_size=1, max_size=pool
    )


def sync_connector(url: str) -> Any:
    """procrastinate's blocking connector (a command that defers a job)."""
    from procrastinate import SyncPsycopgConnector

    return SyncPsycopgConnector(
        conninfo=conninfo(url), kwargs=connection_kwargs(), min_size=1, max_size=1
    )
