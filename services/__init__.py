"""Long-running services of a team stack (not flows): `relay.py`, MLflow webhooks to Prefect events."""
