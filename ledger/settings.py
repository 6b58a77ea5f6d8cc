"""Settings, read from the environment once, by the command or app factory that needs them."""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path

import msgspec

from ledger.errors import ConfigError

__all__ = ["Settings", "decode_secret", "load_settings", "log_settings", "parse_duration"]

DEFAULT_FLEX_API_BASE_URL = "https://api.withflex.com/v1"


# Standard Webhooks' schedule: at once, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
DEFAULT_DELIVERY_SCHEDULE: tuple[float, ...] = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    database_url: str | None = None
    data_dir: Path = Path(".ledger")
    webhook_secrets: tuple[bytes, ...] = ()
    webhook_tolerance: int = 300
    webhook_max_bytes: int = 1_048_576
    flex_api_key: str | None = None
    flex_test_api_key: str | None = None  # test-mode sessions; unset: flex_api_key serves both modes
    restock_on_refund: bool = False  # LEDGER_RESTOCK_ON_REFUND=full
    fulfill_renewals: bool = True  # LEDGER_FULFILL_RENEWALS: each paid renewal invoice fulfilled like a checkout
    flex_api_base_url: str = DEFAULT_FLEX_API_BASE_URL
    api_tokens: tuple[str, ...] = ()
    flex_api_timeout: float = 10.0
    fulfillment_concurrency: int = 32
    fulfillment_max_attempts: int = 8
    fulfillment_retry_base: float = 2.0
    # Connection budgets (bulkheads): reads can never take the connections ingest needs.
    ingest_pool_size: int = 4
    read_pool_size: int = 10
    worker_pool_size: int = 4
    # How long a runner lets commits gather after a wake-up before reading a batch.
    runner_batch_delay: float = 0.25
    # The HTTP server's guard against slow or idle clients.
    http_header_timeout: float = 10.0
    http_body_timeout: float = 30.0
    http_max_connections: int = 2048
    http_max_header_bytes: int = 65_536
    http_max_headers: int = 100
    http_keepalive_timeout: int = 5
    # Reconcile with Flex's API: every interval seconds (0: never automatically), over the window.
    reconcile_interval: float = 900.0
    reconcile_window: timedelta = timedelta(hours=72)
    reconcile_max_pages: int = 300  # per kind and key in one run: the window holds no more than this
    # Every Flex read: an overall deadline (retries and Retry-After waits included) and a size cap.
    flex_api_deadline: float = 30.0
    flex_api_max_bytes: int = 8 * 1024 * 1024
    # Failed credentials (wrong bearer tokens, failed console sign-ins) per client address.
    auth_max_failures: int = 20
    auth_failure_window: float = 300.0
    console_secure_cookie: bool = False
    # serve/work (and commands that write) apply pending migration steps at start.
    auto_migrate: bool = True
    # `ledger work` serves /metrics, /healthz and /readyz on this port (0: none).
    metrics_port: int = 9464
    # Outbound delivery to the merchant's destinations (reactors/delivery.py).
    delivery_schedule: tuple[float, ...] = DEFAULT_DELIVERY_SCHEDULE  # seconds before each attempt
    delivery_timeout: float = 15.0
    delivery_concurrency: int = 8  # attempts in flight at once, per destination
    delivery_allow_private: bool = False  # loopback, link-local and private addresses


def parse_schedule(text: str) -> tuple[float, ...]:
    """``0,5s,5m,30m`` as seconds before each attempt; ``ValueError`` with a reason otherwise."""
    delays = []
    for part in _split(text):
        delays.append(0.0 if part.strip() in ("0", "0s") else parse_duration(part).total_seconds())
    if not delays:
        raise ValueError("needs at least one delay (the first attempt's, usually 0)")
    return tuple(delays)


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a Flex signing secret: the base64 after the first ``_``.

    Flex's docs show both ``whsec_…`` and ``fwhsec_…``; a bare base64 secret is accepted too.
    Missing padding is tolerated, anything else that is not base64 is an error.
    """
    body = secret.split("_", 1)[1] if "_" in secret else secret
    body = body.strip()
    if not body:
        raise ConfigError("a webhook secret is empty after its prefix")
    padded = body + "=" * (-len(body) % 4)
    try:
        key = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"webhook secret {_masked(secret)} is not valid base64 after its prefix") from None
    if not key:
        raise ConfigError(f"webhook secret {_masked(secret)} decodes to an empty key")
    return key


# An HMAC-SHA256 key shorter than this is guessable; Svix's and Flex's secrets decode to 24-32 bytes.
MIN_KEY_BYTES = 16


def _webhook_keys(entries: list[str]) -> tuple[bytes, ...]:
    """Each entry of ``LEDGER_WEBHOOK_SECRETS`` as its key; an entry that is no key is named by its
    position (never printed)."""
    keys = []
    for number, entry in enumerate(entries, start=1):
        try:
            key = decode_secret(entry)
        except ConfigError as exc:
            raise ConfigError(f"LEDGER_WEBHOOK_SECRETS entry {number} of {len(entries)}: {exc.message}") from None
        if len(key) < MIN_KEY_BYTES:
            raise ConfigError(
                f"LEDGER_WEBHOOK_SECRETS entry {number} of {len(entries)} decodes to {len(key)} bytes, fewer than "
                f"{MIN_KEY_BYTES}: it is not a signing secret (copy it from the Flex endpoint, whsec_…)"
            )
        keys.append(key)
    return tuple(keys)


def _masked(secret: str) -> str:
    prefix = secret.split("_", 1)[0] + "_" if "_" in secret else ""
    return f"'{prefix}…'"


def _int(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{name} must be a positive number of seconds, got {raw!r}")
    return value


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> timedelta:
    """``72h``, ``7d``, ``90m``, ``30s`` or plain seconds; ``ValueError`` with a reason otherwise."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration (like 72h, 7d, 90m or a number of seconds)")
    seconds = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not 0 < seconds <= 3650 * 86400:
        raise ValueError(f"{text!r} must be above 0 and at most ten years")
    return timedelta(seconds=seconds)


def _duration(env: Mapping[str, str], name: str, default: timedelta) -> timedelta:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return parse_duration(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _seconds_or_off(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if raw in ("0", "0.0"):
        return 0.0
    return _float(env, name, default)


def _split(raw: str) -> list[str]:
    return [part for part in re.split(r"[,\s]+", raw.strip()) if part]


_BOOLEAN = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False, "on": True, "off": False}


def _choice(env: Mapping[str, str], name: str, choices: dict[str, bool], default: str) -> bool:
    raw = env.get(name, "").strip().lower() or default
    if raw not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {raw!r}")
    return choices[raw]


def load_settings(env: Mapping[str, str] | None = None, *, require_secrets: bool = False) -> Settings:
    """Reads and validates every setting. Raises ``ConfigError`` with a one-line reason."""
    env = os.environ if env is None else env
    secrets = _webhook_keys(_split(env.get("LEDGER_WEBHOOK_SECRETS", "")))
    if require_secrets and not secrets:
        raise ConfigError("LEDGER_WEBHOOK_SECRETS is not set: give the endpoint's signing secret (whsec_… or fwhsec_…)")
    return Settings(
        database_url=env.get("LEDGER_DATABASE_URL", "").strip() or None,
        data_dir=Path(env.get("LEDGER_DATA_DIR", "").strip() or ".ledger"),
        webhook_secrets=secrets,
        webhook_tolerance=_int(env, "LEDGER_WEBHOOK_TOLERANCE", 300, 0),
        webhook_max_bytes=_int(env, "LEDGER_WEBHOOK_MAX_BYTES", 1_048_576, 1),
        flex_api_key=env.get("FLEX_API_KEY", "").strip() or None,
        flex_test_api_key=env.get("FLEX_TEST_API_KEY", "").strip() or None,
        restock_on_refund=_choice(env, "LEDGER_RESTOCK_ON_REFUND", {"off": False, "full": True}, "off"),
        fulfill_renewals=_choice(env, "LEDGER_FULFILL_RENEWALS", {"off": False, "on": True}, "on"),
        flex_api_base_url=(env.get("FLEX_API_BASE_URL", "").strip() or DEFAULT_FLEX_API_BASE_URL).rstrip("/"),
        api_tokens=tuple(t for t in (p.strip() for p in env.get("LEDGER_API_TOKENS", "").split(",")) if t),
        flex_api_timeout=_float(env, "FLEX_API_TIMEOUT", 10.0),
        fulfillment_concurrency=_int(env, "LEDGER_FULFILLMENT_CONCURRENCY", 32, 1),
        fulfillment_max_attempts=_int(env, "LEDGER_FULFILLMENT_MAX_ATTEMPTS", 8, 1),
        fulfillment_retry_base=_float(env, "LEDGER_FULFILLMENT_RETRY_BASE", 2.0),
        ingest_pool_size=_int(env, "LEDGER_INGEST_POOL_SIZE", 4, 1),
        read_pool_size=_int(env, "LEDGER_READ_POOL_SIZE", 10, 1),
        worker_pool_size=_int(env, "LEDGER_WORKER_POOL_SIZE", 4, 1),
        runner_batch_delay=_float(env, "LEDGER_RUNNER_BATCH_DELAY", 0.25),
        http_header_timeout=_float(env, "LEDGER_HTTP_HEADER_TIMEOUT", 10.0),
        http_body_timeout=_float(env, "LEDGER_HTTP_BODY_TIMEOUT", 30.0),
        http_max_connections=_int(env, "LEDGER_HTTP_MAX_CONNECTIONS", 2048, 1),
        http_max_header_bytes=_int(env, "LEDGER_HTTP_MAX_HEADER_BYTES", 65_536, 1024),
        http_max_headers=_int(env, "LEDGER_HTTP_MAX_HEADERS", 100, 10),
        http_keepalive_timeout=_int(env, "LEDGER_HTTP_KEEPALIVE_TIMEOUT", 5, 1),
        reconcile_interval=_seconds_or_off(env, "LEDGER_RECONCILE_INTERVAL", 900.0),
        reconcile_window=_duration(env, "LEDGER_RECONCILE_WINDOW", timedelta(hours=72)),
        reconcile_max_pages=_int(env, "LEDGER_RECONCILE_MAX_PAGES", 300, 1),
        flex_api_deadline=_float(env, "FLEX_API_DEADLINE", 30.0),
        flex_api_max_bytes=_int(env, "FLEX_API_MAX_BYTES", 8 * 1024 * 1024, 1024),
        auth_max_failures=_int(env, "LEDGER_AUTH_MAX_FAILURES", 20, 0),
        auth_failure_window=_float(env, "LEDGER_AUTH_FAILURE_WINDOW", 300.0),
        auto_migrate=_choice(env, "LEDGER_AUTO_MIGRATE", _BOOLEAN, "true"),
        metrics_port=_int(env, "LEDGER_METRICS_PORT", 9464, 0),
        console_secure_cookie=_choice(env, "LEDGER_CONSOLE_SECURE_COOKIE", _BOOLEAN, "false"),
        delivery_schedule=_schedule(env, "LEDGER_DELIVERY_SCHEDULE"),
        delivery_timeout=_float(env, "LEDGER_DELIVERY_TIMEOUT", 15.0),
        delivery_concurrency=_int(env, "LEDGER_DELIVERY_CONCURRENCY", 8, 1),
        delivery_allow_private=_choice(env, "LEDGER_DELIVERY_ALLOW_PRIVATE", _BOOLEAN, "false"),
    )


def _schedule(env: Mapping[str, str], name: str) -> tuple[float, ...]:
    raw = env.get(name, "").strip()
    if not raw:
        return DEFAULT_DELIVERY_SCHEDULE
    try:
        return parse_schedule(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


LOG_LEVELS = ("debug", "info", "warning", "error")


def log_settings(
    env: Mapping[str, str] | None = None, *, level: str | None = None, log_format: str | None = None
) -> tuple[str, bool | None]:
    """``LEDGER_LOG_LEVEL`` and ``LEDGER_LOG_FORMAT`` (a command's ``--log-level``/``--log-format``
    win over them): the level, and whether lines are JSON (``None``: JSON off a terminal, text on
    one). Raises ``ConfigError`` naming a bad value."""
    env = os.environ if env is None else env
    chosen_level = (level or env.get("LEDGER_LOG_LEVEL", "").strip() or "info").lower()
    if chosen_level not in LOG_LEVELS:
        raise ConfigError(f"LEDGER_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, not {chosen_level!r}")
    chosen_format = (log_format or env.get("LEDGER_LOG_FORMAT", "").strip()).lower()
    if chosen_format not in ("", "json", "text"):
        raise ConfigError(f"LEDGER_LOG_FORMAT must be json or text, not {chosen_format!r}")
    return chosen_level, {"json": True, "text": False}.get(chosen_format)
