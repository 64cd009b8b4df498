"""How a signup's email becomes an identity and a domain (the README's normalisation decisions)."""
from __future__ import annotations

import pytest

from trialflow.domain.normalize import normalize_domain, normalize_email
from trialflow.errors import InvalidSignup


@pytest.mark.parametrize("raw", [
    "bob@acme-corp.com", "Bob@Acme-Corp.COM", "  bob@acme-corp.com\t", "bob@acme-corp.com.", "BOB@ACME-CORP.COM.",
])
def test_case_whitespace_and_the_trailing_dot_do_not_make_a_different_person(raw):
    email = normalize_email(raw)
    assert email.address == "bob@acme-corp.com"
    assert email.domain == "acme-corp.com"
    assert email.local == "bob"


def test_an_internationalised_domain_is_stored_as_punycode():
    unicode_form = normalize_email("anna@bücher.example")
    ascii_form = normalize_email("anna@xn--bcher-kva.example")
    assert unicode_form == ascii_form
    assert unicode_form.address == "anna@xn--bcher-kva.example"


def test_an_upper_case_internationalised_domain_is_the_same_domain():
    assert normalize_email("anna@BÜCHER.example").domain == "xn--bcher-kva.example"


def test_a_sub_domain_email_looks_up_its_parents_most_specific_first_but_never_a_bare_tld():
    email = normalize_email("bob@eu.west.acme-corp.com")
    assert email.domain == "eu.west.acme-corp.com"
    assert email.domain_candidates() == ["eu.west.acme-corp.com", "west.acme-corp.com", "acme-corp.com"]


@pytest.mark.parametrize("raw", ["bob@gmail.com", "Bob@GMAIL.com.", "bob@outlook.com", "bob@eu.gmail.com",
                                 "bob@proton.me", "marie@hotmail.fr", "hans@t-online.de", "joe@comcast.net",
                                 "kim@naver.com", "ana@bol.com.br", "jan@wp.pl", "ola@inbox.lv"])
def test_public_mailbox_domains_are_recognised_also_as_a_parent(raw):
    assert normalize_email(raw).is_public


@pytest.mark.parametrize("raw", ["bob@acme-corp.com", "bob@gmail.company.com", "bob@notgmail.com"])
def test_a_company_domain_is_not_public_even_when_it_looks_like_one(raw):
    assert not normalize_email(raw).is_public


@pytest.mark.parametrize("raw,says", [
    ("", "Please give an email address"),
    ("   ", "Please give an email address"),
    ("bob", "exactly one @"),
    ("bob@@acme-corp.com", "exactly one @"),
    ("bob@acme@corp.com", "exactly one @"),
    ("@acme-corp.com", "before the @"),
    ("bob..smith@acme-corp.com", "before the @"),
    (".bob@acme-corp.com", "before the @"),
    ("bob smith@acme-corp.com", "before the @"),
    ("bob@", "needs a domain"),
    ("bob@.", "needs a domain"),
    ("bob@localhost", "full domain name"),
    ("bob@-acme.com", "not a valid domain"),
    ("bob@acme_corp.com", "not a valid domain"),
    ("bob@10.0.0.1", "IP address"),
    ("b" * 65 + "@acme-corp.com", "before the @"),
    ("bob@" + "a" * 250 + ".com", "too long"),
    ("bob@" + "a" * 64 + ".com", "not a valid domain"),
])
def test_an_address_a_person_mistyped_is_refused_with_a_readable_reason(raw, says):
    with pytest.raises(InvalidSignup) as refused:
        normalize_email(raw)
    assert says in refused.value.message
    assert refused.value.field == "email"


@pytest.mark.parametrize("value", [None, 42, ["bob@acme-corp.com"], {"email": "bob@acme-corp.com"}, True])
def test_an_email_that_is_not_text_is_refused(value):
    with pytest.raises(InvalidSignup) as refused:
        normalize_email(value)
    assert "must be text" in refused.value.message


def test_plus_addressing_and_other_allowed_characters_are_kept():
    assert normalize_email("Bob+Trial@acme-corp.com").address == "bob+trial@acme-corp.com"
    assert normalize_email("o'brien@acme-corp.com").local == "o'brien"


def test_normalize_domain_drops_the_root_dot_and_lowercases():
    assert normalize_domain(" Pool-A.SourceGraph.com. ") == "pool-a.sourcegraph.com"
