"""Local paths and s3:// URIs (uri.py)."""
