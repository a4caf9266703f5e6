"""The DICOM Upper Layer (PS3.8): PDU framing, the association state machine, and its Twisted protocol."""
