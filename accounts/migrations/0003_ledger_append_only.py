"""The ledger is append-only: the database itself refuses UPDATE and
DELETE on accounts_ledgerentry, whatever the code does. Mistakes are fixed with new entries.

TRUNCATE is left to privileges, not a trigger: the application's role must not own the
table (docs/operations.md), and Django's test runner truncates between transactional tests."""

from django.db import migrations

PG_FORWARD = """
CREATE OR REPLACE FUNCTION polysim_ledger_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'accounts_ledgerentry is append-only (% refused)', TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER ledger_append_only
    BEFORE UPDATE OR DELETE ON accounts_ledgerentry
    FOR EACH ROW EXECUTE FUNCTION polysim_ledger_append_only();
"""
PG_REVERSE = """
DROP TRIGGER IF EXISTS ledger_append_only ON accounts_ledgerentry;
DROP FUNCTION IF EXISTS polysim_ledger_append_only();
"""
def forward(apps, schema_editor):
    schema_editor.execute(PG_FORWARD, params=None)


def reverse(apps, schema_editor):
    schema_editor.execute(PG_REVERSE, params=None)


class Migration(migrations.Migration):
    dependencies = [("accounts", "0002_initial")]
    operations = [migrations.RunPython(forward, reverse)]
