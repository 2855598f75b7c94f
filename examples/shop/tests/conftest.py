pytest_plugins = ["athm_sync.testing"]
