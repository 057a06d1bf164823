"""The project's own tests of its FHIR migrations: `python manage.py test patients`.

They use django_fhir_migrations.testing: each test applies the migrations step by step on a
throw-away state against the test server FHIR_MIGRATIONS["TEST"] names (never BASE_URL's, as
`manage.py test` never touches the real database), asserts on what the server holds, and
reverts everything when it ends. A test server:

    fhir-migrations testserver start      # http://127.0.0.1:8090/fhir, data in memory
    python manage.py test patients
    fhir-migrations testserver stop
"""

from django.test import SimpleTestCase

from django_fhir_migrations.testing import MigrationTester

DEMO = "urn:example:fhir-migrations-demo|demo-patient-1"
NATIONAL = "http://example.org/fhir/sid/national-id"
MRN = "http://hospital.example.org/mrn"


class DemoPatientMigrationTests(SimpleTestCase):
    def test_the_demo_patient_gets_its_identifiers_one_step_at_a_time(self):
        with MigrationTester() as fhir:
            fhir.migrate("create_patient")
            [patient] = fhir.search("Patient", identifier=DEMO)
            self.assertEqual({i["system"] for i in patient["identifier"]}, {DEMO.split("|")[0]})

            fhir.migrate("add_identifier")
            systems = {i["system"] for i in fhir.read(patient)["identifier"]}
            self.assertIn(NATIONAL, systems)
            self.assertNotIn(MRN, systems)

            fhir.migrate("add_mrn")
            self.assertIn(MRN, {i["system"] for i in fhir.read(patient)["identifier"]})

            fhir.downgrade("add_identifier")  # reverts add_mrn only
            systems = {i["system"] for i in fhir.read(patient)["identifier"]}
            self.assertEqual(systems, {DEMO.split("|")[0], NATIONAL})
            self.assertEqual(fhir.applied()[-1], "add_identifier")
        self.assertEqual(MigrationTester().search("Patient", identifier=DEMO), [])
