"""DIMSE message assembly and the DIMSE services (C-ECHO, later C-FIND/C-MOVE/C-GET/C-STORE)."""
