"""Tests of the deployment files (Dockerfile, docker-compose.yml, deploy/)."""
