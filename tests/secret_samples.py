"""Secrets of every shape the redactor knows, and text that quotes all of them.

Each sample is (text as a service would quote it, the secret value that must not survive).
Sink tests put :data:`LEAK` into an exception or a message and check that no value of
:data:`SECRET_VALUES` comes out of the sink.
"""

from __future__ import annotations

from typing import Final

SAMPLES: Final = (
    ("https://admin:Hunter2Pa55word@db.example.com/x", "Hunter2Pa55word"),
    ("Bearer abcDEF123ghiJKL456mno", "abcDEF123ghiJKL456mno"),
    ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA"),
    ("api_key=Zq9vW3xY7tU1", "Zq9vW3xY7tU1"),
    ("token=Qw3rTy8Uiop", "Qw3rTy8Uiop"),
    ("password: correct horse battery staple;", "correct horse"),
    ("sk-proj-AbCdEfGhIjKlMnOpQrStUv123456", "AbCdEfGhIjKlMnOpQrStUv123456"),
    ("sk-ant-api03-AbCdEfGhIjKlMnOpQrSt", "api03-AbCdEfGhIjKlMnOpQrSt"),
    ("ghp_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789", "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"),
    ("xoxb-1234567890-AbCdEfGhIj", "1234567890-AbCdEfGhIj"),
    ("AIzaSyAbCdEfGhIjKlMnOpQrStUvWxYz0123456", "SyAbCdEfGhIjKlMnOpQrStUvWxYz0123456"),
    ("AKIAIOSFODNN7EXAMPLE", "IOSFODNN7EXAMPLE"),
    (
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV",
        "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV",
    ),
    (
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "9f86d081884c7d659a2feaa0c55ad015",
    ),
)

#: One message quoting every sample, as a careless provider error might.
LEAK: Final = "request failed: " + " | ".join(text for text, _ in SAMPLES)

SECRET_VALUES: Final = tuple(value for _, value in SAMPLES)


def leaked(text: str) -> list[str]:
    """The secret values found in ``text`` (empty when it is clean)."""
    return [value for value in SECRET_VALUES if value in text]
