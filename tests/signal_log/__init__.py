"""A test-only app that logs every athm_sync signal to a file shared by processes.

Installed by ``tests.settings`` only when ``ATHM_TEST_SIGNAL_LOG`` names a file. Each signal
appends one line, ``kind ecommerce_id pid``, with a single ``os.write`` on an ``O_APPEND``
descriptor, so lines written by two processes at once never interleave.
"""
