"""Old path of Deep500's drop-in timers, which live in `maeltrace.integrations.deep500`."""
