"""A script edited after it was applied is reported; layout and comment edits are not."""

from __future__ import annotations

from ..support.helpers import call


def test_edited_script_is_reported_and_blocks_until_ignored(fhir_settings, fhir, scripts):
    first = scripts.add("first", upgrade=f"ctx.create({fhir.patient_code('first')})")
    assert call("fhirmigrate")[0] == 0
    path = scripts.path / "first.py"
    path.write_text(path.read_text().replace("'first'}]", "'changed'}]"))
    scripts.add("second", upgrade=f"ctx.create({fhir.patient_code('second')})")

    code, _, err = call("fhirmigrate")
    assert code == 1
    assert "first.py" in err and first in err and "--ignore-checksums" in err
    assert fhir.applied() == [first]

    code, out, _ = call("fhirshowmigrations")
    assert "(edited since applied)" in next(line for line in out.splitlines() if "dir/first" in line)
    assert "checksum differs" in out

    code, out, err = call("fhirmigrate", "--plan")
    assert code == 0 and "edited" in out  # a warning, the plan is still shown

    code, _, err = call("fhirmigrate", "--ignore-checksums")
    assert code == 0, err
    assert len(fhir.applied()) == 2


def test_whitespace_and_comment_edits_are_not_drift(fhir_settings, fhir, scripts):
    scripts.add("first", upgrade=f"ctx.create({fhir.patient_code('first')})")
    assert call("fhirmigrate")[0] == 0
    path = scripts.path / "first.py"
    reformatted = "# Reviewed on 2026-11-26: no functional change.\n\n" + path.read_text().replace(
        "def upgrade(ctx):", "def upgrade( ctx ):  # creates the patient"
    ).replace("\n\n\n", "\n\n\n\n")
    path.write_text(reformatted)
    code, out, err = call("fhirmigrate")
    assert code == 0, err
    assert "No migrations to apply" in out
    _, out, _ = call("fhirshowmigrations")
    assert "edited" not in out
