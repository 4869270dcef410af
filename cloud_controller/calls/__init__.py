"""Calls from the cloud into one node's agent (the other half of ``edge_agent.services.remote_methods``)."""
