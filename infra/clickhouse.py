"""ClickHouse connections and the analytics schema.

``connect(settings)`` returns a clickhouse-connect client for ``settings.resolved_clickhouse_url``:
an HTTP ClickHouse server in production, embedded chdb (``chdb:///path``) by default. chdb runs one
engine per process and per path: clients opened in the same process on the same path share it (so the
sink, ``ctloop sql`` and ``ctloop report`` can run side by side in the demo process), while a second
process on the same path gets :class:`ClickHouseLocked` with an explanation.

``apply_schema(client, database)`` runs ``infra/sql/*.sql`` in name order with ``{db}`` replaced:
tables are ``CREATE ... IF NOT EXISTS``, views ``CREATE OR REPLACE``, so it is idempotent.
"""
from __future__ import annotations

import re
from pathlib import Path

SQL_DIR = Path(__file__).resolve().parent / "sql"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ClickHouseError(RuntimeError):
    """ClickHouse cannot be reached or used as configured."""


class ClickHouseLocked(ClickHouseError):
    """The embedded chdb database directory is in use by another process."""


def check_database_name(name: str) -> str:
    """``name`` when it is a valid ClickHouse database name (letters, digits and _, not starting
    with a digit); raises ValueError naming CTLOOP_CLICKHOUSE_DATABASE otherwise."""
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise ValueError(f"CTLOOP_CLICKHOUSE_DATABASE={name!r} is not a valid database name "
                         "(letters, digits and _ only, not starting with a digit)")
    return name


def is_chdb(url: str) -> bool:
    """Whether ``url`` names the embedded chdb (``chdb:`` scheme) rather than a server."""
    return url.startswith("chdb:")


def chdb_path(url: str) -> str | None:
    """The directory of a ``chdb:///abs/path`` URL (None for in-memory chdb or a server URL)."""
    if not is_chdb(url):
        return None
    rest = url[len("chdb:"):].lstrip("/")
    if not rest or rest.split("/")[0] in ("memory", ":memory:"):
        return None
    return "/" + rest.split("?")[0]


def connect(settings, *, database: str | None = None, apply: bool = True):
    """A clickhouse-connect client for the configured ClickHouse, with the analytics schema applied
    (``apply``) and ``settings.clickhouse_database`` as its default database."""
    import clickhouse_connect
    from clickhouse_connect.driver.exceptions import ClickHouseError as DriverError

    db = check_database_name(database or settings.clickhouse_database)
    url = settings.resolved_clickhouse_url
    path = chdb_path(url)
    if path is not None:
        Path(path).mkdir(parents=True, exist_ok=True)
    try:
        client = clickhouse_connect.get_client(dsn=url)
    except DriverError as exc:
        text = str(exc)
        if "Cannot lock file" in text or "Another server instance" in text or (path and _locked_elsewhere(path)):
            raise ClickHouseLocked(
                f"the embedded ClickHouse (chdb) database at {path} is in use by another process. chdb allows one "
                "process per directory: stop that process, run this command inside it (the demo does), use another "
                "CTLOOP_DATA_DIR, or point CTLOOP_CLICKHOUSE_URL at a ClickHouse server") from None
        if "different path" in text:
            raise ClickHouseError(
                f"this process already has a chdb engine open on another path; chdb allows one path per process "
                f"({text})") from None
        raise ClickHouseError(f"cannot connect to ClickHouse at {_redact(url)}: {text}") from None
    except OSError as exc:
        raise ClickHouseError(f"cannot connect to ClickHouse at {_redact(url)}: {exc}") from None
    if apply:
        apply_schema(client, db)
    else:
        client.command(f"CREATE DATABASE IF NOT EXISTS {db}")
    client.database = db
    if is_chdb(url):
        client.command(f"USE {db}")
    return client


def schema_statements(database: str) -> list[str]:
    """The DDL statements of infra/sql/*.sql for ``database``, in order."""
    check_database_name(database)
    statements = []
    for path in sorted(SQL_DIR.glob("*.sql")):
        text = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("--"))
        for stmt in text.split(";"):
            stmt = stmt.strip()
            if stmt:
                statements.append(stmt.replace("{db}", database))
    return statements


def apply_schema(client, database: str) -> None:
    """Create the database, tables and views if missing (idempotent)."""
    for stmt in schema_statements(database):
        client.command(stmt)


def table_columns(client, database: str, table: str) -> list[str]:
    """Columns a writer fills: every column except those with a DEFAULT expression."""
    rows = client.query(
        "SELECT name FROM system.columns WHERE database = {db:String} AND table = {t:String} "
        "AND default_kind = '' ORDER BY position", parameters={"db": database, "t": table}).result_rows
    if not rows:
        raise ClickHouseError(f"table {database}.{table} does not exist or has no columns")
    return [r[0] for r in rows]


def _locked_elsewhere(path: str) -> bool:
    """True when another process holds the chdb/ClickHouse lock on ``<path>/status``."""
    import errno
    import fcntl

    status = Path(path) / "status"
    if not status.exists():
        return False
    with open(status, "rb") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            return exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


def _redact(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)
