"""Entry points: parse arguments, load config, call `pipeline/`. The `batchscore` CLI lives in cli.py."""
