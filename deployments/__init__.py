"""Serving and worker set-up for mailsync's scheduled deployments."""
