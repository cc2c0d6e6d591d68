"""Third-party code shipped inside pyproxyd: README.md says what, which version, and why."""
