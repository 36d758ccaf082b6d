"""The scheduler <-> sandbox contract, written once: JSON schemas of every body either side sends the other.

`pipeline_contract.schemas` holds the messages (`HANDOFF`, `READY`, `HEALTH`, `RUN_STATE`, `RUNNING_CALLBACK`,
`RESULT_CALLBACK`, ...); each is a `Message` whose `check()` raises `ContractError` with one line naming the field.
Installed with both services; it imports nothing from either.
"""

from pipeline_contract.validation import ContractError, Message

__all__ = ["ContractError", "Message"]
