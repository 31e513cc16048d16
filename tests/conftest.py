"""Shared pytest configuration: the launchpad test fixtures (`lp_launch`)."""

pytest_plugins = ["launchpad.testing"]
