"""The misbehaving pynetdicom PACS that the integration tests run as a subprocess.

``python -m tests.support.pacs`` (`cli`: arguments, SCP and SCU modes) serves one profile, a
named behaviour set up by a function registered in `profiles.PROFILES`. The profiles are split
by DIMSE service: `echo` (Verification and association faults), `find`, `get`, `move` and
`store`; `datasets` builds the instances the get-* and move-* profiles serve, and is what the
test process imports to rebuild them (it needs only pydicom). Nothing here imports Twisted or
dicomrst, and importing this package itself loads nothing.
"""
