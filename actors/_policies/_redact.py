"""Make text safe to store and show: remove secrets, escape control characters.

Theory of operation
-------------------
Provider errors often quote the request that failed: a URL with a password in it, an
``Authorization`` header, an ``api_key=...`` query parameter, a JSON body with a token.  The
monitor keeps recent error messages and serves them over HTTP, so every message passes through
:func:`redact` on intake.

Redaction is a short sequence of precompiled regular expressions, one per kind of secret (URL
passwords, ``Authorization`` headers, ``Bearer`` tokens, ``name=value`` pairs, keys of known
shapes, JSON Web Tokens, long token-like blobs).  Each runs only when a substring it needs is
present (``"://"`` and ``"@"``, ``"bearer"``, ...), checked with plain substring scans, so an
ordinary message costs a few C-speed scans and at most one or two regex passes.  Replacements keep
the non-secret parts (the parameter name, the URL's user and host, the auth scheme, the quotes)
and put :data:`REDACTED` where the secret was; a message without secrets comes back unchanged.

What counts as a secret (see :func:`redact` for the list) errs on the side of removing too much
*next to secret-looking names* (``password: whatever`` loses ``whatever``) and too little in
free text: a free-standing word is only treated as a token when it looks like one (a known key
prefix such as ``sk-`` or ``AKIA``, a JWT, or a long run of hex or mixed-case letters and digits).
UUIDs are kept: they are request ids, useful and not secret.

Every rule is linear in the message: each pattern either matches at few candidate positions
(found by substring scans) or alternates character classes that cannot overlap, so no input
makes it backtrack; tests feed each rule input crafted against it and compare growth.

Control characters.  Saga ids, service names and remote error text reach terminals and log
files.  :func:`escape_control` makes any text inert there: C0 and C1 control characters (an
``ESC[2J`` clears a screen, a newline forges a log line), line and paragraph separators and the
bidirectional formatting characters (which reorder what a reader sees) are written as Python
escapes (``\\x1b``, ``\\n``, ``\\u202e``).  Every text sink of the operator surface calls
it.  :func:`check_printable` is the matching intake check for names and ids: it refuses them.

Length is bounded: a message longer than ``max_length`` is cut *before* redaction at the last
whitespace before the limit (so a secret straddling the cut is dropped whole, never kept in part)
and marked with ``... [truncated, N chars]``.  The work is therefore bounded by ``max_length``
whatever the input size.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["DEFAULT_MAX_LENGTH", "REDACTED", "check_printable", "escape_control", "redact"]

#: What a secret is replaced with.
REDACTED: Final = "[REDACTED]"

#: The default bound on a stored message's length (characters, before the truncation marker).
DEFAULT_MAX_LENGTH: Final = 1000

# Names that announce a secret in ``name=value``, ``name: value`` and ``"name": "value"``.  The
# name must *end* with one of these, so ``max_tokens: 4096`` or ``author: Bob`` are left alone.
_SECRET_NAMES: Final = (
    "password",
    "passwd",
    "passphrase",
    "pwd",
    "secret",
    "token",
    "apikey",
    "api_key",
    "api-key",
    "access_key",
    "access-key",
    "accesskey",
    "secret_key",
    "secret-key",
    "private_key",
    "private-key",
    "subscription-key",
    "subscription_key",
    "client_secret",
    "credential",
    "credentials",
    "auth",
    "session_id",
    "sessionid",
    "signature",
    "sig",
    # `db_pass`, `smtp-pass`, `db_pw`: a short name after a separator (never `bypass`).
    "_pass",
    "-pass",
    "_pw",
    "-pw",
)
# Names that announce a secret only as a whole name (`?key=`, `{"pass": ...}`, `pw:`): as a
# suffix they would take `idempotency_key`, `monkey` or `bypass`.
_WHOLE_NAMES: Final = ("key", "pass", "pw")
# What may come right before a whole name: anything but a character of a longer name.
_NAME_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-.")

_URL: Final = re.compile(
    # scheme://user:password@host -> keep scheme, user and host.  The password runs to the last
    # "@" of the authority, so an unescaped "@" in a password does not leave a part of it behind.
    # (The literal "://" first lets the regex engine skip ahead to candidates quickly.)
    r"://[^\s:/@]*:([^\s/]+?)(?=@[^\s/@]*(?:[/?#\s]|$))"
)
_HEADER: Final = re.compile(
    # Authorization: Bearer xyz / Proxy-Authorization: Basic abc (the scheme is kept).
    r"(?i)(\b(?:proxy-)?authorization\b[\"']?\s*[:=]\s*[\"']?"
    r"(?:(?:bearer|basic|token|digest|negotiate|apikey)\s+)?)[^\s,;\"']+"
)
_BEARER: Final = re.compile(r"(\b(?i:bearer)\s+)([A-Za-z0-9\-._~+/]+=*)")
# The value after a separator: blanks, then a quoted string or a run up to a delimiter.
# (An unterminated quote runs to the end: the message may have been cut inside the value.)
_VALUE: Final = re.compile(r"[ \t]*(\"[^\"]*(?:\"|$)|'[^']*(?:'|$)|[^\s&,;\"'<>(){}\[\]]+)")
# After `name:` or `name = ` (YAML, headers, prose) an unquoted value may be several words
# (`password: correct horse battery staple`): words separated by blanks, up to the end of the
# line, a delimiter, or a word that is itself the next `name:`.  Blanks and words alternate,
# so the pattern cannot backtrack more than one word at a time: linear in the message.
_WORD: Final = r"[^\s&,;\"'<>(){}\[\]]"
_PHRASE: Final = re.compile(
    r"[ \t]*(\"[^\"]*(?:\"|$)|'[^']*(?:'|$)"
    rf"|{_WORD}+(?:[ \t]+(?!{_WORD}*:(?:[ \t]|$)){_WORD}+)*)"
)
# Words that look generated, tried only inside words long enough to hold one (>= 14 chars):
# keys of known shapes (OpenAI, Anthropic and Stripe sk-..., GitHub, Slack, Google, AWS key ids),
# JSON Web Tokens (header and payload are base64 JSON objects, so both start with "eyJ"), and
# long runs of token characters (a secret only when hex with letters and digits, or mixed case
# with digits: checked in _token; the look-behind starts the scan only at a run's start).
_MIN_TOKEN: Final = 14
_TOKEN: Final = re.compile(
    r"(?P<key>\b(?:sk|rk)[-_][A-Za-z0-9_\-]{16,}"
    r"|\bgh[pousr]_[A-Za-z0-9]{20,}"
    r"|\bgithub_pat_[A-Za-z0-9_]{20,}"
    r"|\bxox[abposr]-[A-Za-z0-9\-]{10,}"
    r"|\bAIza[0-9A-Za-z_\-]{30,}"
    r"|\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b"
    r"|\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*)"
    r"|(?P<blob>(?<![A-Za-z0-9+/_\-])[A-Za-z0-9+/_\-]{32,}={0,2})"
)
_UUID: Final = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
_HEX: Final = re.compile(r"[0-9a-fA-F]+")
_WORD_SPLIT: Final = re.compile(r"[-_+]")
_ASCII_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _url(m: re.Match[str]) -> str:
    return m.group(0)[: m.start(1) - m.start()] + REDACTED


def _header(m: re.Match[str]) -> str:
    return m.group(1) + REDACTED


def _bearer(m: re.Match[str]) -> str:
    prefix, value = m.group(1), m.group(2)
    # "Bearer x" is always a credential; lower-case "bearer" only before a token-like word.
    if prefix[0] != "b" or len(value) >= 20 or any(c.isdigit() for c in value):
        return prefix + REDACTED
    return m.group(0)


def _token(m: re.Match[str]) -> str:
    if m.lastgroup == "key":
        return REDACTED
    run = m.group(0)
    core = run.rstrip("=")
    if _UUID.fullmatch(core):
        return run  # request ids are useful and not secret
    if "/" in core and all(map(_wordlike, core.split("/"))):
        return run  # a path of words (`/en-US/docs/Web/HTTP/Status/429`), not base64
    if _HEX.fullmatch(core):
        secret = any(c.isdigit() for c in core) and any(c.isalpha() for c in core)
    else:
        secret = (
            any(c.isdigit() for c in core)
            and any(c.isupper() for c in core)
            and any(c.islower() for c in core)
        )
    return REDACTED if secret else run


def _wordlike(piece: str) -> bool:
    """Whether a path segment is made of words: lower, Capitalised, UPPER or numbers,
    joined by ``-``, ``_`` or ``+`` (``en-US``, ``Fetch_API``, ``Using_Fetch2``).

    Base64 of a random secret almost never splits at its ``/`` into such segments: its letters
    change case within a word (``wJalrXUtnFEMI``).
    """
    for word in _WORD_SPLIT.split(piece):
        letters = word.lstrip("0123456789")
        if not (letters.islower() or letters.isupper() or letters[1:].islower() or not letters):
            return False
    return True


def _lower(message: str) -> str:
    lower = message.lower()
    if len(lower) != len(message):
        # Some non-ASCII letters lower-case to two characters; keep indexes aligned.
        lower = message.translate(_ASCII_LOWER)
    return lower


def _separators(message: str) -> list[int]:
    found: list[int] = []
    for sep in ":=":
        at = message.find(sep)
        while at != -1:
            found.append(at)
            at = message.find(sep, at + 1)
    found.sort()
    return found


def _whole_name(lower: str, end: int) -> bool:
    """Whether ``lower[:end]`` ends with a whole name of :data:`_WHOLE_NAMES`."""
    for name in _WHOLE_NAMES:
        start = end - len(name)
        if start >= 0 and lower.startswith(name, start):
            return start == 0 or lower[start - 1] not in _NAME_CHARS
    return False


def _name_values(message: str) -> str:
    # Found from the separators (few in a message) backwards: the text before a separator must
    # end with a secret name.  Much cheaper than a case-insensitive alternation of names tried
    # at every position.
    lower = _lower(message)
    parts: list[str] = []
    done = 0
    for at in _separators(message):
        if at < done:
            continue
        # The name ends before optional blanks and an optional closing quote: `"token" : `.
        end = at
        while end > 0 and message[end - 1] in " \t":
            end -= 1
        if end > 0 and message[end - 1] in "\"'":
            end -= 1
        if not (lower.endswith(_SECRET_NAMES, 0, end) or _whole_name(lower, end)):
            continue
        # `name=value` (query strings, logfmt) is one token; `name: a b c` and `name = a b`
        # may be a phrase.
        phrase = message[at] == ":" or message.startswith((" ", "\t"), at + 1)
        value = (_PHRASE if phrase else _VALUE).match(message, at + 1)
        if value is None:
            continue
        start = value.start(1)
        parts.append(message[done:start])
        quote = message[start]
        parts.append(quote + REDACTED + quote if quote in "\"'" else REDACTED)
        done = value.end()
    if not parts:
        return message
    parts.append(message[done:])
    return "".join(parts)


def _redact_all(message: str) -> str:
    # Each rule runs only when something it needs is present, checked with C-speed substring
    # scans: an ordinary message costs a few scans and at most one or two short regex passes.
    if "://" in message and "@" in message:
        message = _URL.sub(_url, message)
    if "=" in message or ":" in message:
        lower = _lower(message)
        if "authorization" in lower:
            message = _HEADER.sub(_header, message)
        message = _name_values(message)
    if "earer" in message or "EARER" in message:
        message = _BEARER.sub(_bearer, message)
    if len(message) >= _MIN_TOKEN:
        for word in {w for w in message.split() if len(w) >= _MIN_TOKEN}:
            # Identical words get identical treatment, so replacing every occurrence is right.
            redacted = _TOKEN.sub(_token, word)
            if redacted is not word and redacted != word:
                message = message.replace(word, redacted)
    return message


def redact(message: str, *, max_length: int = DEFAULT_MAX_LENGTH) -> str:
    """Return ``message`` with secrets replaced by ``[REDACTED]`` and its length bounded.

    Removed:

    * passwords in URLs: ``https://user:pw@host`` -> ``https://user:[REDACTED]@host``;
    * ``Authorization`` / ``Proxy-Authorization`` header values (the scheme is kept);
    * ``Bearer <token>`` anywhere (after lower-case ``bearer`` only when the word looks like a
      token: it has a digit or is at least 20 characters long);
    * the value after any name ending in password, passwd, pwd, secret, token, api key,
      access key, private key, client secret, credential, auth, session id or signature, or
      ``_pass`` / ``_pw``, or the whole names ``key``, ``pass`` and ``pw`` (``?key=``, but
      not ``idempotency_key`` or ``bypass``), followed by ``=`` or ``:`` (query and form
      parameters, headers such as ``x-api-key``, JSON and YAML fields); quoted values keep
      their quotes.  After ``name=`` the value is one token (query strings, logfmt); after
      ``name:`` or ``name = `` it may be several words (``password: correct horse battery
      staple``), up to the end of the line, a delimiter (``,;&()[]{}<>`` or a quote) or the
      next ``name:``;
    * keys of known shapes: ``sk-...`` / ``sk_...`` (OpenAI, Anthropic, Stripe), GitHub, Slack
      and Google API tokens, AWS access key ids (``AKIA...``), JSON Web Tokens;
    * long blobs that look generated: 32+ hex digits (with at least one letter and one digit)
      or 32+ base64 characters mixing upper case, lower case and digits.  UUIDs are kept, and
      so are paths of words (``/en-US/docs/Web/HTTP/Status/429``: each segment lower case,
      Capitalised, upper case or digits).

    Text without secrets is returned unchanged.  A message longer than ``max_length`` is cut at
    the last whitespace before ``max_length`` (a partial word is dropped, so a secret cut in two
    never survives in part) and ends with ``... [truncated, N chars]`` where N is the original
    length.

    Raises:
        TypeError: ``message`` is not a ``str``.
        ValueError: ``max_length`` is less than 1.

    >>> redact("GET https://bob:hunter2@example.com/v1?api_key=abc123 failed")
    'GET https://bob:[REDACTED]@example.com/v1?api_key=[REDACTED] failed'
    """
    if type(message) is not str:
        if not isinstance(message, str):
            raise TypeError(f"redact() needs a str message, got {type(message).__name__}")
        message = str(message)
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, got {max_length}")
    original_length = len(message)
    truncated = original_length > max_length
    if truncated:
        cut = message[:max_length]
        if not message[max_length].isspace():
            # Drop the partial word at the cut: it may be the first half of a secret.
            cut = cut[: max(cut.rfind(" "), cut.rfind("\n"), cut.rfind("\t"), cut.rfind("\r")) + 1]
        message = cut
    if message:
        message = _redact_all(message)
        if len(message) > max_length:
            # Redaction markers can lengthen a message; the text left holds no secret.
            message = message[:max_length]
            truncated = True
    if truncated:
        message = f"{message.rstrip()}... [truncated, {original_length} chars]"
    return message


# ------------------------------------------------------------------------ control characters

# What terminals and log readers act on: C0 controls, DEL, C1 controls, the line and paragraph
# separators, and the bidirectional formatting characters ("Trojan Source").
_ACTIVE: Final = (
    *range(0x20),
    *range(0x7F, 0xA0),
    0x061C,
    0x200E,
    0x200F,
    0x2028,
    0x2029,
    *range(0x202A, 0x202F),
    *range(0x2066, 0x206A),
)
_NAMED: Final = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}
_ESCAPES: Final = {
    code: _NAMED.get(code, f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    for code in _ACTIVE
}
_ESCAPES_KEEP_NEWLINES: Final = {code: text for code, text in _ESCAPES.items() if code != 0x0A}


def escape_control(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every control, separator and bidi character written as an escape.

    C0 controls, DEL, C1 controls, U+2028/U+2029 and the bidirectional formatting characters
    become ``\\n``, ``\\t``, ``\\r``, ``\\xNN`` or ``\\uNNNN``; everything else (any
    script, emoji, spaces) is kept.  ``keep_newlines`` keeps ``\\n`` (for a traceback whose
    lines the caller indents).  Escaping twice changes nothing more.  Costs one C-speed scan
    when there is nothing to escape.
    """
    if text.isprintable():
        return text
    return text.translate(_ESCAPES_KEEP_NEWLINES if keep_newlines else _ESCAPES)


def check_printable(value: object, what: str, *, max_length: int | None = None) -> str:
    """Return ``value`` if it is a non-empty string of printable characters; raise otherwise.

    The intake check for names and ids that end up on terminals and in logs (saga ids,
    service names): a control character, a separator, a format character such as a bidi
    override, or a blank other than the space is refused, as is an empty string or one longer
    than ``max_length``.

    Raises:
        TypeError: ``value`` is not a ``str``.
        ValueError: it is empty, too long, or not printable; the message names ``what`` and
            shows the value escaped.
    """
    if not isinstance(value, str):
        raise TypeError(f"a {what} must be a str, not {type(value).__name__}")
    if not value:
        raise ValueError(f"a {what} must not be empty")
    if max_length is not None and len(value) > max_length:
        raise ValueError(
            f"a {what} must be at most {max_length} characters, got {len(value)}: {value[:40]!r}..."
        )
    if not value.isprintable():
        # repr() escapes every non-printable character, so the message itself is safe.
        raise ValueError(
            f"a {what} must be printable text (no control, separator or format characters), "
            f"got {value[:200]!r}"
        )
    return value
