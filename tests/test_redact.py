"""Redaction of secrets from error messages (actors._policies._redact)."""

from __future__ import annotations

import string
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors._policies._redact import DEFAULT_MAX_LENGTH, REDACTED, redact
from tests.growth import assert_linear

# ------------------------------------------------------------------------------- examples


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            "GET https://bob:hunter2@example.com/v1?api_key=abc123 failed",
            "GET https://bob:[REDACTED]@example.com/v1?api_key=[REDACTED] failed",
        ),
        ("postgres://u:p@ss@db:5432/x", "postgres://u:[REDACTED]@db:5432/x"),
        ("redis://:pw1@cache:6379/0", "redis://:[REDACTED]@cache:6379/0"),
        ("Authorization: Bearer abcdef", "Authorization: Bearer [REDACTED]"),
        ("authorization=Basic dXNlcjpwYXNz", "authorization=Basic [REDACTED]"),
        ('{"Authorization": "Bearer abc"}', '{"Authorization": "Bearer [REDACTED]"}'),
        ("Proxy-Authorization: s3cret", "Proxy-Authorization: [REDACTED]"),
        ("sent Bearer xyz upstream", "sent Bearer [REDACTED] upstream"),
        ("password=p@ss&user=bob", "password=[REDACTED]&user=bob"),
        ("token=abc; secret=def", "token=[REDACTED]; secret=[REDACTED]"),
        ("x-api-key: foo", "x-api-key: [REDACTED]"),
        ("X-API-KEY:foo", "X-API-KEY:[REDACTED]"),
        ('{"Password" : "a b", "token":"x"}', '{"Password" : "[REDACTED]", "token":"[REDACTED]"}'),
        ("{'client_secret': 'abc'}", "{'client_secret': '[REDACTED]'}"),
        ("aws_secret_access_key=wJalrXUtnFEMI/K7MDENG", "aws_secret_access_key=[REDACTED]"),
        ("key AKIAIOSFODNN7EXAMPLE used", "key [REDACTED] used"),
        ('{"api_key": "sk-proj-ABCDEFGHIJKLMNOPQRST"}', '{"api_key": "[REDACTED]"}'),
        ("(sk-ant-api03-abcdefghijklmnop1234),", "([REDACTED]),"),
        ("ghp_abcdefghijklmnopqrstuvwxyz0123456789 leaked", "[REDACTED] leaked"),
        (
            "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n end",
            "jwt [REDACTED] end",
        ),
        ("blob deadbeefdeadbeefdeadbeefdeadbeef0123 bad", "blob [REDACTED] bad"),
        ("raw wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY x", "raw [REDACTED] x"),
        ("İİ password=x İ", "İİ password=[REDACTED] İ"),
    ],
)
def test_secret_examples_are_redacted(message: str, expected: str) -> None:
    """Each documented kind of secret is replaced and the non-secret context is kept."""
    assert redact(message) == expected


@pytest.mark.parametrize(
    "message",
    [
        "connection refused while connecting to the upstream service",
        "ProviderError: openai returned 503 Service Unavailable for POST "
        "https://api.openai.com/v1/chat/completions (request id req_8f3a2b1c, retry after 2.5 s)",
        "max_tokens: 4096 exceeds the model limit",
        "author: Bob",
        "the bearer of bad news",
        "request 123e4567-e89b-12d3-a456-426614174000 timed out",
        "http://localhost:8080/health answered 500",
        "KeyError: 'model'",
        "status=503 retry_after=2 attempts=3",
        "/usr/lib/python3.11/site-packages/trio/_core/_run.py line 2000",
        "a_really_long_snake_case_identifier_name_in_a_traceback failed",
        "",
    ],
)
def test_ordinary_examples_are_unchanged(message: str) -> None:
    """Messages without secrets come back exactly as they were."""
    assert redact(message) == message


def test_long_message_is_truncated_with_a_marker() -> None:
    """A message past max_length is cut at a word boundary and says how long it was."""
    message = "word " * 1000
    out = redact(message, max_length=100)
    assert out.endswith(f"... [truncated, {len(message)} chars]")
    assert len(out) <= 100 + len("... [truncated, 5000 chars]")
    assert out.startswith("word word")


def test_unbroken_blob_past_the_limit_is_dropped() -> None:
    """A single giant word cannot be cut safely, so none of it is kept."""
    out = redact("x" * 5000, max_length=40)
    assert out == "... [truncated, 5000 chars]"


def test_secret_straddling_the_cut_is_dropped_whole() -> None:
    """The partial word at the cut is dropped, so half a key never survives."""
    key = "sk-" + "AbCdEfGh12" * 4
    message = "x " * 10 + key + " tail"
    out = redact(message, max_length=30)
    assert "AbCd" not in out
    assert "sk-" not in out


def test_unterminated_quoted_value_is_redacted_to_the_end() -> None:
    """A quoted secret cut before its closing quote is still removed."""
    out = redact('password="correct horse battery staple" more', max_length=26)
    assert "horse" not in out
    assert "correct" not in out


def test_default_length_bound() -> None:
    """The default bound applies when no max_length is given."""
    out = redact("y " * DEFAULT_MAX_LENGTH)
    assert "truncated" in out
    assert len(out) < DEFAULT_MAX_LENGTH + 40


def test_bad_arguments_raise() -> None:
    """A non-str message is a TypeError; a non-positive bound a ValueError."""
    with pytest.raises(TypeError, match="str"):
        redact(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_length"):
        redact("x", max_length=0)


# ------------------------------------------------------------------------------- properties

# Ordinary text has no upper-case letters, so a secret value with one can only come from the
# secret itself: finding the value in the output means it survived.
_VOCAB = [
    "error",
    "failed",
    "connection",
    "refused",
    "timeout",
    "after",
    "seconds",
    "retry",
    "upstream",
    "gateway",
    "unavailable",
    "max_tokens: 4096",
    '"max_tokens": 100',
    "tokens",
    "token limit",
    "keys",
    "author: bob",
    "status=503",
    "retry_after=2",
    "user=bob",
    "id=42",
    "host:8080",
    "http://localhost:8080/v1/chat",
    "https://api.example.com/v1/chat/completions?stream=true",
    "/v1/models",
    "req_8f3a2b1c",
    "123e4567-e89b-12d3-a456-426614174000",
    "2.5",
    "0x1f",
    "deadbeef",
    "error: bad gateway",
    "keyerror: 'model'",
    "the bearer of bad news",
]
_SEPARATORS = [" ", "\n", "\t", " (", ") ", ", ", ". ", "; "]

_words = st.one_of(
    st.sampled_from(_VOCAB),
    st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=12).filter(
        lambda w: w != "bearer"
    ),
    st.integers(min_value=0, max_value=10**6).map(str),
)
_ordinary = st.lists(st.tuples(_words, st.sampled_from(_SEPARATORS)), min_size=0, max_size=25).map(
    lambda pairs: "".join(w + s for w, s in pairs).strip()
)


@st.composite
def _distinctive(draw: st.DrawFn, alphabet: str, min_size: int = 10, max_size: int = 40) -> str:
    """A token with an upper-case letter and a digit (never produced by ordinary text)."""
    body = draw(st.text(alphabet=alphabet, min_size=min_size, max_size=max_size))
    upper = draw(st.sampled_from(string.ascii_uppercase))
    digit = draw(st.sampled_from(string.digits))
    at = draw(st.integers(min_value=0, max_value=len(body)))
    return body[:at] + upper + digit + body[at:]


_ALNUM = string.ascii_letters + string.digits
_B64URL = _ALNUM + "-_"


@st.composite
def _secret(draw: st.DrawFn) -> tuple[str, str]:
    """(text containing a secret, the secret value that must not survive)."""
    kind = draw(
        st.sampled_from(
            [
                "sk",
                "bearer",
                "header",
                "url",
                "kv",
                "kv_json",
                "aws",
                "jwt",
                "hex",
                "b64",
                "github",
            ]
        )
    )
    if kind == "sk":
        value = draw(st.sampled_from(["sk-", "sk-proj-", "sk-ant-api03-", "sk_live_"]))
        value += draw(_distinctive(_B64URL, min_size=16))
        return value, value
    if kind == "bearer":
        token = draw(_distinctive(_B64URL + ".~+/", min_size=6))
        return f"Bearer {token}", token
    if kind == "header":
        name = draw(st.sampled_from(["Authorization", "authorization", "Proxy-Authorization"]))
        scheme = draw(st.sampled_from(["Bearer ", "Basic ", "token ", ""]))
        sep = draw(st.sampled_from([": ", ":", "=", '": "']))
        token = draw(_distinctive(_B64URL + "=", min_size=6))
        return f"{name}{sep}{scheme}{token}", token
    if kind == "url":
        scheme = draw(st.sampled_from(["https", "http", "postgres", "redis", "amqp"]))
        user = draw(st.text(alphabet=string.ascii_lowercase, min_size=0, max_size=8))
        password = draw(_distinctive(_ALNUM + "!$*~.-:%", min_size=4))
        host = draw(st.sampled_from(["example.com", "db:5432", "10.0.0.1", "cache"]))
        path = draw(st.sampled_from(["", "/", "/v1/x?q=1", "#frag"]))
        return f"{scheme}://{user}:{password}@{host}{path}", password
    if kind in ("kv", "kv_json"):
        prefix = draw(st.sampled_from(["", "db_", "x-", "X-", "aws_", "refresh_", "my."]))
        name = draw(
            st.sampled_from(
                [
                    "password",
                    "PASSWORD",
                    "passwd",
                    "pwd",
                    "secret",
                    "token",
                    "Token",
                    "api_key",
                    "api-key",
                    "apikey",
                    "access_key",
                    "secret_key",
                    "private_key",
                    "client_secret",
                    "credentials",
                    "auth",
                    "session_id",
                    "signature",
                    "sig",
                ]
            )
        )
        value = draw(_distinctive(_ALNUM + "!$*~./+-", min_size=4))
        if kind == "kv_json":
            quote = draw(st.sampled_from(['"', "'"]))
            spaced = draw(st.booleans())
            value_text = value[:3] + " " + value[3:] if spaced else value
            return f"{quote}{prefix}{name}{quote}: {quote}{value_text}{quote}", value_text
        sep = draw(st.sampled_from(["=", ": ", ":", " = "]))
        return f"{prefix}{name}{sep}{value}", value
    if kind == "aws":
        body = draw(_distinctive(string.ascii_uppercase + string.digits, min_size=14, max_size=14))
        value = draw(st.sampled_from(["AKIA", "ASIA"])) + body
        return value, value
    if kind == "jwt":
        head = "eyJ" + draw(_distinctive(_B64URL, min_size=8))
        payload = "eyJ" + draw(_distinctive(_B64URL, min_size=8))
        sig = draw(_distinctive(_B64URL, min_size=8))
        value = f"{head}.{payload}.{sig}"
        return value, value
    if kind == "hex":
        body = draw(st.text(alphabet="0123456789abcdef", min_size=30, max_size=64))
        value = body + "a1"
        return value, value
    if kind == "b64":
        value = "q" + draw(_distinctive(_ALNUM + "+/", min_size=32, max_size=64))
        return value + draw(st.sampled_from(["", "=", "=="])), value
    value = draw(st.sampled_from(["ghp_", "gho_", "ghs_"])) + draw(
        _distinctive(_ALNUM, min_size=34, max_size=34)
    )
    return value, value


@given(
    before=_ordinary,
    after=_ordinary,
    secret=_secret(),
    sep1=st.sampled_from(_SEPARATORS),
    sep2=st.sampled_from(_SEPARATORS),
)
def test_embedded_secret_never_survives(
    before: str, after: str, secret: tuple[str, str], sep1: str, sep2: str
) -> None:
    """A secret of any supported kind inside ordinary text is never in the output."""
    text, value = secret
    out = redact(before + sep1 + text + sep2 + after)
    assert value not in out
    assert REDACTED in out


@given(text=_ordinary)
def test_ordinary_text_is_unchanged(text: str) -> None:
    """Text without secrets is returned exactly."""
    assert redact(text) == text


@given(
    before=_ordinary,
    secret=_secret(),
    max_length=st.integers(min_value=1, max_value=200),
)
def test_truncation_never_keeps_part_of_a_secret(
    before: str, secret: tuple[str, str], max_length: int
) -> None:
    """Wherever the cut falls, no 6-character piece of the secret survives; length is bounded."""
    text, value = secret
    message = before + " " + text + " and the rest of the message"
    out = redact(message, max_length=max_length)
    marker = f"... [truncated, {len(message)} chars]"
    assert len(out) <= max_length + len(marker)
    for i in range(len(value) - 5):
        piece = value[i : i + 6]
        if any(c.isupper() for c in piece):
            assert piece not in out


@given(before=_ordinary, after=_ordinary, secret=_secret())
def test_redaction_is_idempotent(before: str, after: str, secret: tuple[str, str]) -> None:
    """Redacting an already redacted message changes nothing."""
    once = redact(f"{before} {secret[0]} {after}")
    assert redact(once) == once


# ------------------------------------------------------- short names, phrases and URL paths


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("GET /v1?key=hunter2hunter2 failed", "GET /v1?key=[REDACTED] failed"),
        ("GET /v1?a=1&key=hunter2 failed", "GET /v1?a=1&key=[REDACTED] failed"),
        ('{"key": "abcdef"}', '{"key": "[REDACTED]"}'),
        ('{"pass": "hunter2"}', '{"pass": "[REDACTED]"}'),
        ("db_pass=hunter2 host=db", "db_pass=[REDACTED] host=db"),
        ("SMTP-PASS: hunter2", "SMTP-PASS: [REDACTED]"),
        ("pw=hunter2", "pw=[REDACTED]"),
        ("password: correct horse battery staple", "password: [REDACTED]"),
        ("password: correct horse battery staple\nnext line", "password: [REDACTED]\nnext line"),
        ("token: abc def (expired)", "token: [REDACTED] (expired)"),
        ("secret: a b c, user: bob", "secret: [REDACTED], user: bob"),
        ("password: two words user: bob", "password: [REDACTED] user: bob"),
        ("password = correct horse", "password = [REDACTED]"),
        ("password=abc user=bob", "password=[REDACTED] user=bob"),
    ],
)
def test_short_names_and_phrases_are_redacted(message: str, expected: str) -> None:
    """`key`, `pass` and `pw` as whole names, and multi-word values after `name:`, are removed."""
    assert redact(message) == expected


@pytest.mark.parametrize(
    "message",
    [
        "see https://developer.mozilla.org/en-US/docs/Web/HTTP/Reference/Status/429 for help",
        "https://developer.mozilla.org/en-US/docs/Web/API/Fetch_API/Using_Fetch2",
        "docs at https://docs.python.org/3/library/asyncio-task.html#Task/Cancellation2",
        "GET /api/V2/Users/Profile-Settings/Page2/Items/Recent4 answered 404",
        "idempotency_key=order-42 cache_key: abc monkey=3 bypass: yes compass=north",
        "keyerror: 'model'",
    ],
)
def test_url_paths_and_lookalike_names_are_kept(message: str) -> None:
    """Paths of words are not blobs; names that merely end in key or pass are not secrets."""
    assert redact(message) == message


_PATH_WORDS = st.one_of(
    st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=10),
    st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=9).map(str.capitalize),
    st.text(alphabet=string.ascii_uppercase, min_size=1, max_size=5),
    st.integers(min_value=0, max_value=99999).map(str),
)
_PATH_PIECES = st.lists(_PATH_WORDS, min_size=1, max_size=3).flatmap(
    lambda words: st.sampled_from(["-", "_"]).map(lambda sep: sep.join(words))
)


@given(
    host=st.sampled_from(["developer.mozilla.org", "example.com", "docs.python.org"]),
    pieces=st.lists(_PATH_PIECES, min_size=1, max_size=10),
    before=_ordinary,
)
def test_url_paths_of_words_are_unchanged(host: str, pieces: list[str], before: str) -> None:
    """Any URL whose path is made of words (lower, Capitalised, UPPER, numbers) is kept."""
    message = f"{before} https://{host}/{'/'.join(pieces)} failed".strip()
    assert redact(message, max_length=10_000) == message


@given(
    name=st.sampled_from(["key", "KEY", "pass", "Pass", "pw", "db_pass", "smtp-pass", "db_pw"]),
    form=st.sampled_from(["?{n}={v}", "&{n}={v}", '{{"{n}": "{v}"}}', "{n}: {v}", " {n}={v}"]),
    value=_distinctive(_ALNUM + "!$*~./+-", min_size=4),
    before=_ordinary,
    after=_ordinary,
)
def test_short_secret_names_never_keep_their_value(
    name: str, form: str, value: str, before: str, after: str
) -> None:
    """`key`, `pass` and `pw` (whole, or after `_`/`-`) never keep their value."""
    out = redact(f"{before} {form.format(n=name, v=value)} {after}")
    assert value not in out
    assert REDACTED in out


@given(
    name=st.sampled_from(["password", "passphrase", "secret", "token", "api_key", "pass"]),
    words=st.lists(_distinctive(_ALNUM + "!$*~.+-", min_size=2, max_size=10), min_size=1),
    end=st.sampled_from(["", "\n", ", next: field", "; done", " (retry)"]),
    before=_ordinary,
)
def test_no_word_of_a_multi_word_secret_survives(
    name: str, words: list[str], end: str, before: str
) -> None:
    """`name: several words` loses every word up to the end of the line or a delimiter."""
    out = redact(f"{before} {name}: {' '.join(words)}{end}", max_length=10_000)
    for word in words:
        assert word not in out
    assert out.endswith(end)


# ------------------------------------------------------------------------------ linear time

_ADVERSARIAL = {
    "url passwords": lambda n: ("://a:" + "@x") * n,
    "url authority": lambda n: "://a:" + "b" * n + "@" * n,
    "authorization": lambda n: "authorization:" * n,
    "bearer": lambda n: "Bearer " * n,
    "jwt starts": lambda n: "eyJ-" * n,
    "key prefixes": lambda n: "sk-" * n + "ghp_" * n,
    "names": lambda n: "token=" * n,
    "quoted names": lambda n: 'token="' * n,
    "colons": lambda n: ":" * n,
    "phrase": lambda n: "password: " + "a:b " * n,
    "phrase colons": lambda n: "password: a " + "a:" * n,
    "phrases": lambda n: "password: a b " * n,
    "whole names": lambda n: "?key: " * n,
    "paths": lambda n: "/Ab-cD1" * n,
    "blanks": lambda n: "password" + " " * n + ":" + " " * n + "x",
}


@pytest.mark.parametrize("make", list(_ADVERSARIAL.values()), ids=list(_ADVERSARIAL))
def test_adversarial_messages_are_redacted_in_linear_time(make: Any) -> None:
    """Input crafted against each rule costs time linear in its length (no backtracking blow-up)."""
    assert_linear(lambda text: redact(text, max_length=len(text) + 1), make, 200)
