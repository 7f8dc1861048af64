-- pgbench -S with a SET at the start of every transaction (issue 14: a client whose every
-- transaction begins with SET must cost at most 10 % more than plain -S through pgsluice).
\set aid random(1, 100000 * :scale)
SET work_mem = '64kB';
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
