-- Runs once when the compose PostgreSQL volume is first created: the `source` database comes
-- from POSTGRES_DB, this adds the `target` database beside it (as `dualwrite dev up` does).
CREATE DATABASE target OWNER dualwrite;
