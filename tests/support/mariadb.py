"""MariaDB started by the test harness (filled in by the scheduler work)."""
