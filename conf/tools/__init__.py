"""Configs of the one-shot tools (``latency.lut``, ``latency.predict``, ``latency.standin``): plain keys,
no config groups, so that ``device=vpu`` names a profile (``device=all`` too) instead of composing
``conf/device``."""
