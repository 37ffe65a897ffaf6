"""Model tooling: tiny Mixtral-architecture test models, requantization and quality checks."""
