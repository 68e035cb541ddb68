"""What every bench shares: the run and its timing (``common``), the generated input sets
(``datasets``), the real photographs and every set of their names (``photos``), the real
daemon as a subprocess (``daemon_harness``) and real colour profiles (``colour_kit``)."""
