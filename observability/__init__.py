"""What both services share for operators: log lines (plain or JSON) and the /metrics endpoint's plumbing."""
