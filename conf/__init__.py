"""QuadraNAS's Hydra configs, shipped inside the installed distribution as package data.

The entry points load them as ``pkg://conf`` (``@hydra.main(config_path="pkg://conf")``) and
:mod:`latency.profiles` reads ``conf/device/*.yaml`` through :func:`importlib.resources.files`,
so the same files serve a source checkout, an editable install and a wheel.
"""
