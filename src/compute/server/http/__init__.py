"""What every HTTP request meets around its route: auth, dependencies, limits, errors, schemas, SSE."""
