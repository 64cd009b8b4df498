"""Reference data for tests: small CSVs written to a temp dir, in the BRIEF's format."""
from __future__ import annotations

from pathlib import Path

ACCOUNTS = """domain,account_name,prequalified,named_account,named_sdr,owner_ae,owner_ce
acme-corp.com,Acme Corp,true,true,nina.named@example.com,alice.ae@example.com,carol.ce@example.com
globex.com,Globex,true,false,,,
initech.com,Initech,false,false,,,
xn--bcher-kva.example,Bücher GmbH,true,false,,,
"""
STAFF = """email,name,role,slack_user_id,github_login,active
ivy.inbound@example.com,Ivy Inbound,inbound_sdr,U0SDR0001,,true
nina.named@example.com,Nina Named,named_sdr,U0SDR0002,,true
alice.ae@example.com,Alice AE,ae,U0AE00001,,true
andy.ae@example.com,Andy AE,ae,U0AE00002,,true
carol.ce@example.com,Carol CE,ce,U0CE00001,carol-ce,true
chris.ce@example.com,Chris CE,ce,U0CE00002,chris-ce,true
cody.cloud@example.com,Cody Cloud,cloud,U0CLOUD01,cody-cloud,true
ada.admin@example.com,Ada Admin,admin,U0ADMIN01,ada-admin,true
old.ae@example.com,Former AE,ae,U0AE00009,,false
"""
INSTANCES = """host,admin_email,status
initech.sourcegraph.com,peter@initech.com,live
pool-a.sourcegraph.com,,pool
pool-b.sourcegraph.com,,pool
pool-c.sourcegraph.com,,pool
pool-d.sourcegraph.com,,pool
pool-e.sourcegraph.com,,pool
"""


def write_config(directory: Path, accounts: str = ACCOUNTS, staff: str = STAFF, instances: str = INSTANCES) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "accounts.csv").write_text(accounts)
    (directory / "staff.csv").write_text(staff)
    (directory / "instances.csv").write_text(instances)
    return directory
