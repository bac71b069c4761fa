"""The REST front end: routes, the HTTP server and TF Serving's JSON formats."""
