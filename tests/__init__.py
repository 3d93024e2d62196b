"""audiocnn's tests. A regular package, so that `tests.<module>` imports resolve here and not to the
top-level `tests` package dcase_util installs into site-packages (a dependency of the event metrics)."""
