"""Entry points: the ``sprdiff`` console script and the job configs."""
