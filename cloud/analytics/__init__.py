"""Fleet analytics of the cloud: rollups, fleet percentiles, clustering, anomalies, events,
bandwidth; computed in a background task and served under ``/api/v1/analytics/``."""
