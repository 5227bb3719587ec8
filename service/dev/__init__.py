"""What `make run` starts beside the service: PostgreSQL and Valkey found or embedded, migrations, a mail catcher."""
