"""What everything runs on: settings and the bot's definition, the Temporal client (data converter, payload
codec, search attributes), the SQL store (database, migrations, transcript, event log), metrics, logs and
traces."""
