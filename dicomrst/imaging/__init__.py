"""Pixel data as images: frames, decoding, rendering (pure functions, no reactor).

Everything here is CPU work on whole frames: callers run it off the reactor
(`dicomrst.common.cpu.CpuWorkers`).
"""
