"""The agent's long-running services, each one concern, built and started by the daemon.

Why a room: the daemon only wires; what it used to do itself (route inbound messages, answer
chat, keep the active models, apply desired state, report status, housekeeping) lives here,
above the commit tick and the rooms it drives.
"""
