"""Prefect flows (composition only) and the `peftflow` CLI that runs them."""
