"""One module per ``emocircuits`` command: each has ``register(sub)`` (its arguments)
and ``run(args) -> int`` (parse, call the library, print). ``COMMANDS`` lists them in
``--help`` order."""

COMMANDS = (
    "data",
    "extract",
    "summary",
    "vectors",
    "similarity",
    "geometry",
    "probe",
    "plot",
    "compare",
    "map_vectors",
    "steer",
    "steer_sweep",
    "patch",
    "ablate",
    "heads",
    "run",
    "report",
    "models",
)
