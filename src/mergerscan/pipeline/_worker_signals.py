"""Dask worker preload: local worker processes ignore SIGINT.

^C in a terminal reaches the whole process group; the process-catalog client handles it (one
line, cluster shut down, finished partitions kept), so the worker processes must not print their
own KeyboardInterrupt tracebacks.
"""

import signal
import threading


def dask_setup(worker):  # the preload protocol passes the worker
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
