"""Files of the docker-compose stack (`docker-compose.yml` at the repository root): see docs/deploy.md."""
