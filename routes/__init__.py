"""The service's routes, one module per resource (FastAPI's full-stack template): ``health`` (the root, health,
readiness and the dashboard), ``training``, ``inference``, ``models`` and ``reward_functions``. Each reaches the
service's state through the typed dependencies of ``routes.dependencies``; ``api.create_app`` includes them."""
