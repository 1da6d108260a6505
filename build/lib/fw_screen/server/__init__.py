"""The embedded database server (SecantusDB, MongoDB wire protocol) and the files it writes.
"""

from fw_screen.server.embedded import (  # noqa: F401
    DEFAULT_PORT,
    DEFAULT_DB_NAME,
    AUTH_USER,
    AUTH_SOURCE,
    CLIENT_KWARGS,
    WORKER_ROLES,
    ServerError,
    home,
    launchpad_file,
    port_in_use,
    ping,
    is_loopback,
    auth_enabled,
    credentials,
    write_launchpad_files,
    status,
    start,
    stop,
)
