"""What the tool does at limits other FHIR servers have (INTEROP.md), each played by a proxy in
front of the real HAPI: the server does the work, the proxy only refuses what such a server
refuses."""

from __future__ import annotations

from ..support.helpers import call
from .test_large_migrations import seed

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def refuse_json_patch_in_bundles(exchange) -> None:
    """As Helios FHIR Server 0.2.7 answers a bundle with a JSON Patch entry (a Binary)."""
    body = exchange.json() or {}
    if any((e.get("resource") or {}).get("resourceType") == "Binary" for e in body.get("entry") or []):
        exchange.answer(501, {"resourceType": "OperationOutcome", "issue": [{
            "severity": "error", "code": "not-supported",
            "diagnostics": "Binary JSON Patch in R4 Bundle is not implemented"}]})


def test_json_patch_where_bundles_cannot_carry_it_is_sent_as_version_aware_puts_and_undone(
        fhir_settings, settings, fhir, scripts):
    from ..support.hostile import HostileProxy, Rule

    before = {p["id"]: p for p in seed(fhir, 30)}
    proxy = HostileProxy(fhir.base_url).start()
    try:
        settings.FHIR_MIGRATIONS = dict(fhir_settings, BASE_URL=proxy.base_url)
        proxy.add(Rule("POST", r"^/?$", before=refuse_json_patch_in_bundles))
        scripts.add("rename", upgrade=(
            "with ctx.batch(size=10) as b:\n"
            f"    for p in ctx.search('Patient', identifier={fhir.system + '|'!r}, as_dict=True):\n"
            "        b.patch('Patient', p['id'], [{'op': 'replace', 'path': '/name/0/family', 'value': 'Patched'},\n"
            "                                     {'op': 'add', 'path': '/active', 'value': True}],\n"
            "                version=p['meta']['versionId'])\n"), downgrade="ctx.undo()")
        code, out, err = call("fhirmigrate")
        assert code == 0, err
        patients = fhir.patients()
        assert all(p["name"][0]["family"] == "Patched" and p["active"] is True for p in patients)
        assert {p["meta"]["versionId"] for p in patients} == {"2"}  # each written once
        refused = [s for s in proxy.requests("POST", r"^/?$") if s.status == 501]
        # Learned on the first refusal; only bundles already in flight beside it (WORKERS 2) met one too.
        assert 1 <= len(refused) <= 2
        for patient in patients:
            [record] = fhir.search("Provenance", target=f"Patient/{patient['id']}")
            assert record["target"][0]["reference"] in {f"Patient/{patient['id']}/_history/2"} | {
                t["reference"] for t in record["target"]}
        code, _, err = call("fhirdowngrade")
        assert code == 0, err
        restored = {p["id"]: p for p in fhir.patients()}
        assert all({k: v for k, v in restored[i].items() if k != "meta"}
                   == {k: v for k, v in before[i].items() if k != "meta"} for i in before)
    finally:
        proxy.stop()


def test_a_misspelt_search_parameter_stops_the_migration_instead_of_matching_everything(
        fhir_settings, fhir, scripts):
    """FHIR lets a server ignore a search parameter it does not know (Helios does, by default;
    HAPI refuses it): `identifer=` would then match every Patient on the server, and a script
    would change them all. The tool must ask for strict handling (`Prefer: handling=strict`),
    so the search fails on every server. (The script only counts: it writes nothing.)"""
    seed(fhir, 2)
    scripts.add("typo", upgrade=(
        f"found = sum(1 for _ in ctx.search('Patient', identifer={fhir.system + '|p0000'!r}, as_dict=True))\n"
        "print('matched', found)\n"))
    code, out, err = call("fhirmigrate")
    assert code == 1, f"the misspelt search ran: {out.strip().splitlines()[-3:]}"
    assert "identifer" in err and fhir.applied() == []
