"""The arq worker: WorkerSettings, job functions, cron."""
