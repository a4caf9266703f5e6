"""What a failed DIMSE operation says about its association."""

from __future__ import annotations


class AssociationIntact:
    """Mixed into an error raised while the association itself stayed healthy (the PACS
    answered with a failure status; instances it reported never arrived on another
    association): the pool may lend it again.  Any other error leaves the association in
    doubt, and the pool ends it."""
