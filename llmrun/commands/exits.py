"""The exit codes of every ``llmrun`` command, in one place.

0    the run finished and every record is ``ok`` (other commands: success)
1    the run finished, but some records ended as ``error`` rows
2    bad usage, recipe or plugin: nothing was called
3    the run was aborted by a run-level failure (rejected keys, unknown model, unreachable
     endpoint); run again after fixing it, finished rows are kept
4    another run is writing the same output
5    the run stopped at run.budget_usd: the next call could have exceeded it (calls in
     flight were finished and written); raise the budget and run again to continue
130  interrupted (Ctrl-C, SIGTERM); run the same command again to continue
70   an internal error (a bug: please report it, with the traceback from --debug)
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERRORS = 1
EXIT_USAGE = 2
EXIT_ABORTED = 3
EXIT_LOCKED = 4
EXIT_BUDGET = 5
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130
