"""The DistillationJob runner's process: the files protocol, the chat and sensor halves, the entry point."""
