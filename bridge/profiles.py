"""Customer profiles (docs/records.md): contacts with phone numbers and attributes.

A contact is ``{id, name, phones: [...], attributes: {...}, updatedAt, version}``. ``version``
starts at 1 and grows by one with every change, the delete included; a write may name the version
it read (``If-Match``) and is refused with ``VersionConflict`` if the contact moved on since.

Every change also takes the next number of one change sequence, kept on the contact's row, so
``changes(since)`` lists each contact changed after a cursor once, in the state it is in now, and
deleted contacts as tombstones ``{id, deleted: true, version, updatedAt}``. A CRM syncs both ways
with it (docs/records.md). The sequence is a counter row updated inside the writing transaction:
its row lock orders writers by commit, so a reader never sees change 6 before change 5 commits
(a PostgreSQL SEQUENCE would not guarantee that).

Phone numbers match on their digits (``+1 (415) 555-0100`` is ``14155550100``), then, for ten
digits or more, on the last ten, so ``4155550100`` still finds ``+1 415 555 0100``.
"""
from __future__ import annotations

import json
import re
import uuid
from typing import Any, Mapping

from .times import iso_now
from .store import Store, Tx, register_schema

TAIL = 10  # digits compared when a full match fails: a national number without its country code
MAX_PHONES = 20
MAX_NAME = 200
MAX_ATTRIBUTES_BYTES = 32 * 1024
_PHONE_CHARS = re.compile(r"\+?[0-9 ().\-/]+")
_FIELDS = ("name", "phones", "attributes")
_READ_ONLY = ("id", "version", "updatedAt")

# The same statements on both databases: TEXT and integers only, so rows read the same.
_DDL = [
    """CREATE TABLE IF NOT EXISTS contacts (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, phones TEXT NOT NULL, attributes TEXT NOT NULL,
        updated_at TEXT NOT NULL, version INTEGER NOT NULL, change_seq BIGINT NOT NULL UNIQUE,
        deleted INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS contact_phones (
        contact_id TEXT NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
        digits TEXT NOT NULL, tail TEXT NOT NULL, PRIMARY KEY (contact_id, digits))""",
    "CREATE INDEX IF NOT EXISTS contact_phones_digits ON contact_phones (digits)",
    "CREATE INDEX IF NOT EXISTS contact_phones_tail ON contact_phones (tail)",
    "CREATE TABLE IF NOT EXISTS contact_counter (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
    "INSERT INTO contact_counter (name, value) VALUES ('changes', 0) ON CONFLICT DO NOTHING",
]
register_schema("profiles", _DDL, _DDL)


class FieldError(ValueError):
    """A request field or parameter that cannot be used; ``field`` names it (HTTP 400)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class ContactNotFound(LookupError):
    """No live contact with this id (HTTP 404)."""


class VersionConflict(Exception):
    """The contact is not at the version the writer read (HTTP 409); ``current`` is where it is."""

    def __init__(self, contact_id: str, expected: int, current: int) -> None:
        super().__init__(f"contact {contact_id} is at version {current}, not {expected}: read it again")
        self.current = current


def digits_of(number: str) -> str:
    """The digits of a phone number: ``+1 (415) 555-0100`` -> ``14155550100``."""
    return "".join(ch for ch in number if ch.isascii() and ch.isdigit())


def tail_of(digits: str) -> str:
    """The last ten digits (all of them when fewer): what a number matches on without its country code."""
    return digits[-TAIL:]


def number_param(value: str, field: str = "number") -> str:
    """A searched number's digits, or FieldError if it has none (a withheld caller ID is no search)."""
    digits = digits_of(value)
    if not digits:
        raise FieldError(field, f"expected a phone number with digits, got {value!r}")
    return digits


def _validated(body: Any, *, partial: bool) -> dict[str, Any]:
    """The writable fields of a request body; FieldError names the first bad one."""
    if not isinstance(body, Mapping):
        raise FieldError("body", 'expected a JSON object {"name", "phones", "attributes"}')
    unknown = sorted(set(body) - set(_FIELDS) - set(_READ_ONLY))
    if unknown:
        raise FieldError(unknown[0], f"unknown field; contacts have {', '.join(_FIELDS)}")
    out: dict[str, Any] = {}
    if "name" in body or not partial:
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise FieldError("name", "required, a non-empty string")
        if len(name) > MAX_NAME:
            raise FieldError("name", f"at most {MAX_NAME} characters")
        out["name"] = name.strip()
    if "phones" in body or not partial:
        phones = body.get("phones", [])
        if not isinstance(phones, list) or len(phones) > MAX_PHONES:
            raise FieldError("phones", f"expected a list of at most {MAX_PHONES} phone numbers")
        for index, phone in enumerate(phones):
            if not isinstance(phone, str) or not _PHONE_CHARS.fullmatch(phone.strip()) or len(phone) > 40 \
                    or len(digits_of(phone)) < 2:
                raise FieldError(f"phones[{index}]", f"expected a number such as '+1 415 555 0100', got {phone!r}")
        out["phones"] = [p.strip() for p in phones]
    if "attributes" in body or not partial:
        attributes = body.get("attributes", {})
        if not isinstance(attributes, Mapping):
            raise FieldError("attributes", "expected an object of names to JSON values")
        if len(json.dumps(attributes)) > MAX_ATTRIBUTES_BYTES:
            raise FieldError("attributes", f"at most {MAX_ATTRIBUTES_BYTES} bytes as JSON")
        out["attributes"] = dict(attributes)
    return out


def _contact(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "name": row["name"], "phones": json.loads(row["phones"]),
            "attributes": json.loads(row["attributes"]), "updatedAt": row["updated_at"], "version": row["version"]}


def _change(row: Mapping[str, Any]) -> dict[str, Any]:
    if row["deleted"]:
        item = {"id": row["id"], "deleted": True, "version": row["version"], "updatedAt": row["updated_at"]}
    else:
        item = {**_contact(row), "deleted": False}
    return {**item, "seq": str(row["change_seq"])}


class Profiles:
    """The contacts in a store: create, read, replace, patch, delete, look up, and the changes."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- reads -------------------------------------------------------------------------------

    def get(self, contact_id: str) -> dict[str, Any]:
        with self.store.transaction() as tx:
            row = self._live(tx, contact_id)
        return _contact(row)

    def find(self, number: str, limit: int = 20) -> list[dict[str, Any]]:
        """Contacts with this number, most recently updated first: a full match, else the last ten digits."""
        digits = number_param(number)
        if not 1 <= limit <= 100:
            raise FieldError("limit", "expected 1 to 100")
        sql = ("SELECT c.* FROM contacts c WHERE c.deleted = 0 AND c.id IN "
               "(SELECT contact_id FROM contact_phones WHERE {} = ?) ORDER BY c.change_seq DESC LIMIT ?")
        with self.store.transaction() as tx:
            rows = tx.query(sql.format("digits"), (digits, limit))
            if not rows and len(digits) >= TAIL:
                rows = tx.query(sql.format("tail"), (tail_of(digits), limit))
        return [_contact(row) for row in rows]

    def lookup(self, number: str) -> dict[str, Any] | None:
        """The contact for a caller's number, or None (also for an empty or withheld number)."""
        if not digits_of(number or ""):
            return None
        found = self.find(number, limit=1)
        return found[0] if found else None

    def changes(self, since: str | None = None, limit: int = 100) -> tuple[list[dict[str, Any]], str, bool]:
        """Contacts changed after the cursor ``since``, in change order: (items, next cursor, more)."""
        cursor = 0
        if since not in (None, ""):
            if not (str(since).isascii() and str(since).isdigit()) or len(str(since)) > 18:
                raise FieldError("since", f"expected a cursor from a changes reply ('next'), got {since!r}")
            cursor = int(str(since))
        if not 1 <= limit <= 1000:
            raise FieldError("limit", "expected 1 to 1000")
        with self.store.transaction() as tx:
            rows = tx.query("SELECT * FROM contacts WHERE change_seq > ? ORDER BY change_seq LIMIT ?",
                            (cursor, limit + 1))
        more = len(rows) > limit
        rows = rows[:limit]
        return [_change(row) for row in rows], str(rows[-1]["change_seq"] if rows else cursor), more

    # -- writes ------------------------------------------------------------------------------

    def create(self, body: Any) -> dict[str, Any]:
        fields = _validated(body, partial=False)
        contact_id = str(uuid.uuid4())
        with self.store.transaction() as tx:
            seq, now = self._next_seq(tx), iso_now()
            tx.execute("INSERT INTO contacts (id, name, phones, attributes, updated_at, version, change_seq, deleted) "
                       "VALUES (?, ?, ?, ?, ?, 1, ?, 0)",
                       (contact_id, fields["name"], json.dumps(fields["phones"]), json.dumps(fields["attributes"]),
                        now, seq))
            self._index_phones(tx, contact_id, fields["phones"])
            return _contact(self._live(tx, contact_id))

    def replace(self, contact_id: str, body: Any, if_match: int | None = None) -> dict[str, Any]:
        """PUT: every field as given (phones and attributes default to empty)."""
        fields = _validated(body, partial=False)
        self._same_id(contact_id, body)
        return self._write(contact_id, fields, if_match, merge=False)

    def patch(self, contact_id: str, body: Any, if_match: int | None = None) -> dict[str, Any]:
        """PATCH: the fields given; ``attributes`` merge by name (a null value removes one)."""
        fields = _validated(body, partial=True)
        self._same_id(contact_id, body)
        return self._write(contact_id, fields, if_match, merge=True)

    def delete(self, contact_id: str, if_match: int | None = None) -> dict[str, Any]:
        """Leave a tombstone for the changes feed; the phones no longer match."""
        with self.store.transaction() as tx:
            row = self._live(tx, contact_id)
            self._check_version(contact_id, row, if_match)
            seq, now = self._next_seq(tx), iso_now()
            tx.execute("UPDATE contacts SET name = '', phones = '[]', attributes = '{}', updated_at = ?, "
                       "version = version + 1, change_seq = ?, deleted = 1 WHERE id = ?", (now, seq, contact_id))
            tx.execute("DELETE FROM contact_phones WHERE contact_id = ?", (contact_id,))
            return {"id": contact_id, "deleted": True, "version": row["version"] + 1, "updatedAt": now}

    def _write(self, contact_id: str, fields: dict[str, Any], if_match: int | None, merge: bool) -> dict[str, Any]:
        with self.store.transaction() as tx:
            row = self._live(tx, contact_id)
            self._check_version(contact_id, row, if_match)
            current = _contact(row)
            if merge and "attributes" in fields:
                merged = {**current["attributes"], **fields["attributes"]}
                fields["attributes"] = {k: v for k, v in merged.items() if v is not None}
            new = {**current, **fields}
            seq, now = self._next_seq(tx), iso_now()
            tx.execute("UPDATE contacts SET name = ?, phones = ?, attributes = ?, updated_at = ?, "
                       "version = version + 1, change_seq = ? WHERE id = ?",
                       (new["name"], json.dumps(new["phones"]), json.dumps(new["attributes"]), now, seq, contact_id))
            if "phones" in fields:
                tx.execute("DELETE FROM contact_phones WHERE contact_id = ?", (contact_id,))
                self._index_phones(tx, contact_id, new["phones"])
            return _contact(self._live(tx, contact_id))

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _live(tx: Tx, contact_id: str) -> dict[str, Any]:
        row = tx.one("SELECT * FROM contacts WHERE id = ? AND deleted = 0", (contact_id,))
        if row is None:
            raise ContactNotFound(f"no contact {contact_id!r}")
        return row

    @staticmethod
    def _same_id(contact_id: str, body: Mapping[str, Any]) -> None:
        if "id" in body and body["id"] != contact_id:
            raise FieldError("id", "does not match the contact in the URL")

    @staticmethod
    def _check_version(contact_id: str, row: Mapping[str, Any], if_match: int | None) -> None:
        if if_match is not None and if_match != row["version"]:
            raise VersionConflict(contact_id, if_match, row["version"])

    @staticmethod
    def _next_seq(tx: Tx) -> int:
        row = tx.one("UPDATE contact_counter SET value = value + 1 WHERE name = 'changes' RETURNING value")
        assert row is not None, "contact_counter is seeded by the schema"
        return int(row["value"])

    @staticmethod
    def _index_phones(tx: Tx, contact_id: str, phones: list[str]) -> None:
        for digits in dict.fromkeys(digits_of(p) for p in phones):
            tx.execute("INSERT INTO contact_phones (contact_id, digits, tail) VALUES (?, ?, ?)",
                       (contact_id, digits, tail_of(digits)))
