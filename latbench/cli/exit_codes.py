"""Exit codes of every latbench command."""

SUCCESS = 0
ERROR = 1  # something went wrong that the user can fix (the message says how)
USAGE = 2  # bad arguments or unknown names
CANCELLED = 130  # Ctrl-C; everything finished before it is kept
