"""Every error the ledger raises on purpose.

    LedgerError
    ├── ConfigError              a setting is missing or invalid (commands exit non-zero)
    │   ├── SchemaTooNew         the database was upgraded by a newer release: refused, unchanged
    │   └── MigrationBusy        a migration step could not take its locks in time (ledger.migrate)
    ├── SignatureError           a webhook is not verifiably from Flex        -> 401
    ├── PayloadTooLarge          a webhook body is over the limit             -> 413
    ├── UnusableEvent            verified, but not an event we can log        -> 422
    ├── DatabaseError            the database failed a statement: a bug, or a schema it does not have -> 500
    │   ├── DatabaseUnavailable  the database is down, too slow or overloaded -> 503
    │   └── DataRefused          one row's data refused: an id no index holds, a value no column takes
    ├── FlexUnavailable          Flex's API cannot be read now (sync)         -> 503
    ├── NotAuthenticated         a read-API call without a valid token        -> 401
    ├── TooManyFailures          too many failed credentials from one address -> 429
    ├── NotFound                 no such resource                             -> 404
    │   └── SessionUnknown       Flex knows no such checkout session (reactors.reconcile)
    └── InvalidRequest           bad query parameters                         -> 400

The HTTP mapping lives in one place: ``api/errors.py``. Driver exceptions are translated
into these in one place too: ``ledger.db.translate_errors`` (which ``ledger.db.connection`` and
``ledger.db.connect`` apply), so nothing above ``ledger/`` catches a driver's exception.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataRefused",
    "DatabaseError",
    "DatabaseUnavailable",
    "FlexUnavailable",
    "InvalidRequest",
    "LedgerError",
    "NotAuthenticated",
    "NotFound",
    "PayloadTooLarge",
    "SchemaTooNew",
    "SignatureError",
    "TooManyFailures",
    "UnusableEvent",
]


class LedgerError(Exception):
    """Base of every error the ledger raises on purpose."""

    code: str = "ledger_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(LedgerError):
    code = "config_error"


class SchemaTooNew(ConfigError):
    """The database was upgraded by a newer release than this one: refuse it, change nothing."""

    code = "schema_too_new"


class SignatureError(LedgerError):
    """The delivery failed verification. ``code`` says why (for logs and metrics)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class PayloadTooLarge(LedgerError):
    code = "payload_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"body is larger than {limit} bytes")
        self.limit = limit


class UnusableEvent(LedgerError):
    code = "unprocessable_event"


class DatabaseError(LedgerError):
    """The database failed a statement for a reason of its own: a bug, or a table or function that is
    not there. Above ``ledger/``, "anything the database did" is this class and its subclasses."""

    code = "database_error"


class DataRefused(DatabaseError):
    """The database refused one row's data (an id too long for its index, a value its type refuses,
    a constraint): that row's fault alone, never worth retrying as it is."""

    code = "data_refused"


class DatabaseUnavailable(DatabaseError):
    """The database is down, too slow, overloaded or not set up yet: retry later."""

    code = "database_unavailable"

    def __init__(self, message: str = "the database is unavailable; retry later", retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class FlexUnavailable(LedgerError):
    """Flex's API could not be read now (unreachable, too slow, refusing): retry later."""

    code = "flex_unavailable"

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotAuthenticated(LedgerError):
    code = "unauthorized"


class TooManyFailures(LedgerError):
    """An address sent too many wrong credentials: refused, unchecked, for ``retry_after`` seconds."""

    code = "rate_limited"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotFound(LedgerError):
    code = "not_found"


class InvalidRequest(LedgerError):
    code = "invalid_request"
