-- The new shop schema: schema `shop` on the target database, fed by dualwrite through
-- examples/shop/transform.py (see README.md for what each column comes from).
--
-- No foreign keys: changes of different source tables travel on different Kafka keys and
-- partitions, so an order (or a profile) may arrive before its customer does.
--
-- Idempotent: safe to run again on a database that already has the schema.
-- examples/shop/workload.py can install it under another schema name (it rewrites the
-- `shop.` qualifiers), which is how tests get a schema of their own.

CREATE SCHEMA IF NOT EXISTS shop;

-- Merged from legacy.customers (owns full_name, email, phone, created_at, updated_at) and
-- legacy.customer_profiles (owns loyalty_tier and marketing_opt_in). An owner's delete
-- clears its columns; the row goes when neither owner has a row for the id any more.
-- Every non-key column is nullable: a profile may arrive before its customer (or outlive it),
-- leaving a row with only id, loyalty_tier and marketing_opt_in set.
CREATE TABLE IF NOT EXISTS shop.customers (
    id                integer PRIMARY KEY,
    full_name         text,          -- first_name || ' ' || last_name
    email             text,          -- trimmed, lower-cased
    phone             text,
    created_at        timestamptz,   -- legacy Berlin wall-clock time, as an instant
    updated_at        timestamptz,
    loyalty_tier      text,
    marketing_opt_in  boolean
);

-- Split out of legacy.customers; a customer with no address at all has no row here.
CREATE TABLE IF NOT EXISTS shop.addresses (
    customer_id  integer PRIMARY KEY,
    street       text,
    city         text,
    postal_code  text,               -- legacy zip
    country      text                -- ISO 3166 alpha-2, upper case
);

-- From legacy.orders, without the rows whose status is 'test' (any case or spacing).
CREATE TABLE IF NOT EXISTS shop.orders (
    id           bigint PRIMARY KEY,
    customer_id  integer NOT NULL,
    amount       numeric(12, 2) NOT NULL,  -- legacy amount_cents / 100
    currency     text NOT NULL,            -- upper case, no char(3) padding
    status       text NOT NULL CHECK (status IN ('pending', 'shipped', 'cancelled')),
    placed_at    timestamptz NOT NULL
);

CREATE INDEX IF NOT EXISTS orders_customer_id_idx ON shop.orders (customer_id);
