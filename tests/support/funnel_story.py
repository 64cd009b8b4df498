"""Two weeks of trials played through the real signup API and the trial commands, with the clock
moved between steps, so the funnel's numbers can be worked out by hand:

2026-W02 (the ManualClock starts Monday 5 January 2026, 09:00 UTC)
  bob@acme-corp.com    case 2.1: pool instance at signup (start after 0 h); grade A; converted;
                       source "website"; AE alice, CE carol (acme-corp's owners)
  lee@randomcorp.dev   case 3: triage 2 h → qualified; requested → ready 24 h; ready → handed off 6 h
                       (start after 2 + 24 + 6 = 32 h); no activity: grade D; source "website"
  ann@gmail.com        case 3: public domain, disqualified ("student project"); source "webinar"
2026-W03 (Monday 12 January)
  carl@globex.com      case 2.2: pool instance at signup; no activity: grade D; source "webinar"
  pam@initech.com      case 1: joins initech's existing instance (a joiner: never a trial start,
                       so not a trial request either); no source

      requests  joiners  starts  start/req   activated  activation  converted  conversion
W02   3         0        2       2/3 66.7%   1 (bob)    1/2 50.0%   1 (bob)    1/2 50.0%
W03   1 (carl)  1 (pam)  1       1/1 100.0%  0          0/1 0.0%    0          0/1 0.0%
all   4         1        3       3/4 75.0%   1          1/3 33.3%   1          1/3 33.3%
medians (W02 and all): signup → start (case 3) 32.0 h, triage → qualified 2.0 h,
requested → ready 24.0 h, ready → handed off 6.0 h; W03 has none.

Split, all weeks (requests, joiners, starts, activated, converted):
  by source:  website 2 0 2 1 1 (bob, lee); webinar 2 0 1 0 0 (ann, carl); none 0 1 0 0 0 (pam)
  by case:    prequalified_named 1 0 1 1 1 (bob); manual_qualification 2 0 1 0 0 (lee, ann);
              prequalified_unnamed 1 0 1 0 0 (carl); existing_instance 0 1 0 0 0 (pam)
  by reason:  student project 1 0 0 0 0 (ann); none 3 1 3 1 1
  by AE:      alice 2 0 2 1 1 (bob: acme-corp's owner; lee: first in the round robin, in email
              order); andy 1 0 1 0 0 (carl: next in the round robin); none 1 1 0 0 0 (ann, pam)
  by CE:      carol 2 0 2 1 1 (bob, lee); chris 1 0 1 0 0 (carl); none 1 1 0 0 0 (ann, pam)
"""
from __future__ import annotations

from trialflow import scoring
from trialflow.db import tables
from trialflow.services.trials import Command, run

EXPECTED_ROWS = {
    # week: requests, joiners, starts, start/req, activated, activation, converted, conversion
    "2026-W02": ["3", "0", "2", "66.7%", "1", "50.0%", "1", "50.0%"],
    "2026-W03": ["1", "1", "1", "100.0%", "0", "0.0%", "0", "0.0%"],
    "all": ["4", "1", "3", "75.0%", "1", "33.3%", "1", "33.3%"],
}
# by: {value: (requests, joiners, starts, activated, converted)}, all weeks (see above)
EXPECTED_SPLITS = {
    "source": {"website": (2, 0, 2, 1, 1), "webinar": (2, 0, 1, 0, 0), None: (0, 1, 0, 0, 0)},
    "case": {"prequalified_named": (1, 0, 1, 1, 1), "manual_qualification": (2, 0, 1, 0, 0),
             "prequalified_unnamed": (1, 0, 1, 0, 0), "existing_instance": (0, 1, 0, 0, 0)},
    "reason": {"student project": (1, 0, 0, 0, 0), None: (3, 1, 3, 1, 1)},
    "ae": {"alice.ae@example.com": (2, 0, 2, 1, 1), "andy.ae@example.com": (1, 0, 1, 0, 0), None: (1, 1, 0, 0, 0)},
    "ce": {"carol.ce@example.com": (2, 0, 2, 1, 1), "chris.ce@example.com": (1, 0, 1, 0, 0), None: (1, 1, 0, 0, 0)},
}
SOURCES = {"bob@acme-corp.com": "website", "lee@randomcorp.dev": "website", "ann@gmail.com": "webinar",
           "carl@globex.com": "webinar"}
EXPECTED_MEDIANS = {"signup_to_start": "32.0 h", "triage_to_qualified": "2.0 h",
                    "requested_to_ready": "24.0 h", "ready_to_handed_off": "6.0 h"}


def signup(client, email: str) -> dict:
    body = {"email": email, **({"source": SOURCES[email]} if email in SOURCES else {})}
    r = client.post("/api/signups", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def play(client, runtime) -> dict[str, str]:
    clock = runtime.clock
    bob = signup(client, "bob@acme-corp.com")
    lee = signup(client, "lee@randomcorp.dev")
    ann = signup(client, "ann@gmail.com")
    assert (bob["state"], lee["state"], ann["state"]) == ("active", "triage", "triage")
    clock.advance(hours=2)
    run(runtime, Command(lee["trial_id"], "qualify", internal=True))
    run(runtime, Command(ann["trial_id"], "disqualify", detail={"reason": "student project"}, internal=True))
    clock.advance(hours=24)
    run(runtime, Command(lee["trial_id"], "mark_instance_ready", detail={"host": "lee-trial.sourcegraph.com"}, internal=True))
    clock.advance(hours=6)
    run(runtime, Command(lee["trial_id"], "hand_off", internal=True))
    with runtime.uow() as uow:
        uow.session.execute(tables.instance_activity.insert().values(
            host=bob["redirect_url"].split("/")[2], at=clock.now(), active_users=6, searches=150,
            code_intel_actions=30, repositories=8))
        uow.commit()
    clock.advance(days=1)
    _grade(runtime)
    run(runtime, Command(bob["trial_id"], "convert", internal=True))
    clock.set(clock.now().replace(month=1, day=12, hour=9, minute=0))
    carl = signup(client, "carl@globex.com")
    pam = signup(client, "pam@initech.com")
    assert (carl["case"], pam["case"]) == ("prequalified_unnamed", "existing_instance")
    clock.advance(days=1)
    _grade(runtime)
    return {"bob": bob["trial_id"], "lee": lee["trial_id"], "ann": ann["trial_id"], "carl": carl["trial_id"],
            "pam": pam["trial_id"]}


def _grade(runtime) -> None:
    with runtime.uow() as uow:
        scoring.grade_trials(uow.session, runtime.clock.now())
        uow.commit()
