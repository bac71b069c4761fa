"""Tests of the deployment files (Dockerfile, docker-compose.yml, deploy/).

Checked offline (no Docker engine, no cluster, nothing started): test_dockerfile.py, test_compose*.py,
test_kubernetes.py, with the parsers they share in dockerfile.py, compose_file.py and serve_cli.py (`modelyard
serve`'s flags and variables, read from `gateway.cli`'s argparse parser, not from a list kept here). Run for real
where this machine can: test_example_files.py. The Grafana dashboard against the documented metrics:
test_grafana_dashboard.py.
"""
