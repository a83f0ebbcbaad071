-- The old shop system, as it runs today: schema `legacy` on the source database.
--
-- Typical of a schema that grew for years without a migration plan:
--   * names are split in two columns, emails are stored as typed (mixed case, stray spaces),
--     phone numbers are free text;
--   * the address lives on the customer row;
--   * money is an integer number of cents;
--   * timestamps are `timestamp WITHOUT time zone` holding Europe/Berlin wall-clock time
--     (so one hour in October repeats and one hour in March does not exist);
--   * order status is free text in whatever spelling the writing code used, including
--     rows the QA team created with status 'TEST'.
--
-- Idempotent: safe to run again on a database that already has the schema.
-- examples/shop/workload.py can install it under another schema name (it rewrites the
-- `legacy.` qualifiers), which is how tests get a schema of their own.

CREATE SCHEMA IF NOT EXISTS legacy;

CREATE TABLE IF NOT EXISTS legacy.customers (
    id          serial PRIMARY KEY,
    first_name  text,
    last_name   text,
    email       text,          -- as typed: 'Anna.Mueller@Example.COM ', sometimes NULL
    phone       text,          -- free text: '+49 30 1234567', '030/1234567', '(030) 123 45 67'
    street      text,
    city        text,
    zip         text,
    country     text,          -- ISO 3166 alpha-2 in any case, sometimes padded
    created_at  timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'Europe/Berlin'),
    updated_at  timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'Europe/Berlin')
);

CREATE TABLE IF NOT EXISTS legacy.customer_profiles (
    customer_id      integer PRIMARY KEY REFERENCES legacy.customers (id),
    loyalty_tier     text,     -- 'bronze', 'silver', 'gold', 'platinum' or NULL
    marketing_opt_in boolean NOT NULL DEFAULT false,
    notes            text      -- retired free-text field; not migrated
);

CREATE TABLE IF NOT EXISTS legacy.orders (
    id            bigserial PRIMARY KEY,
    customer_id   integer NOT NULL REFERENCES legacy.customers (id),
    amount_cents  bigint NOT NULL,
    currency      char(3) NOT NULL DEFAULT 'EUR',
    status        text NOT NULL DEFAULT 'pending',  -- 'Shipped ', 'SHIPPED', 'Canceled', 'TEST', ...
    placed_at     timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'Europe/Berlin')
);

CREATE INDEX IF NOT EXISTS orders_customer_id_idx ON legacy.orders (customer_id);
