"""Reading what a model or adapter directory holds: weight files, shards, the plan against a family's tensor spec."""
