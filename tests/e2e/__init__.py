"""The CLI as a user runs it: a subprocess against real servers, keys and tools."""
