"""The adapter registry: the one durable source of truth about every adapter the gateway knows.

SQLite in WAL mode with synchronous=FULL: every committed change survives a crash of the gateway or the machine,
and a change is either wholly there or not at all. Engine state is rebuilt from this table (never the reverse):
after an engine or gateway restart, adapters whose state is `live` (or was `loading`) are loaded again.

States: validated (registered, not loaded) -> loading -> live -> draining (being removed) ; failed (with reason).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATES = ("validated", "loading", "live", "draining", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS adapters (
    name TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    base_model TEXT NOT NULL,
    base_fingerprint TEXT,
    path TEXT NOT NULL,
    digest TEXT NOT NULL,
    rank INTEGER NOT NULL,
    alpha REAL NOT NULL,
    target_modules TEXT NOT NULL,
    pinned INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    reason TEXT,
    replicas TEXT NOT NULL DEFAULT '[]',
    extra TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
)
"""


@dataclass
class AdapterRecord:
    name: str
    version: str
    base_model: str
    path: str
    digest: str
    rank: int
    alpha: float
    target_modules: list[str]
    base_fingerprint: str | None = None
    pinned: bool = False
    state: str = "validated"
    reason: str | None = None
    replicas: list[str] = field(default_factory=list)
    extra: dict[str, object] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)

    def public(self) -> dict[str, object]:
        """The record as the admin API shows it."""
        return {"object": "adapter", **asdict(self)}


class AdapterRegistry:
    """Thread-safe CRUD over the adapters table; each method is one transaction."""

    def __init__(self, db_path: str | Path) -> None:
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, record: AdapterRecord) -> None:
        """Insert a new adapter; raises KeyError if the name exists."""
        row = self._to_row(record)
        with self._lock:
            try:
                self._db.execute(
                    f"INSERT INTO adapters ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", tuple(row.values())
                )
            except sqlite3.IntegrityError:
                raise KeyError(record.name) from None

    def get(self, name: str) -> AdapterRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM adapters WHERE name = ?", (name,)).fetchone()
        return self._from_row(row) if row else None

    def list(self, state: str | None = None) -> list[AdapterRecord]:
        query, args = "SELECT * FROM adapters ORDER BY name", ()
        if state is not None:
            query, args = "SELECT * FROM adapters WHERE state = ? ORDER BY name", (state,)
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        return [self._from_row(r) for r in rows]

    def set_state(self, name: str, state: str, reason: str | None = None, replicas: list[str] | None = None) -> None:
        assert state in STATES, state
        sets, args = ["state = ?", "reason = ?", "updated_at = ?"], [state, reason, time.time()]
        if replicas is not None:
            sets.append("replicas = ?")
            args.append(json.dumps(replicas))
        with self._lock:
            self._db.execute(f"UPDATE adapters SET {', '.join(sets)} WHERE name = ?", (*args, name))

    def update_extra(self, name: str, **values: object) -> None:
        record = self.get(name)
        if record is None:
            return
        extra = {**record.extra, **values}
        with self._lock:
            self._db.execute("UPDATE adapters SET extra = ?, updated_at = ? WHERE name = ?",
                             (json.dumps(extra), time.time(), name))  # fmt: skip

    def delete(self, name: str) -> bool:
        with self._lock:
            return self._db.execute("DELETE FROM adapters WHERE name = ?", (name,)).rowcount > 0

    @staticmethod
    def _to_row(record: AdapterRecord) -> dict[str, object]:
        row = asdict(record)
        row["target_modules"] = json.dumps(record.target_modules)
        row["replicas"] = json.dumps(record.replicas)
        row["extra"] = json.dumps(record.extra)
        row["pinned"] = int(record.pinned)
        return row

    @staticmethod
    def _from_row(row: sqlite3.Row) -> AdapterRecord:
        data = dict(row)
        data["target_modules"] = json.loads(data["target_modules"])
        data["replicas"] = json.loads(data["replicas"])
        data["extra"] = json.loads(data["extra"])
        data["pinned"] = bool(data["pinned"])
        return AdapterRecord(**data)
