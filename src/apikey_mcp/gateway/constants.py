"""Timeouts, retry counts and backoff limits of the gateway client, named in one place."""

import httpx2

DEFAULT_BASE_URL = "https://api-key.org"

# Per kind of call: a poll or a document is quick; a create must answer fast or be reported as unknown;
# a chat completion may think for a while.
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = httpx2.Timeout(15.0, connect=CONNECT_TIMEOUT)
CREATE_TIMEOUT = httpx2.Timeout(30.0, connect=CONNECT_TIMEOUT)
CHAT_TIMEOUT = httpx2.Timeout(120.0, connect=CONNECT_TIMEOUT)
DOWNLOAD_TIMEOUT = httpx2.Timeout(60.0, connect=CONNECT_TIMEOUT)

# Safe requests only (GET, and the free estimate): how often and how long to wait between tries.
MAX_RETRIES = 3
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
MAX_RETRY_AFTER = 60.0  # a Retry-After longer than this is not waited out: the error goes up instead
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

MAX_CONNECTIONS = 20
