"""The Starlette API of the task manager."""
