"""gunicorn worker classes shared by the scheduler API and the sandbox API."""

from httpworker.head_first import HEAD_TIMEOUT, MAX_HEAD, HeadFirstWorker

__all__ = ["HEAD_TIMEOUT", "MAX_HEAD", "HeadFirstWorker"]
