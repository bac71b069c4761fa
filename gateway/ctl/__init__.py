"""`modelyard apply|diff|get|rollout`: the admin API's client, for people and for GitOps.

`fleet` reads and checks fleet files, `client` speaks to the admin API, `plan` computes and applies the
difference, `show` prints tables, `main` is the command line. `serve_config` applies `serve --config`.
"""
