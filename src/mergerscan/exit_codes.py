"""Exit statuses of every command line (``process-catalog``/``mergerscan process`` and each
``mergerscan`` verb), in one place; docs/output.md and the epilogs state the same."""

EXIT_OK = 0  # finished (process-catalog: at least one row scored; warnings may have been printed)
EXIT_FAILED = 1  # could not finish or deliver: one line saying why (a failed task, a write, --samp)
EXIT_BAD_INPUT = 2  # one-line error about the input or the arguments; nothing was started
EXIT_NOTHING_SCORED = 3  # process-catalog finished and wrote every row, but none could be scored
EXIT_INTERRUPTED = 130  # Ctrl-C
