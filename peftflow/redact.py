"""What counts as a secret, and how it is hidden: config keys, MLflow params, log lines."""

from __future__ import annotations

import logging
import os
import re

SECRET_KEY = re.compile(
    r"(^|[._-])(token|password|passwd|secret|api_?key|access_?key|private_?key|credentials?|auth)($|[._-])",
    re.IGNORECASE,
)
MASK = "***"
_MIN_SECRET_LEN = 6  # shorter environment values ("1", "true") would mask ordinary words


def is_secret_key(key: str) -> bool:
    """`hf_hub_token`, `aws_secret_access_key`, `registry.api_key`: yes. `max_new_tokens`: no."""
    return bool(SECRET_KEY.search(key))


def secret_env_values() -> list[str]:
    """Values of environment variables whose names look like credentials (HF_TOKEN, AWS_SECRET_ACCESS_KEY,
    MLFLOW_TRACKING_PASSWORD, ...), longest first."""
    values = {v for k, v in os.environ.items() if is_secret_key(k) and len(v) >= _MIN_SECRET_LEN}
    return sorted(values, key=len, reverse=True)


_URL_PASSWORD = re.compile(r"(\w+://[^/\s:@]+:)[^/\s@]+@")


def redact(text: str) -> str:
    """`text` with credential env values and URL passwords (`https://user:PASS@host`) masked."""
    for value in secret_env_values():
        text = text.replace(value, MASK)
    return _URL_PASSWORD.sub(rf"\1{MASK}@", text)


def install_log_redaction() -> None:
    """Mask secrets in every log record this process creates, whichever handler (console, file,
    Prefect's API log handler) later writes it. Records are rendered early, tracebacks included,
    so no handler formats the raw arguments. Idempotent."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "redacts", False):
        return

    def redacting_factory(*args, **kwargs) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        try:
            record.msg, record.args = redact(record.getMessage()), None
        except Exception:  # a malformed format string: leave it for the handler to report
            return record
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(_FORMATTER.formatException(record.exc_info))
        return record

    redacting_factory.redacts = True
    logging.setLogRecordFactory(redacting_factory)


_FORMATTER = logging.Formatter()
