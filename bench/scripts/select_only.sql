-- pgbench's built-in -S as a script, to compare with set_then_select.sql under the same -f path.
\set aid random(1, 100000 * :scale)
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
