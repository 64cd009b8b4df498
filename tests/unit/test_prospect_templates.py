"""Every email the prospect can get is a template of trialflow/templates that renders from what the
policies put in its context, with or without a CE assigned yet."""
from __future__ import annotations

import pytest

from trialflow.delivery.email import render
from trialflow.services.prospect_policies import TEMPLATES

FULL = {"name": "Bob", "account": "Acme Corp", "instance_url": "https://pool-a.sourcegraph.com",
        "ce_name": "Carol CE", "ce_email": "carol.ce@example.com", "ae_name": "Alice AE",
        "review_date": "20 January 2026", "decision_date": "20 January 2026", "end_date": "4 February 2026",
        "feedback_url": "https://survey.example.com/t"}


@pytest.mark.parametrize("name", TEMPLATES)
def test_each_prospect_email_renders_from_its_context(name):
    rendered = render(name, FULL)
    assert rendered.subject and "$" not in rendered.subject + rendered.body
    assert rendered.body.startswith("Hi Bob,") and rendered.body.rstrip().endswith("Carol CE")


@pytest.mark.parametrize("name", TEMPLATES)
def test_without_a_ce_yet_the_email_is_signed_by_the_team(name):
    rendered = render(name, {**FULL, "ce_name": "", "ce_email": "", "ae_name": "", "name": ""})
    assert rendered.body.startswith("Hello,") and rendered.body.rstrip().endswith("The Sourcegraph team")


def test_the_config_directory_overrides_a_template_and_leaves_the_others(tmp_path):
    (tmp_path / "trial_started.txt").write_text("Subject: Hello $name\n\nOurs.\n")
    assert render("trial_started", FULL, tmp_path).subject == "Hello Bob"
    assert render("trial_converted", FULL, tmp_path).subject == "Welcome to Sourcegraph"
