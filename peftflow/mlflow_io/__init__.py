"""Everything peftflow says to MLflow: `tracking` (runs, metrics, artifacts), `versions` (registered
versions), `publishing` (log and register a fine-tune), `aliases` (challenger / champion / previous,
recorded moves), `downloads` (versions as local model dirs)."""
