"""A trial's story for a terminal: who did what, and when (``trialflow trials show``, ``trialflow demo``)."""
from __future__ import annotations

import sys


def print_timeline(detail: dict, out=None) -> None:
    out = out or sys.stdout
    a = detail["assignees"]
    print(f"{detail['trial_id']}  {detail['email']}  [{detail['case']}]  now: {detail['state']}", file=out)
    if detail.get("instance_url"):
        print(f"  instance {detail['instance_url']}", file=out)
    print(f"  SDR {a['sdr'] or '-'} · AE {a['ae'] or '-'} · CE {a['ce'] or '-'}", file=out)
    for h in detail["history"]:
        arrow = f"{h['from_state']} → {h['to_state']}" if h["from_state"] != h["to_state"] else f"({h['to_state']})"
        print(f"  {h['at'][:16].replace('T', ' ')}  {h['trigger']:<24} {arrow:<40} by {h['actor']}", file=out)
        for role, why in sorted(((h.get("detail") or {}).get("routing") or {}).items()):
            print(f"{'':<20}{role.upper()} {why}", file=out)
    for kind, due in detail.get("deadlines", {}).items():
        print(f"  next: {kind} at {due[:16].replace('T', ' ')}", file=out)
