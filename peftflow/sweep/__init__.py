"""Sweeps: many variants of one run config, trained and scored alike, the best one published
(plan.py: the variants; ranking.py: the winner; report.py: the table, report and charts)."""
