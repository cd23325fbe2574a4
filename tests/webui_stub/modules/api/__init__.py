"""The webui's HTTP API package; only what turns a request into script args (api.py)."""
