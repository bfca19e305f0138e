"""Shared helpers for the integration tiers: free ports, the daemon as a real process."""
