"""How a signup's email becomes an identity and a domain.

Decisions (also in the README):
- The whole address is compared case-insensitively: ``Bob@Acme-Corp.COM`` is ``bob@acme-corp.com``.
  Surrounding whitespace is dropped.
- The domain's trailing dot (``acme-corp.com.``, the DNS root) is dropped.
- Internationalised domains are stored in their ASCII (punycode, IDNA 2003 as in Python's codec)
  form, so ``bob@bücher.example`` and ``bob@xn--bcher-kva.example`` are the same domain.
- A sub-domain email (``bob@eu.acme-corp.com``) belongs to the closest listed parent: routing looks
  up ``eu.acme-corp.com`` first, then ``acme-corp.com`` (never a bare top-level label).
- Public mailbox domains (gmail.com, outlook.com, ...) never match or claim an instance.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from trialflow.errors import InvalidSignup

PUBLIC_EMAIL_DOMAINS = frozenset({
    "gmail.com", "googlemail.com", "outlook.com", "hotmail.com", "hotmail.co.uk", "live.com",
    "msn.com", "yahoo.com", "yahoo.co.uk", "yahoo.fr", "ymail.com", "aol.com", "icloud.com",
    "me.com", "mac.com", "proton.me", "protonmail.com", "pm.me", "gmx.com", "gmx.de", "gmx.net",
    "web.de", "mail.com", "zoho.com", "yandex.com", "yandex.ru", "mail.ru", "qq.com", "163.com",
    "126.com", "fastmail.com", "hey.com", "tutanota.com", "duck.com",
    "hotmail.fr", "outlook.fr", "live.fr", "yahoo.de", "yahoo.es", "yahoo.it", "t-online.de", "orange.fr",
    "free.fr", "laposte.net", "comcast.net", "verizon.net", "att.net", "btinternet.com", "sky.com",
    "rediffmail.com", "naver.com", "daum.net", "seznam.cz", "wp.pl", "o2.pl", "libero.it", "virgilio.it",
    "bol.com.br", "uol.com.br", "mail.ee", "inbox.lv",
})

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_LOCAL = re.compile(r"^[a-z0-9!#$%&'*+/=?^_`{|}~.-]+$")


@dataclass(frozen=True)
class Email:
    address: str  # normalised: local@ascii-domain, lower case
    local: str
    domain: str

    @property
    def is_public(self) -> bool:
        return is_public_domain(self.domain)

    def domain_candidates(self) -> list[str]:
        """The domain, then each parent with at least two labels: most specific first."""
        return domain_candidates(self.domain)


def domain_candidates(domain: str) -> list[str]:
    labels = domain.split(".")
    return [".".join(labels[i:]) for i in range(len(labels) - 1)]


def is_public_domain(domain: str) -> bool:
    """A public mailbox domain or one of its sub-domains (``eu.gmail.com``): shared by strangers."""
    return any(d in PUBLIC_EMAIL_DOMAINS for d in domain_candidates(domain))


def normalize_domain(raw: str) -> str:
    domain = raw.strip().rstrip(".").lower()
    if not domain:
        raise InvalidSignup("The email address needs a domain after the @.")
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise InvalidSignup(f"'{raw}' is not a valid domain name.") from None
    ascii_domain = ascii_domain.lower()
    labels = ascii_domain.split(".")
    if len(labels) < 2:
        raise InvalidSignup(f"'{raw}' is not a full domain name (for example acme-corp.com).")
    if len(ascii_domain) > 253 or not all(_LABEL.match(label) for label in labels):
        raise InvalidSignup(f"'{raw}' is not a valid domain name.")
    if labels[-1].isdigit():
        raise InvalidSignup("Please use an email address with a domain name, not an IP address.")
    return ascii_domain


def normalize_email(raw: object) -> Email:
    if not isinstance(raw, str):
        raise InvalidSignup("The email address must be text, like bob@acme-corp.com.")
    text = raw.strip()
    if not text:
        raise InvalidSignup("Please give an email address, like bob@acme-corp.com.")
    if len(text) > 254:
        raise InvalidSignup("That email address is too long (254 characters at most).")
    if text.count("@") != 1:
        raise InvalidSignup(f"'{text[:80]}' is not an email address: it needs exactly one @, like bob@acme-corp.com.")
    local, _, domain_part = text.partition("@")
    local = local.lower()
    if not local or len(local) > 64 or not _LOCAL.match(local) or local.startswith(".") \
            or local.endswith(".") or ".." in local:
        raise InvalidSignup(f"'{text[:80]}' is not a valid email address: check the part before the @.")
    domain = normalize_domain(domain_part)
    return Email(address=f"{local}@{domain}", local=local, domain=domain)


def bad_text(value: Any) -> str | None:
    """Why a parsed document holds text trialflow cannot store (NUL, a lone surrogate), or None.

    PostgreSQL refuses NUL in text, and a lone surrogate (JSON can escape one, ``\\ud800``) cannot
    be encoded at all: both would fail deep inside a write, so they are refused at the door."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return "text may not contain NUL characters (\\u0000)"
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return "text may not contain lone UTF-16 surrogates (like \\ud800)"
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None
