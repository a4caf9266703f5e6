"""What the tests share: fixtures, fakes, data builders and the real-peer launchers.

Nothing here is a test (trial collects only ``tests.unit`` and ``tests.integration``), and no
test module imports another test module: whatever two of them need lives here. The modules
are named for what they hold; each one's docstring says what that is.
"""
