"""trialflow: every signup to the cloud-trial program becomes a durable trial state machine.

Start with ``domain/lifecycle.py`` (the table), ``services/policies.py`` (what each step causes)
and ``services/writer.py`` (the one writer). The README's architecture section maps the rest.
"""
