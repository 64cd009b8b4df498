def test_a_named_account_signup_claims_a_pool_instance_and_redirects(client):
    r = client.post("/api/signups", json={"email": "bob@acme-corp.com", "name": "Bob"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["case"] == "prequalified_named"
    assert body["state"] == "active"
    assert body["redirect_url"] == "https://pool-a.sourcegraph.com/sign-in"
    again = client.post("/api/signups", json={"email": "Bob@Acme-Corp.com."})
    assert again.status_code == 200
    assert again.json()["trial_id"] == body["trial_id"]
    detail = client.get(f"/api/trials/{body['trial_id']}").json()
    assert detail["history"][0]["trigger"] == "claim_pool_instance"
    assert set(detail["deadlines"]) == {"termination_heads_up", "day15_review"}
