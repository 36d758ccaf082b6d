"""Every environment variable of the scheduler and the sandbox, each declared once.

Upstream's names wherever upstream had one (`PYTHON_STARTER_*`, `DB_*`, `TIME_ZONE`, ...). The config objects
(`scheduler.config.Config`, `sandbox.config.SandboxConfig`), the README's tables, the systemd env templates and
the compose env example are all derived from this table; `python -m tests.deployment.render` rewrites the
generated files and tests fail when they drift.

Adding a variable: one `Variable(...)` below, with a `Use` for each service that reads it, and the field it
names in that service's config class (the class refuses to import without it).
"""

from __future__ import annotations

from pipeline_config.registry import (
    Addresses,
    Flag,
    Int,
    Number,
    Password,
    Pattern,
    Size,
    Text,
    Urls,
    Use,
    Variable,
    Words,
    Zone,
    services,
)

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("plain", "json")
NETWORK_MODES = ("none", "seatable", "open")
MIN_BODY_BYTES = 4096  # the sandbox's least result body: room for a result with its notices

VARIABLES: tuple[Variable, ...] = (
    # --- read by both services ---------------------------------------------------------------------------
    Variable(
        "PYTHON_SANDBOX_AUTH_TOKEN", Text(), secret=True,
        scheduler=Use("sandbox_auth_token", "",
                      "Token sent to the sandbox nodes that have none of their own in PYTHON_SANDBOX_NODE_TOKENS.",
                      fill_in=True),
        sandbox=Use("auth_token", "",
                    "This node's own credential: the token the dispatcher sends as `Authorization: Token …`, and "
                    "the key of the proofs on this node's answers (README: Credentials and TLS).",
                    shown="(required)", required=True, fill_in=True),
    ),
    Variable(
        "PYTHON_SCHEDULER_URL", Text(url=True),
        scheduler=Use("scheduler_url", "http://127.0.0.1:5055",
                      "URL under which sandboxes reach this scheduler's callbacks "
                      "(read by the sandbox; same default)."),
        sandbox=Use("scheduler_url", "http://127.0.0.1:5055", "Where running and result callbacks go.",
                    keep_blank=True),
    ),
    Variable(
        "PYTHON_PROCESS_TIMEOUT", Int(minimum=1),
        scheduler=Use("process_timeout", "60",
                      "Time limit of one run in seconds; one default in both services: 60, as SeaTable's release "
                      "compose sets it for its scheduler and starter alike (upstream's code says 900)."),
        sandbox=Use("timeout", "60", "Wall-time limit per run, seconds; the scheduler's default is the same."),
    ),
    Variable(
        "PYTHON_SCHEDULER_MAX_BODY_BYTES", Int(minimum=1024),
        scheduler=Use("max_body_bytes", "8388608", "Largest request body accepted (413 above)."),
        sandbox=Use("max_body_bytes", "8388608",
                    "The scheduler's body limit: a result's output is cut (with a notice) so that its callback "
                    "body fits; set it as on the scheduler.", kind=Int(minimum=MIN_BODY_BYTES)),
    ),
    Variable(
        "TIME_ZONE", Text(),
        scheduler=Use("time_zone", "", "IANA time zone of stored timestamps and API output; empty: the host's.",
                      kind=Zone()),
        # sandbox.config checks the name's form (the runner image has tzdata, not necessarily this host).
        sandbox=Use("time_zone", "",
                    "TZ inside the runner; empty: the host's zone (the name /etc/localtime links to, or "
                    "/etc/timezone, read at start; UTC if neither names one), as upstream."),
    ),
    Variable(
        "LOG_FORMAT", Text(choices=LOG_FORMATS, case=str.lower),
        scheduler=Use("log_format", "plain", "`plain` lines, or `json`: one JSON object per line (both services).",
                      keep_blank=False),
        sandbox=Use("log_format", "plain", "`plain` lines, or `json`: one JSON object per line (both services)."),
    ),
    Variable(
        "LOG_TO_STDOUT", Flag(),
        scheduler=Use("log_to_stdout", "false",
                      "Upstream's switch: true logs to stdout; false to stderr (upstream wrote files; here the "
                      "journal or container log keeps them)."),
        sandbox=Use("log_to_stdout", "false",
                    "Upstream's switch: true logs to stdout; false to stderr (upstream wrote files; here the "
                    "journal or container log keeps them)."),
    ),
    # --- the scheduler, dispatcher and maintenance -------------------------------------------------------
    # Only scheduler hosts hold SeaTable's secret; sandbox.config warns when a sandbox is given it.
    Variable("PYTHON_SCHEDULER_AUTH_TOKEN", Text(), secret=True, scheduler=Use(
        "auth_token", "", "Shared secret with SeaTable (required); `Token`/`Bearer` auth. Only scheduler hosts hold "
        "it.", fill_in=True)),
    Variable("PYTHON_SCHEDULER_PREVIOUS_AUTH_TOKENS", Words(), secret=True, scheduler=Use(
        "previous_auth_tokens", "",
        "More secrets SeaTable may call with while PYTHON_SCHEDULER_AUTH_TOKEN is rotated (comma-separated).")),
    Variable("SEATABLE_SERVER_URL", Text(url=True), scheduler=Use(
        "seatable_server_url", "", "Base URL of dtable-web, for scripts-running-limit and task files.")),
    Variable("DB_HOST", Text(), scheduler=Use(
        "db_host", "", "MariaDB/MySQL host; empty selects the embedded SQLite database.")),
    Variable("DB_PORT", Int(minimum=1), scheduler=Use("db_port", "3306", "MariaDB/MySQL port.")),
    # The four DB_ credentials feed upstream's rule in Config.from_env (which login is used).
    Variable("DB_USER", Text(), scheduler=Use(
        None, "", "Database user of the serving processes (API, dispatcher, maintenance).")),
    Variable("DB_PASSWD", Text(), secret=True, scheduler=Use(None, "", "Password of DB_USER.")),
    Variable("DB_ROOT_USER", Text(), scheduler=Use(
        None, "root", "Privileged database user for `migrate` only: it creates the database and DB_USER (rights: "
        "SELECT, INSERT, UPDATE, DELETE on it); the serving processes never use it.")),
    Variable("DB_ROOT_PASSWD", Text(), secret=True, scheduler=Use(
        None, "", "Password of DB_ROOT_USER; empty: `migrate` uses DB_USER.")),
    Variable("DATABASE_NAME", Text(), scheduler=Use(
        "database_name", "scheduler", "Database (schema) name on MariaDB/MySQL.")),
    Variable("PYTHON_SCHEDULER_SQLITE_PATH", Text(), scheduler=Use(
        "sqlite_path", "/var/lib/seatable-scheduler/scheduler.sqlite3", "SQLite file used when DB_HOST is empty.")),
    Variable("DELETE_LOG_DAYS", Int(minimum=1), scheduler=Use(
        "delete_log_days", "30", "Days after which script_log rows are deleted.")),
    Variable("DELETE_STATISTICS_DAYS", Int(minimum=1), scheduler=Use(
        "delete_statistics_days", "90", "Days after which statistics rows are deleted.")),
    Variable("PYTHON_SCHEDULER_WINDOW_SECS", Int(minimum=1), scheduler=Use(
        "window_secs", "300", "Rate-limit window in seconds.")),
    Variable("PYTHON_SCHEDULER_RATE_LIMIT_PERCENT", Number(minimum=0, maximum=1), scheduler=Use(
        "rate_limit_percent", "0.25", "Share of the window's capacity one team may use.")),
    Variable("PYTHON_STARTER_TOTAL_THREAD_COUNT", Int(minimum=1), scheduler=Use(
        "total_thread_count", "10", "Total run slots over all sandboxes (rate limit base).")),
    Variable("PYTHON_SCHEDULER_BIND_HOST", Text(), scheduler=Use(
        "bind_host", "127.0.0.1", "Address the API listens on.")),
    Variable("PYTHON_SCHEDULER_PORT", Int(minimum=1), scheduler=Use(
        "port", "5055", "Port the API listens on (the container image: 80, SeaTable's default).")),
    Variable("PYTHON_SCHEDULER_WORKERS", Int(minimum=1), scheduler=Use(
        "workers", "2", "gunicorn worker processes.")),
    Variable("PYTHON_SCHEDULER_THREADS", Int(minimum=1), scheduler=Use(
        "threads", "8", "Threads per gunicorn worker (gthread).")),
    Variable("PYTHON_SCHEDULER_ACCEPT_UNAUTHENTICATED_CALLBACKS", Flag(), scheduler=Use(
        "accept_unauthenticated_callbacks", "false",
        "true: accept result/running callbacks without the run's callback secret (old upstream starters); the state "
        "checks still apply.")),
    # scheduler.config checks the TLS files (readable, certificate and key together).
    Variable("PYTHON_SCHEDULER_TLS_CERT", Text(), scheduler=Use(
        None, "", "PEM certificate (chain) to serve HTTPS with (with the key below).")),
    Variable("PYTHON_SCHEDULER_TLS_KEY", Text(), scheduler=Use(
        None, "", "PEM private key of PYTHON_SCHEDULER_TLS_CERT.")),
    Variable("PYTHON_SCHEDULER_TLS_CLIENT_CA", Text(), scheduler=Use(
        None, "", "PEM CA bundle: with it every client must present a certificate it signed (SeaTable cannot: see "
        "TLS).")),
    Variable("PYTHON_SCHEDULER_LOG_LEVEL", Text(choices=LOG_LEVELS, case=str.upper), scheduler=Use(
        "log_level", "INFO", "Log level (DEBUG, INFO, WARNING, ERROR).")),
    Variable("PYTHON_SCHEDULER_METRICS_TOKEN", Text(), secret=True, scheduler=Use(
        "metrics_token", "", "Token Prometheus sends for `GET /metrics` (`Authorization: Bearer …`); empty: the API "
        "token.")),
    # scheduler.config also refuses SeaTable's token here (a page password must not be the API secret).
    Variable("PYTHON_SCHEDULER_STATUS_TOKEN", Password(minimum=12), secret=True, scheduler=Use(
        "status_token", "", "Password of the status page `/status/` (HTTP Basic, any user name); empty: the page is "
        "off.")),
    Variable("PYTHON_SANDBOX_URLS", Urls(), scheduler=Use(
        "sandbox_urls", "http://127.0.0.1:8088", "Comma list of sandbox nodes runs are handed to.")),
    # scheduler.config pairs each URL=TOKEN entry with a node of PYTHON_SANDBOX_URLS.
    Variable("PYTHON_SANDBOX_NODE_TOKENS", Text(), secret=True, scheduler=Use(
        None, "",
        "Each node's own token: `URL=TOKEN` pairs (comma-separated, URLs as in PYTHON_SANDBOX_URLS); `dispatch` "
        "needs a token for every node, from here or PYTHON_SANDBOX_AUTH_TOKEN.")),
    Variable("PYTHON_SANDBOX_CA_BUNDLE", Text(), scheduler=Use(
        None, "", "PEM CA bundle that verifies https:// sandbox nodes; empty: the system's.")),
    Variable("PYTHON_DISPATCH_TLS_CERT", Text(), scheduler=Use(
        None, "",
        "PEM client certificate the dispatcher presents to nodes that require one (with PYTHON_DISPATCH_TLS_KEY).")),
    Variable("PYTHON_DISPATCH_TLS_KEY", Text(), scheduler=Use(
        None, "", "PEM private key of PYTHON_DISPATCH_TLS_CERT.")),
    Variable("PYTHON_DISPATCH_BATCH", Int(minimum=1), scheduler=Use(
        "dispatch_batch", "50", "Most runs claimed per transaction (and never more than free slots).")),
    Variable("PYTHON_DISPATCH_THREADS", Int(minimum=1), scheduler=Use(
        "dispatch_threads", "16", "Parallel task-file fetches and hand-offs per dispatcher.")),
    Variable("PYTHON_DISPATCH_WAKE_DIR", Text(), scheduler=Use(
        "dispatch_wake_dir", "auto",
        "Directory of the dispatchers' wake-up sockets: the API wakes the dispatchers on its host when a run is "
        "created or ends, instead of leaving it to their next poll (0.2 s). `auto`: a private directory per "
        "database under `$XDG_RUNTIME_DIR` or the temp directory; `off`: poll only.")),
    Variable("PYTHON_DISPATCH_FETCH_SCRIPT", Flag(), scheduler=Use(
        "dispatch_fetch_script", "true",
        "true: the dispatcher downloads a saved script and hands its content to the sandbox with the run; "
        "the sandbox downloads it itself only when this fails. false: the sandbox always downloads it (its download "
        "goes only where a runner of the open network mode may connect).")),
    Variable("PYTHON_DISPATCH_LEASE_SECS", Int(minimum=1), scheduler=Use(
        "lease_secs", "30", "A claim not handed off within this time returns to the queue.")),
    Variable("PYTHON_DISPATCH_HANDOFF_SECS", Int(minimum=1), scheduler=Use(
        "handoff_secs", "60",
        'After this long a node\'s "not here" proves a hand-off never arrived (no POST still in flight).')),
    Variable("PYTHON_SANDBOX_LOST_GRACE_SECS", Int(minimum=0), scheduler=Use(
        "lost_grace_secs", "60",
        'How long a node\'s word about a run holds: each "running" or "reporting" answer extends the run\'s '
        "deadline to PYTHON_PROCESS_TIMEOUT plus this.")),
    Variable("PYTHON_SANDBOX_UNREACHABLE_SECS", Int(minimum=0), scheduler=Use(
        "unreachable_secs", "1800",
        'A node that does not answer at all may be cut off and still deliver: its runs end as "sandbox lost" '
        "only after it stayed silent this much longer (keep it below the nodes' PYTHON_SANDBOX_TOMBSTONE_SECS).")),
    Variable("PYTHON_SCHEDULER_QUEUE_TIMEOUT", Int(minimum=0), scheduler=Use(
        "queue_timeout", "3600", "Queued longer than this: ended as not started; 0 never.")),
    Variable("PYTHON_SWEEP_INTERVAL_SECS", Int(minimum=1), scheduler=Use(
        "sweep_interval", "5", "How often `maintain` asks the nodes about runs handed to them.")),
    Variable("PYTHON_RETENTION_INTERVAL_SECS", Int(minimum=1), scheduler=Use(
        "retention_interval", "3600", "How often old logs and statistics are deleted.")),
    Variable("PYTHON_RETENTION_BATCH", Int(minimum=1), scheduler=Use(
        "retention_batch", "1000", "Rows deleted per transaction by the retention sweep.")),
    Variable("PYTHON_DISPATCH_TEST_PAUSE", Pattern(r"(after-claim|after-handoff):\d+(\.\d+)?",
                                                   "after-claim:SECONDS or after-handoff:SECONDS"),
             scheduler=Use("dispatch_test_pause", "",
                           "Tests only, leave unset: the dispatcher stops this long at that point, so a test can "
                           "kill it there.")),
    # --- the sandbox ----------------------------------------------------------------------------------
    Variable("PYTHON_SANDBOX_PREVIOUS_AUTH_TOKENS", Words(), secret=True, sandbox=Use(
        "previous_auth_tokens", "",
        "Tokens still accepted while PYTHON_SANDBOX_AUTH_TOKEN is rotated (comma-separated); remove them once every "
        "dispatcher sends the new one.")),
    # sandbox.config checks the TLS files (readable, certificate and key together).
    Variable("PYTHON_SANDBOX_TLS_CERT", Text(), sandbox=Use(
        None, "", "PEM certificate (chain) to serve HTTPS with; with PYTHON_SANDBOX_TLS_KEY.")),
    Variable("PYTHON_SANDBOX_TLS_KEY", Text(), sandbox=Use(None, "", "PEM private key of PYTHON_SANDBOX_TLS_CERT.")),
    Variable("PYTHON_SANDBOX_TLS_CLIENT_CA", Text(), sandbox=Use(
        None, "",
        "PEM CA bundle: with it, only clients (dispatchers) presenting a certificate signed by it may connect.")),
    Variable("PYTHON_SCHEDULER_CA_BUNDLE", Text(), sandbox=Use(
        None, "", "PEM CA bundle that verifies an https:// PYTHON_SCHEDULER_URL; empty: the system's CAs.")),
    Variable("PYTHON_SANDBOX_CLIENT_CERT", Text(), sandbox=Use(
        None, "",
        "PEM certificate presented on the callbacks, for a scheduler that requires client certificates; with "
        "PYTHON_SANDBOX_CLIENT_KEY.")),
    Variable("PYTHON_SANDBOX_CLIENT_KEY", Text(), sandbox=Use(
        None, "", "PEM private key of PYTHON_SANDBOX_CLIENT_CERT.")),
    Variable("PYTHON_SANDBOX_BIND", Text(), sandbox=Use(
        "bind", "127.0.0.1:8088", "Address the sandbox API listens on.", keep_blank=True)),
    Variable("PYTHON_SANDBOX_PODMAN_URL", Text(), sandbox=Use(
        "podman_url", "", "The sandbox user's Podman API.", shown="unix:///run/user/<uid>/podman/podman.sock")),
    Variable("PYTHON_SANDBOX_NODE_NAME", Text(), sandbox=Use(
        "node_name", "", "Label on this node's containers; orphans are found by it.", shown="<hostname>")),
    Variable("PYTHON_SANDBOX_STATE_DIR", Text(), sandbox=Use(
        None, "", "Outbox and ledger (SQLite).", shown="~/.local/state/seatable-sandbox")),
    Variable("PYTHON_SANDBOX_OUTBOX_MAX_BYTES", Size(), sandbox=Use(
        "outbox_max_bytes", "1g",
        'Outbox size on disk beyond which new runs get 503 "outbox full" (results waiting for an unreachable '
        "scheduler).")),
    Variable("PYTHON_SANDBOX_TOMBSTONE_SECS", Int(minimum=1), sandbox=Use(
        "tombstone_secs", "604800",
        "How long the node remembers a run whose result the scheduler acknowledged (it answers \"done\" and never "
        "runs that id again); must exceed the scheduler's hand-off and sweep windows.")),
    Variable("PYTHON_RUNNER_IMAGE", Text(), sandbox=Use(
        "image", "",
        "Runner image: ours, or any image with a python3 (e.g. upstream's runner with `pip install --user` "
        "packages; see The runner image).", shown="localhost/seatable-python-runner:<recipe hash>")),
    Variable("PYTHON_SANDBOX_RUNNER_FILES", Text(), sandbox=Use(
        "runner_files", "",
        "Directory holding the trusted entrypoint.py and egress_forward.py, as the Podman host sees it; mounted "
        "read-only into every runner.", shown="(the installed runner_rootfs package)")),
    Variable("PYTHON_STARTER_THREAD_COUNT", Int(minimum=1), sandbox=Use(
        "slots", "10", "Runs at once (slots); more get 429.")),
    Variable("PYTHON_RUNNER_CONTAINER_MEMORY", Size(), sandbox=Use(
        "memory", "1g", "Memory limit (cgroup, or RLIMIT_AS as the fallback).")),
    Variable("PYTHON_RUNNER_CONTAINER_PIDS", Int(minimum=1), sandbox=Use(
        "pids", "256", "Process/thread limit (cgroup pids, or RLIMIT_NPROC).")),
    Variable("PYTHON_RUNNER_CONTAINER_CPUS", Number(minimum=0, empty=0.0), sandbox=Use(
        "cpus", "", "CPU limit in cores where cgroups are delegated; empty = none.")),
    Variable("PYTHON_RUNNER_OUTPUT_LIMIT", Int(minimum=1), sandbox=Use(
        "output_limit", "1000000",
        "Characters of output kept; past it the script runs on, the rest of its output is dropped and the cut is "
        "marked.")),
    Variable("PYTHON_RUNNER_TMPFS_MOUNT_SIZE_IN_BYTES", Int(minimum=1), sandbox=Use(
        "tmpfs_size", "104857600", "Size of the runner's /tmp.")),
    # sandbox.config maps a Docker network name (upstream's runner-net) to open, with a warning.
    Variable("PYTHON_RUNNER_NETWORK", Text(), sandbox=Use(
        "network", "open",
        "Runner network: open (an interface with TCP, UDP and DNS to the internet; this host, loopback, metadata, "
        "private and reserved addresses refused unless listed), seatable (HTTP(S) through the sandbox's proxy to "
        "the run's SeaTable server and the allow list only), none (nothing); a Docker network name such as "
        "upstream's runner-net means open.")),
    Variable("PYTHON_RUNNER_EGRESS_ALLOW", Text(), sandbox=Use(
        "egress_allow", "",
        "More destinations runners may reach: host, host:port, [v6]:port or an http(s) URL, comma-separated; a "
        "listed IP literal may be private or loopback; in the open mode a bare host means all its ports.")),
    Variable("PYTHON_RUNNER_DNS", Addresses(), sandbox=Use(
        "runner_dns", "",
        "DNS servers of runners in the open mode (IP addresses, comma-separated); empty: slirp4netns's forwarder "
        "to this host's resolvers.")),
    Variable("PYTHON_RUNNER_CA_BUNDLE", Text(), sandbox=Use(
        None, "",
        "PEM file of extra CA certificates the runners trust (REQUESTS_CA_BUNDLE, SSL_CERT_FILE), e.g. for a "
        "SeaTable server with an in-house CA.")),
    # Upstream's runner settings, read with their safe meaning: sandbox.runner_options decides what each value
    # may do (raw text here; refused at start there when it would weaken the runner).
    Variable("PYTHON_RUNNER_OTHER_OPTIONS", Text(), sandbox=Use(
        None, "",
        "Upstream's extra `docker run` options, a Python list of strings; here `--volume=/host:/path[:ro|rw]` and "
        "`--mount=type=bind,...` (read-only unless rw is written; never a system path or the sandbox's own), "
        "`--env=NAME=VALUE` and `--add-host=name:ip` (open mode); anything else is refused at start.")),
    Variable("PYTHON_RUNNER_READ_ONLY_FILESYSTEM", Text(), sandbox=Use(
        None, "", "Upstream's switch; runners are always read-only here: true is accepted, false refused at start.")),
    Variable("PYTHON_RUNNER_NO_NEW_PRIVILEGES", Text(), sandbox=Use(
        None, "", "Upstream's switch; always on here: true is accepted, false refused.")),
    Variable("PYTHON_RUNNER_DROPPED_CAPABILITIES", Text(), sandbox=Use(
        None, "",
        "Upstream's list; runners have no capabilities at all here, any list of capability names is accepted.")),
    Variable("PYTHON_RUNNER_UID", Text(), sandbox=Use(
        None, "",
        "Upstream's runner user (also _GID, _USER, _GROUP); each run has an unprivileged uid of its own here: "
        "0/root is refused, other values have no effect.")),
    Variable("PYTHON_RUNNER_GID", Text(), sandbox=Use(None, "", "As PYTHON_RUNNER_UID, for upstream's group id.")),
    Variable("PYTHON_RUNNER_USER", Text(), sandbox=Use(None, "", "As PYTHON_RUNNER_UID, for upstream's user name.")),
    Variable("PYTHON_RUNNER_GROUP", Text(), sandbox=Use(
        None, "", "As PYTHON_RUNNER_UID, for upstream's group name.")),
    Variable("PYTHON_SANDBOX_EGRESS_DIR", Text(), sandbox=Use(
        None, "", "Where the per-run egress sockets are created.", shown="<state dir>/egress")),
    Variable("PYTHON_SANDBOX_EGRESS_HOST_DIR", Text(), sandbox=Use(
        "egress_host_dir", "",
        "That directory as the Podman host sees it, when the sandbox itself runs in a container.", shown="(same)")),
    Variable("PYTHON_STARTER_ALTERNATIVE_FILE_SERVER_ROOT", Text(url=True), sandbox=Use(
        None, "", "Replaces scheme and host of script URLs (when used).")),
    Variable("PYTHON_STARTER_USE_ALTERNATIVE_FILE_SERVER_ROOT", Flag(), sandbox=Use(
        None, "", "True: use it (upstream needs both set).")),
    Variable("PYTHON_SANDBOX_SECCOMP_PROFILE", Text(), sandbox=Use(
        "seccomp_profile", "", "Podman seccomp profile for runners.", shown="(tightened Podman default)")),
    Variable("PYTHON_SANDBOX_WARM_POOL", Int(minimum=0), sandbox=Use(
        "warm_pool", "2", "Pre-started runners waiting for a job; 0 turns the pool off.")),
    Variable("PYTHON_SANDBOX_PREIMPORT", Text(), sandbox=Use(
        "preimport", "seatable_api,pandas",
        "Modules warm runners import before their job; a runner made to replace a taken one imports those of "
        "them the taken run's script imported. Dropped, with one warning, once three runners in a row meet "
        "their memory limit while importing them.", keep_blank=True)),
    Variable("PYTHON_SANDBOX_POOL_MIN_AVAILABLE", Size(), sandbox=Use(
        "pool_min_available", "1g", "Below this much available memory the pool empties.")),
    # sandbox.config: ours, else upstream's PYTHON_STARTER_LOG_LEVEL, else INFO (one of LOG_LEVELS).
    Variable("PYTHON_SANDBOX_LOG_LEVEL", Text(), sandbox=Use(
        None, "", "Log level (DEBUG, INFO, WARNING, ERROR); also gunicorn's.", shown="INFO")),
    Variable("PYTHON_STARTER_LOG_LEVEL", Text(), sandbox=Use(
        None, "", "Upstream's starter log level: used when PYTHON_SANDBOX_LOG_LEVEL is not set.")),
    Variable("PYTHON_SANDBOX_METRICS_TOKEN", Text(), secret=True, sandbox=Use(
        "metrics_token", "", "Token Prometheus sends for `GET /metrics` (`Authorization: Bearer …`); empty: "
        "PYTHON_SANDBOX_AUTH_TOKEN.")),
)

SCHEDULER, SANDBOX = services(VARIABLES)
SANDBOX_LOG_VARIABLES = ("PYTHON_SANDBOX_LOG_LEVEL", "PYTHON_STARTER_LOG_LEVEL", "LOG_FORMAT", "LOG_TO_STDOUT")
SANDBOX_TLS_VARIABLES = (
    "PYTHON_SANDBOX_TLS_CERT", "PYTHON_SANDBOX_TLS_KEY", "PYTHON_SANDBOX_TLS_CLIENT_CA", "PYTHON_SCHEDULER_CA_BUNDLE",
    "PYTHON_SANDBOX_CLIENT_CERT", "PYTHON_SANDBOX_CLIENT_KEY",
)
SCHEDULER_TLS_VARIABLES = (
    "PYTHON_SCHEDULER_TLS_CERT", "PYTHON_SCHEDULER_TLS_KEY", "PYTHON_SCHEDULER_TLS_CLIENT_CA",
    "PYTHON_SANDBOX_CA_BUNDLE", "PYTHON_DISPATCH_TLS_CERT", "PYTHON_DISPATCH_TLS_KEY",
)
RUNNER_OPTION_VARIABLES = (
    "PYTHON_RUNNER_OTHER_OPTIONS", "PYTHON_RUNNER_READ_ONLY_FILESYSTEM", "PYTHON_RUNNER_NO_NEW_PRIVILEGES",
    "PYTHON_RUNNER_DROPPED_CAPABILITIES", "PYTHON_RUNNER_UID", "PYTHON_RUNNER_GID", "PYTHON_RUNNER_USER",
    "PYTHON_RUNNER_GROUP",
)

# Read by the administrators' commands (`seatable-sandbox host-setup`, `build-runner`, `run-local`), `./dev`, the
# tests and the benchmarks, never by a running service: the README's text names them, not the services' tables.
TOOL_VARIABLES: dict[str, str] = {
    "SEATABLE_SANDBOX_USER": "The sandbox user the commands, ./dev and the tests use (default seatable-sandbox).",
    "SEATABLE_PIPELINE_PREFIX": "Where ./dev makes its virtualenv (default /opt/seatable-pipeline).",
    "SEATABLE_DEV_KEEP_IMAGES": "1: ./dev keeps other checkouts' runner images (no --prune).",
}
